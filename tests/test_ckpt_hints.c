/* Bounded aggregators of checkpoint and model-file writes (issue 17): a file made by ck_create on a communicator
 * carries the MPI-IO hints cb_nodes = min(nodes of that communicator, cap) and romio_cb_write = enable in its
 * file access property list (read back with H5Pget_fapl_mpio + MPI_Info_get), on MPI_COMM_WORLD and on a
 * sub-communicator (the writing grid of a run with dp > 1), with the default cap and with PREFOPT_IO_CB_NODES_MAX
 * (rank 0's value on every rank).
 * The node count expected is computed independently of ck_node_count: distinct host names (MPI_Get_processor_name)
 * gathered over the communicator. (MPI_File_get_info cannot tell more: Open MPI 4.1 returns the info it was given
 * whichever component opened the file; `--mca io_ompio_verbose_info_parsing 1` shows OMPIO parsing cb_nodes.) */
#include "ckpt_io.h"

#include <hdf5.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int failures, wrank;
#define FAIL(...)                                                                                            \
    do {                                                                                                     \
        failures++;                                                                                          \
        fprintf(stderr, "rank %d: ", wrank);                                                                 \
        fprintf(stderr, __VA_ARGS__);                                                                        \
        fputc('\n', stderr);                                                                                 \
    } while (0)

/* distinct host names among comm's ranks */
static int hosts(MPI_Comm comm)
{
    int n, len;
    MPI_Comm_size(comm, &n);
    char me[MPI_MAX_PROCESSOR_NAME] = {0};
    MPI_Get_processor_name(me, &len);
    char *all = calloc((size_t)n, MPI_MAX_PROCESSOR_NAME);
    MPI_Allgather(me, MPI_MAX_PROCESSOR_NAME, MPI_CHAR, all, MPI_MAX_PROCESSOR_NAME, MPI_CHAR, comm);
    int distinct = 0;
    for (int i = 0; i < n; i++) {
        int seen = 0;
        for (int j = 0; j < i && !seen; j++)
            seen = !strcmp(all + (size_t)i * MPI_MAX_PROCESSOR_NAME, all + (size_t)j * MPI_MAX_PROCESSOR_NAME);
        distinct += !seen;
    }
    free(all);
    return distinct;
}

static void get_hint(MPI_Info info, const char *key, char *v, int len, int *flag)
{
    *flag = 0;
    v[0] = '\0';
    if (info != MPI_INFO_NULL)
        MPI_Info_get(info, key, len - 1, v, flag);
}

/* creates a file on comm and checks its hints; expect_cb = the cb_nodes value it must carry */
static void check(MPI_Comm comm, const char *path, int expect_cb, const char *what)
{
    prefopt_err err = {0};
    hid_t f;
    if (ck_create(path, comm, &f, &err)) {
        FAIL("%s: ck_create: %s", what, err.msg);
        return;
    }
    hid_t fapl = H5Fget_access_plist(f);
    MPI_Comm fcomm = MPI_COMM_NULL;
    MPI_Info info = MPI_INFO_NULL;
    if (H5Pget_fapl_mpio(fapl, &fcomm, &info) < 0)
        FAIL("%s: H5Pget_fapl_mpio failed (not an MPI-IO file?)", what);
    char v[64];
    int flag;
    get_hint(info, "cb_nodes", v, sizeof v, &flag);
    char want[16];
    snprintf(want, sizeof want, "%d", expect_cb);
    if (!flag || strcmp(v, want))
        FAIL("%s: cb_nodes is %s, expected %s", what, flag ? v : "(not set)", want);
    get_hint(info, "romio_cb_write", v, sizeof v, &flag);
    if (!flag || strcmp(v, "enable"))
        FAIL("%s: romio_cb_write is %s, expected enable", what, flag ? v : "(not set)");
    if (info != MPI_INFO_NULL)
        MPI_Info_free(&info);
    if (fcomm != MPI_COMM_NULL)
        MPI_Comm_free(&fcomm);
    H5Pclose(fapl);
    if (ck_close(f, path, &err))
        FAIL("%s: close: %s", what, err.msg);
    MPI_Barrier(comm);
    int r;
    MPI_Comm_rank(comm, &r);
    if (r == 0)
        unlink(path);
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &wrank);
    unsetenv("PREFOPT_IO_CB_NODES_MAX");
    char path[256];
    snprintf(path, sizeof path, "test_ckpt_hints.%ld.h5", (long)getppid());
    MPI_Bcast(path, sizeof path, MPI_CHAR, 0, MPI_COMM_WORLD);

    int nodes = hosts(MPI_COMM_WORLD), counted;
    ck_cb_nodes(MPI_COMM_WORLD, &counted);
    if (counted != nodes)
        FAIL("ck_cb_nodes counted %d nodes, distinct hosts %d", counted, nodes);
    if (ck_cb_nodes_cap() != 16)
        FAIL("default cap %d, expected 16", ck_cb_nodes_cap());
    check(MPI_COMM_WORLD, path, nodes < 16 ? nodes : 16, "world, default cap");

    /* the writing grid of a dp = 2 run: half the ranks, the other half write nothing */
    MPI_Comm half;
    MPI_Comm_split(MPI_COMM_WORLD, wrank % 2, wrank, &half);
    if (wrank % 2 == 0) {
        int hn = hosts(half);
        char hp[300];
        snprintf(hp, sizeof hp, "%s.half", path);
        check(half, hp, hn < 16 ? hn : 16, "sub-communicator");
    }
    MPI_Comm_free(&half);

    /* the cap: set on every rank as mpiexec -x would */
    setenv("PREFOPT_IO_CB_NODES_MAX", "1", 1);
    if (ck_cb_nodes_cap() != 1)
        FAIL("PREFOPT_IO_CB_NODES_MAX=1: cap %d", ck_cb_nodes_cap());
    check(MPI_COMM_WORLD, path, 1, "world, cap 1");
    setenv("PREFOPT_IO_CB_NODES_MAX", "3", 1);
    if (ck_cb_nodes_cap() != 3)
        FAIL("PREFOPT_IO_CB_NODES_MAX=3: cap %d", ck_cb_nodes_cap());
    check(MPI_COMM_WORLD, path, nodes < 3 ? nodes : 3, "world, cap 3");
    /* rank 0's cap holds on every rank (the same hint everywhere even if the environments differ) */
    setenv("PREFOPT_IO_CB_NODES_MAX", wrank == 0 ? "1" : "5", 1);
    check(MPI_COMM_WORLD, path, 1, "world, cap 1 on rank 0, 5 elsewhere");
    setenv("PREFOPT_IO_CB_NODES_MAX", "junk", 1);
    if (ck_cb_nodes_cap() != 16)
        FAIL("PREFOPT_IO_CB_NODES_MAX=junk: cap %d, expected the default 16", ck_cb_nodes_cap());
    unsetenv("PREFOPT_IO_CB_NODES_MAX");

    int total;
    MPI_Allreduce(&failures, &total, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    if (wrank == 0)
        printf("test_ckpt_hints: %d nodes, %s\n", nodes, total ? "FAILED" : "passed");
    MPI_Finalize();
    return total ? 1 : 0;
}
