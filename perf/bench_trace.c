/* The cost of the trace's hooks, measured in one run (perf/README.md "Tracing overhead"):
 *   region enter+exit with regions off (the default of train/eval/generate), with regions on (bench, --pcontrol)
 *   and with --trace recording; MPI_Allreduce of one int through the executable's interposer (src/dist/mpi_wrap.c)
 *   not recording, recording, and PMPI_Allreduce (the library directly, no interposer).
 * Reports the median over repetitions of ns per call, interleaved so the variants see the same machine; regions and
 * the all-reduce over MPI_COMM_SELF in thread CPU time (a shared node's other jobs do not count), over
 * MPI_COMM_WORLD in wall time.
 *   mpiexec -n 2 build/perf/bench_trace [DIR] [CALLS]   (DIR: the trace's spool, default /tmp/prefopt-bench-trace) */
#define _GNU_SOURCE
#include "prefopt/regions.h"
#include "prefopt/trace.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { REPS = 9 };

/* this thread's CPU time: on a shared node the wall clock counts other jobs' time slices too */
static double cpu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double regions(long n)
{
    double t0 = cpu_now();
    for (long i = 0; i < n; i++) {
        prefopt_region_enter("bench_region");
        prefopt_region_exit("bench_region");
    }
    return (cpu_now() - t0) / (double)n * 1e9;
}

/* over MPI_COMM_SELF the call does no communication: what is left is the library's and the interposer's own cost */
static double allreduce(long n, int direct, MPI_Comm c)
{
    int v = 1, s = 0;
    PMPI_Barrier(MPI_COMM_WORLD);
    int self = c == MPI_COMM_SELF; /* CPU time alone; over WORLD the wall time, waiting included */
    double t0 = self ? cpu_now() : prefopt_now();
    for (long i = 0; i < n; i++)
        direct ? PMPI_Allreduce(&v, &s, 1, MPI_INT, MPI_SUM, c) : MPI_Allreduce(&v, &s, 1, MPI_INT, MPI_SUM, c);
    return ((self ? cpu_now() : prefopt_now()) - t0) / (double)n * 1e9;
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    int rank;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    const char *dir = argc > 1 ? argv[1] : "/tmp/prefopt-bench-trace";
    long calls = argc > 2 ? atol(argv[2]) : 20000;
    long nreg = calls * 20;
    double r_off[REPS], r_on[REPS], r_tr[REPS], a_pm[REPS], a_off[REPS], a_tr[REPS];
    double s_pm[REPS], s_off[REPS], s_tr[REPS];
    for (int k = 0; k < REPS; k++) {
        prefopt_regions_enable(0, 0);
        r_off[k] = regions(nreg);
        prefopt_regions_enable(1, 0);
        r_on[k] = regions(nreg);
        prefopt_regions_enable(0, 0);
        a_pm[k] = allreduce(calls, 1, MPI_COMM_WORLD);
        a_off[k] = allreduce(calls, 0, MPI_COMM_WORLD);
        s_pm[k] = allreduce(calls * 5, 1, MPI_COMM_SELF);
        s_off[k] = allreduce(calls * 5, 0, MPI_COMM_SELF);
    }
    prefopt_trace_params tp = {dir, "", "off"};
    prefopt_err err = {0};
    if (prefopt_trace_start(&tp, MPI_COMM_WORLD, &err)) {
        fprintf(stderr, "bench_trace: %s\n", err.msg);
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    for (int k = 0; k < REPS; k++) {
        prefopt_trace_step(k + 1); /* flushes the buffer: the next figure pays for recording, not for the disk */
        r_tr[k] = regions(nreg / 4);
        prefopt_trace_step(k + 1);
        a_tr[k] = allreduce(calls, 0, MPI_COMM_WORLD);
        prefopt_trace_step(k + 1);
        s_tr[k] = allreduce(calls * 5, 0, MPI_COMM_SELF);
    }
    prefopt_trace_finish(); /* no exporter set: the spool stays, nothing is converted */
    double *all[] = {r_off, r_on, r_tr, a_pm, a_off, a_tr, s_pm, s_off, s_tr};
    for (int i = 0; i < 9; i++)
        qsort(all[i], REPS, sizeof(double), cmp);
    if (rank == 0) {
        printf("bench_trace: ns per call, median of %d repetitions (%ld all-reduces of one int, %ld region pairs)\n",
               REPS, calls, nreg);
        printf("  region enter+exit, regions off (train default)   %8.1f\n", r_off[REPS / 2]);
        printf("  region enter+exit, regions on (bench, pcontrol)  %8.1f\n", r_on[REPS / 2]);
        printf("  region enter+exit, --trace recording             %8.1f\n", r_tr[REPS / 2]);
        printf("  PMPI_Allreduce (no interposer)                   %8.1f\n", a_pm[REPS / 2]);
        printf("  MPI_Allreduce via interposer, not recording      %8.1f  (%+.1f)\n", a_off[REPS / 2],
               a_off[REPS / 2] - a_pm[REPS / 2]);
        printf("  MPI_Allreduce via interposer, --trace recording  %8.1f  (%+.1f)\n", a_tr[REPS / 2],
               a_tr[REPS / 2] - a_pm[REPS / 2]);
        printf("  PMPI_Allreduce on MPI_COMM_SELF                  %8.1f\n", s_pm[REPS / 2]);
        printf("  MPI_Allreduce on SELF via interposer, off        %8.1f  (%+.1f)\n", s_off[REPS / 2],
               s_off[REPS / 2] - s_pm[REPS / 2]);
        printf("  MPI_Allreduce on SELF via interposer, recording  %8.1f  (%+.1f)\n", s_tr[REPS / 2],
               s_tr[REPS / 2] - s_pm[REPS / 2]);
        printf("{\"bench_trace\":{\"region_off_ns\":%.2f,\"region_on_ns\":%.2f,\"region_trace_ns\":%.2f,"
               "\"allreduce_pmpi_ns\":%.1f,\"allreduce_wrapped_ns\":%.1f,\"allreduce_traced_ns\":%.1f,"
               "\"self_pmpi_ns\":%.1f,\"self_wrapped_ns\":%.1f,\"self_traced_ns\":%.1f}}\n",
               r_off[REPS / 2], r_on[REPS / 2], r_tr[REPS / 2], a_pm[REPS / 2], a_off[REPS / 2], a_tr[REPS / 2],
               s_pm[REPS / 2], s_off[REPS / 2], s_tr[REPS / 2]);
    }
    MPI_Finalize();
    return 0;
}
