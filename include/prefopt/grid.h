/* prefopt: the process layout. World = DP replicas x one tensor-parallel (TP) group each; a TP group is an
 * nprow x npcol BLACS grid. Ranks are numbered replica-major: world rank = dp_rank * (nprow*npcol) + tp_rank,
 * and inside a grid tp_rank = myrow * npcol + mycol ("Row" order). */
#ifndef PREFOPT_GRID_H
#define PREFOPT_GRID_H

#include "prefopt/agree.h"

typedef struct {
    MPI_Comm world;     /* the communicator the grid was made from (not owned) */
    MPI_Comm tp;        /* my TP group: nprow*npcol ranks */
    MPI_Comm dp;        /* ranks holding the same grid position in every replica: dp_size ranks */
    MPI_Comm row;       /* my process row inside the TP group: npcol ranks (reductions over hidden/vocab) */
    MPI_Comm col;       /* my process column inside the TP group: nprow ranks (reductions over sequences) */
    int world_rank, world_size;
    int dp_rank, dp_size;
    int tp_rank, tp_size;
    int nprow, npcol, myrow, mycol;
    int ctxt;           /* BLACS context of my grid */
    int blacs_handle;   /* system handle from Csys2blacs_handle(tp), freed in prefopt_grid_free */
} prefopt_grid;

/* Collective over world. Fails (returns non-zero, err filled on every rank) when world size != nprow*npcol*dp. */
int prefopt_grid_init(prefopt_grid *g, MPI_Comm world, int nprow, int npcol, int dp, prefopt_err *err);
void prefopt_grid_free(prefopt_grid *g);

#endif
