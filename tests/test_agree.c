/* Error agreement: one rank fails, every rank learns the same message; nobody fails, nobody hears anything. */
#include "prefopt/agree.h"

#include <stdio.h>
#include <string.h>

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    int rank, size, bad = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);

    prefopt_err e = {0};
    if (prefopt_agree(MPI_COMM_WORLD, &e) != 0 || e.set)
        bad++;

    /* ranks 1 and 2 fail with different messages: the lowest failing rank's message wins everywhere */
    if (rank >= 1) {
        prefopt_err_set(&e, "data.h5: example %d: token id 400 >= vocab_size 259", rank);
        prefopt_err_set(&e, "a second message on the same rank is ignored");
    }
    if (prefopt_agree(MPI_COMM_WORLD, &e) != 1 || strcmp(e.msg, "data.h5: example 1: token id 400 >= vocab_size 259"))
        bad++;

    int total = 0;
    MPI_Allreduce(&bad, &total, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    if (rank == 0)
        printf("test_agree: %s\n", total ? "FAILED" : "all checks passed");
    MPI_Finalize();
    return total ? 1 : 0;
}
