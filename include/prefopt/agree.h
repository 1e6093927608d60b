/* prefopt: agreement among ranks (the dist layer's part of error handling). A function that fails on bad input
 * fills a prefopt_err (common.h) and returns; the caller then makes every rank of the communicator agree, so that
 * all of them print the same one line and leave together instead of some waiting forever in a collective. */
#ifndef PREFOPT_AGREE_H
#define PREFOPT_AGREE_H

#include <mpi.h>

#include "prefopt/common.h"

/* Collective over comm. Returns 1 if any rank has e->set; then every rank's e holds the message of the
 * lowest-numbered failing rank. Returns 0 when no rank failed. */
int prefopt_agree(MPI_Comm comm, prefopt_err *e);
/* The same after work only some ranks do (replica 0's grid writing a checkpoint): the others wait in a barrier
 * they poll with short sleeps instead of MPI's busy polling, so that on an oversubscribed machine (tests, emulated
 * nodes) waiting ranks leave the cores to the ranks doing the work. Costs at most about a millisecond. */
int prefopt_agree_idle(MPI_Comm comm, prefopt_err *e);
void prefopt_barrier_idle(MPI_Comm comm);

/* Prints "prefopt: error: <msg>" on this rank to stderr, finalizes MPI if initialized, exits with code. */
_Noreturn void prefopt_exit_error(const prefopt_err *e, int code);

/* Makes prefopt_die (common.h) end with MPI_Abort(MPI_COMM_WORLD) while MPI is initialized. Called once after
 * MPI_Init by the executable. */
void prefopt_agree_install_abort(void);

/* Rank in MPI_COMM_WORLD, 0 before MPI_Init. */
int prefopt_world_rank(void);

/* A prefopt_reduction (common.h) that sums over *comm with MPI_Allreduce; comm must outlive its use. Pass
 * MPI_COMM_NULL's address (or use NULL in place of the reduction) for "this rank only". */
prefopt_reduction prefopt_reduction_over(const MPI_Comm *comm);

#endif
