/* Error agreement across ranks, MPI_Abort for fatal errors, sums lent to the MPI-free layers. */
#include "prefopt/agree.h"
#include "prefopt/files.h"

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <time.h>

int prefopt_agree(MPI_Comm comm, prefopt_err *e)
{
    int rank, size;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &size);
    int mine = e->set ? rank : size, first = size;
    MPI_Allreduce(&mine, &first, 1, MPI_INT, MPI_MIN, comm);
    if (first == size)
        return 0;
    MPI_Bcast(e->msg, (int)sizeof e->msg, MPI_CHAR, first, comm);
    e->msg[sizeof e->msg - 1] = '\0';
    e->set = 1;
    return 1;
}

void prefopt_barrier_idle(MPI_Comm comm)
{
    MPI_Request r;
    MPI_Ibarrier(comm, &r);
    int done = 0;
    long ns = 20000; /* 20 us, growing to 1 ms: a short wait costs little, a long one costs no CPU */
    for (MPI_Test(&r, &done, MPI_STATUS_IGNORE); !done; MPI_Test(&r, &done, MPI_STATUS_IGNORE)) {
        struct timespec ts = {0, ns};
        nanosleep(&ts, NULL);
        if (ns < 1000000)
            ns *= 2;
    }
}

int prefopt_agree_idle(MPI_Comm comm, prefopt_err *e)
{
    prefopt_barrier_idle(comm);
    return prefopt_agree(comm, e);
}

_Noreturn void prefopt_exit_error(const prefopt_err *e, int code)
{
    fprintf(stderr, "prefopt: error: %s\n", e->set ? e->msg : "unknown error");
    fflush(stderr);
    if (prefopt_skip_finalize()) /* HDF5 holds a file it could not close: its clean-up would crash (files.h) */
        _exit(code);
    int init = 0, fin = 0;
    MPI_Initialized(&init);
    MPI_Finalized(&fin);
    if (init && !fin)
        MPI_Finalize();
    exit(code);
}

static void abort_hook(int code)
{
    int init = 0, fin = 0;
    MPI_Initialized(&init);
    MPI_Finalized(&fin);
    if (init && !fin)
        MPI_Abort(MPI_COMM_WORLD, code);
}

void prefopt_agree_install_abort(void) { prefopt_set_die_hook(abort_hook); }

int prefopt_world_rank(void)
{
    int init = 0, fin = 0, rank = 0;
    MPI_Initialized(&init);
    MPI_Finalized(&fin);
    if (init && !fin)
        MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    return rank;
}

static void allreduce_sum(void *ctx, double *v, int n)
{
    MPI_Comm comm = *(const MPI_Comm *)ctx;
    if (comm != MPI_COMM_NULL && n > 0)
        MPI_Allreduce(MPI_IN_PLACE, v, n, MPI_DOUBLE, MPI_SUM, comm);
}

prefopt_reduction prefopt_reduction_over(const MPI_Comm *comm)
{
    prefopt_reduction r = {allreduce_sum, (void *)comm};
    return r;
}
