/* Run control: stop requests agreed by every rank, atomic files, append-only metrics lines. */
#include "prefopt/runctl.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    int rank, size, bad = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    prefopt_stop_install();
    if (prefopt_stop_agreed(MPI_COMM_WORLD) != 0)
        bad++;
    /* a real signal on the last rank only: everyone must agree to stop */
    if (rank == size - 1)
        raise(SIGUSR1);
    if (prefopt_stop_agreed(MPI_COMM_WORLD) != 1)
        bad++;

    if (rank == 0) {
        char dir[256], path[300];
        snprintf(dir, sizeof dir, "runctl_test_%d/a/b", (int)getpid());
        prefopt_err err = {0};
        if (prefopt_mkdirs(dir, &err))
            bad++;
        snprintf(path, sizeof path, "%s/latest", dir);
        if (prefopt_write_atomic(path, "step-000010.h5\n", 15, &err))
            bad++;
        if (prefopt_write_atomic(path, "step-000020.h5\n", 15, &err))
            bad++;
        FILE *f = fopen(path, "r");
        char buf[64] = {0};
        if (!f || !fgets(buf, sizeof buf, f) || strcmp(buf, "step-000020.h5\n"))
            bad++;
        if (f)
            fclose(f);
        snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
        if (prefopt_append_line(path, "{\"step\":1}", 1, &err) || prefopt_append_line(path, "{\"step\":2}", 0, &err))
            bad++;
        f = fopen(path, "r");
        char all[64] = {0};
        if (!f || fread(all, 1, sizeof all - 1, f) != 22 || strcmp(all, "{\"step\":1}\n{\"step\":2}\n"))
            bad++;
        if (f)
            fclose(f);
        prefopt_err_clear(&err);
        if (prefopt_write_atomic("/nonexistent-dir/x", "a", 1, &err) == 0 || !strstr(err.msg, "/nonexistent-dir/x"))
            bad++;
        char cmd[320];
        snprintf(cmd, sizeof cmd, "rm -rf runctl_test_%d", (int)getpid());
        if (system(cmd))
            bad++;
        char d[32];
        if (strcmp(prefopt_format_duration(3723, d, sizeof d), "1h02m03s") ||
            strcmp(prefopt_format_duration(65, d, sizeof d), "1m05s"))
            bad++;
    }
    int total = 0;
    MPI_Allreduce(&bad, &total, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    if (rank == 0)
        printf("test_runctl: %s\n", total ? "FAILED" : "all checks passed");
    MPI_Finalize();
    return total ? 1 : 0;
}
