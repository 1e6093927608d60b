/* libprefopt_pmpi.so: a PMPI interposer that counts, per MPI call type, the calls, the seconds spent inside them
 * and the payload bytes, optionally split by the application's regions, and prints a summary over ranks at
 * MPI_Finalize. Works with any MPI program (it intercepts ScaLAPACK/BLACS's internal calls too, since
 * libscalapack imports the MPI_* symbols):
 *
 *   mpiexec -n 2 -x LD_PRELOAD=$BUILD/libprefopt_pmpi.so ./prefopt bench ...
 *   srun --export=ALL,LD_PRELOAD=$BUILD/libprefopt_pmpi.so ./prefopt bench ...
 *
 * Environment: PREFOPT_PMPI_OUT=FILE appends the JSON summary line to FILE (rank 0) instead of stderr;
 * PREFOPT_PMPI_QUIET=1 drops the text table.
 *
 * Payload bytes are the message size of each call on the calling rank (count x type size; all-to-all: the
 * whole send buffer), not wire bytes: an all-reduce of N bytes moves about 2N(p-1)/p per rank with a ring.
 * MPI_Pcontrol(0) stops counting, MPI_Pcontrol(1) resumes, MPI_Pcontrol(2) zeroes (mpiP's levels); other levels
 * (e.g. IPM's -1) are passed on and ignored. Only one PMPI tool can be preloaded at a time.
 *
 * Hooks for the application (found with dlsym, so the application does not link this library):
 *   double prefopt_pmpi_mpi_seconds(void)     seconds inside wrapped MPI calls so far (counting or not)
 *   void prefopt_pmpi_region(const char *name, int enter)   regions: statistics are split by the region path
 * Only the thread that calls MPI is counted correctly (MPI_THREAD_FUNNELED, as prefopt runs). */
#define _GNU_SOURCE
#include <mpi.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define CALLS(X)                                                                                                  \
    X(Allreduce) X(Reduce) X(Bcast) X(Barrier) X(Allgather) X(Allgatherv) X(Gather) X(Gatherv) X(Scatter)         \
    X(Scatterv) X(Alltoall) X(Alltoallv) X(Reduce_scatter) X(Reduce_scatter_block) X(Scan) X(Exscan) X(Send)     \
    X(Ssend) X(Recv) X(Isend) X(Irecv) X(Sendrecv) X(Wait) X(Waitall) X(Waitany) X(Test) X(Testall)              \
    X(Iallreduce) X(Ibcast) X(File_write_at_all) X(File_read_at_all) X(File_write_at) X(File_read_at)

#define ENUM(n) C_##n,
enum { CALLS(ENUM) NCALLS };
#undef ENUM
#define NAME(n) "MPI_" #n,
static const char *call_names[NCALLS] = {CALLS(NAME)};
#undef NAME

#define MAX_REGIONS 48
#define PATH_LEN 128
#define MAX_DEPTH 32

typedef struct {
    double calls, seconds, bytes;
} stat;

static stat table[MAX_REGIONS][NCALLS];   /* region 0: outside every region */
static char region_path[MAX_REGIONS][PATH_LEN];
static int nregions = 1;
static int stack[MAX_DEPTH], depth;       /* region indices; depth 0 = outside */
static int counting = 1;
static double total_seconds;              /* always counted: the application's regions read it */
static double t_init;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

double prefopt_pmpi_mpi_seconds(void);
double prefopt_pmpi_mpi_seconds(void) { return total_seconds; }

void prefopt_pmpi_region(const char *name, int enter);
void prefopt_pmpi_region(const char *name, int enter)
{
    if (!enter) {
        if (depth > 0)
            depth--;
        return;
    }
    char path[PATH_LEN];
    int cur = depth > 0 ? stack[depth - 1] : 0;
    /* a path too long for the table is cut; its calls are then counted under the cut name */
    int len = cur > 0 ? snprintf(path, sizeof path, "%s/%s", region_path[cur], name)
                      : snprintf(path, sizeof path, "%s", name);
    (void)len;
    int r = 1;
    while (r < nregions && strcmp(region_path[r], path))
        r++;
    if (r == nregions) {
        if (nregions == MAX_REGIONS)
            r = MAX_REGIONS - 1; /* overflow: the last slot collects the rest */
        else {
            snprintf(region_path[r], PATH_LEN, "%s", path);
            nregions++;
        }
    }
    if (depth < MAX_DEPTH)
        stack[depth++] = r;
}

static double tsize(MPI_Datatype t)
{
    int s = 0;
    if (t == MPI_DATATYPE_NULL)
        return 0;
    PMPI_Type_size(t, &s);
    return (double)s;
}

static int comm_size(MPI_Comm c)
{
    int s = 1;
    PMPI_Comm_size(c, &s);
    return s;
}

static int comm_rank(MPI_Comm c)
{
    int r = 0;
    PMPI_Comm_rank(c, &r);
    return r;
}

static void account(int call, double t0, double bytes)
{
    double dt = now() - t0;
    total_seconds += dt;
    if (!counting)
        return;
    stat *s = &table[depth > 0 ? stack[depth - 1] : 0][call];
    s->calls += 1;
    s->seconds += dt;
    s->bytes += bytes;
}

#define WRAP(call, bytes_expr, pcall)                                                                             \
    do {                                                                                                          \
        double t0_ = now();                                                                                       \
        int rc_ = pcall;                                                                                          \
        account(C_##call, t0_, bytes_expr);                                                                       \
        return rc_;                                                                                               \
    } while (0)

int MPI_Allreduce(const void *sb, void *rb, int n, MPI_Datatype t, MPI_Op op, MPI_Comm c)
{
    WRAP(Allreduce, n * tsize(t), PMPI_Allreduce(sb, rb, n, t, op, c));
}
int MPI_Reduce(const void *sb, void *rb, int n, MPI_Datatype t, MPI_Op op, int root, MPI_Comm c)
{
    WRAP(Reduce, n * tsize(t), PMPI_Reduce(sb, rb, n, t, op, root, c));
}
int MPI_Bcast(void *b, int n, MPI_Datatype t, int root, MPI_Comm c)
{
    WRAP(Bcast, n * tsize(t), PMPI_Bcast(b, n, t, root, c));
}
int MPI_Barrier(MPI_Comm c) { WRAP(Barrier, 0, PMPI_Barrier(c)); }
int MPI_Allgather(const void *sb, int sn, MPI_Datatype st, void *rb, int rn, MPI_Datatype rt, MPI_Comm c)
{
    WRAP(Allgather, sb == MPI_IN_PLACE ? rn * tsize(rt) : sn * tsize(st), PMPI_Allgather(sb, sn, st, rb, rn, rt, c));
}
int MPI_Allgatherv(const void *sb, int sn, MPI_Datatype st, void *rb, const int rn[], const int d[], MPI_Datatype rt,
                   MPI_Comm c)
{
    /* in place, my contribution is already in rb: its size is rn[my rank] */
    WRAP(Allgatherv, sb == MPI_IN_PLACE ? rn[comm_rank(c)] * tsize(rt) : sn * tsize(st),
         PMPI_Allgatherv(sb, sn, st, rb, rn, d, rt, c));
}
int MPI_Gather(const void *sb, int sn, MPI_Datatype st, void *rb, int rn, MPI_Datatype rt, int root, MPI_Comm c)
{
    WRAP(Gather, sb == MPI_IN_PLACE ? rn * tsize(rt) : sn * tsize(st), PMPI_Gather(sb, sn, st, rb, rn, rt, root, c));
}
int MPI_Gatherv(const void *sb, int sn, MPI_Datatype st, void *rb, const int rn[], const int d[], MPI_Datatype rt,
                int root, MPI_Comm c)
{
    WRAP(Gatherv, sb == MPI_IN_PLACE ? rn[root] * tsize(rt) : sn * tsize(st),
         PMPI_Gatherv(sb, sn, st, rb, rn, d, rt, root, c));
}
int MPI_Scatter(const void *sb, int sn, MPI_Datatype st, void *rb, int rn, MPI_Datatype rt, int root, MPI_Comm c)
{
    WRAP(Scatter, rb == MPI_IN_PLACE ? sn * tsize(st) : rn * tsize(rt), PMPI_Scatter(sb, sn, st, rb, rn, rt, root, c));
}
int MPI_Scatterv(const void *sb, const int sn[], const int d[], MPI_Datatype st, void *rb, int rn, MPI_Datatype rt,
                 int root, MPI_Comm c)
{
    WRAP(Scatterv, rb == MPI_IN_PLACE ? 0 : rn * tsize(rt), PMPI_Scatterv(sb, sn, d, st, rb, rn, rt, root, c));
}
int MPI_Alltoall(const void *sb, int sn, MPI_Datatype st, void *rb, int rn, MPI_Datatype rt, MPI_Comm c)
{
    WRAP(Alltoall, (sb == MPI_IN_PLACE ? rn * tsize(rt) : sn * tsize(st)) * comm_size(c),
         PMPI_Alltoall(sb, sn, st, rb, rn, rt, c));
}
int MPI_Alltoallv(const void *sb, const int sn[], const int sd[], MPI_Datatype st, void *rb, const int rn[],
                  const int rd[], MPI_Datatype rt, MPI_Comm c)
{
    double b = 0;
    if (sb != MPI_IN_PLACE)
        for (int i = 0, p = comm_size(c); i < p; i++)
            b += sn[i] * tsize(st);
    WRAP(Alltoallv, b, PMPI_Alltoallv(sb, sn, sd, st, rb, rn, rd, rt, c));
}
int MPI_Reduce_scatter(const void *sb, void *rb, const int rn[], MPI_Datatype t, MPI_Op op, MPI_Comm c)
{
    double b = 0;
    for (int i = 0, p = comm_size(c); i < p; i++)
        b += rn[i] * tsize(t);
    WRAP(Reduce_scatter, b, PMPI_Reduce_scatter(sb, rb, rn, t, op, c));
}
int MPI_Reduce_scatter_block(const void *sb, void *rb, int rn, MPI_Datatype t, MPI_Op op, MPI_Comm c)
{
    WRAP(Reduce_scatter_block, (double)rn * tsize(t) * comm_size(c), PMPI_Reduce_scatter_block(sb, rb, rn, t, op, c));
}
int MPI_Scan(const void *sb, void *rb, int n, MPI_Datatype t, MPI_Op op, MPI_Comm c)
{
    WRAP(Scan, n * tsize(t), PMPI_Scan(sb, rb, n, t, op, c));
}
int MPI_Exscan(const void *sb, void *rb, int n, MPI_Datatype t, MPI_Op op, MPI_Comm c)
{
    WRAP(Exscan, n * tsize(t), PMPI_Exscan(sb, rb, n, t, op, c));
}
int MPI_Send(const void *b, int n, MPI_Datatype t, int dst, int tag, MPI_Comm c)
{
    WRAP(Send, n * tsize(t), PMPI_Send(b, n, t, dst, tag, c));
}
int MPI_Ssend(const void *b, int n, MPI_Datatype t, int dst, int tag, MPI_Comm c)
{
    WRAP(Ssend, n * tsize(t), PMPI_Ssend(b, n, t, dst, tag, c));
}
int MPI_Recv(void *b, int n, MPI_Datatype t, int src, int tag, MPI_Comm c, MPI_Status *st)
{
    WRAP(Recv, n * tsize(t), PMPI_Recv(b, n, t, src, tag, c, st));
}
int MPI_Isend(const void *b, int n, MPI_Datatype t, int dst, int tag, MPI_Comm c, MPI_Request *r)
{
    WRAP(Isend, n * tsize(t), PMPI_Isend(b, n, t, dst, tag, c, r));
}
int MPI_Irecv(void *b, int n, MPI_Datatype t, int src, int tag, MPI_Comm c, MPI_Request *r)
{
    WRAP(Irecv, n * tsize(t), PMPI_Irecv(b, n, t, src, tag, c, r));
}
int MPI_Sendrecv(const void *sb, int sn, MPI_Datatype st, int dst, int stag, void *rb, int rn, MPI_Datatype rt,
                 int src, int rtag, MPI_Comm c, MPI_Status *s)
{
    WRAP(Sendrecv, sn * tsize(st) + rn * tsize(rt), PMPI_Sendrecv(sb, sn, st, dst, stag, rb, rn, rt, src, rtag, c, s));
}
int MPI_Wait(MPI_Request *r, MPI_Status *s) { WRAP(Wait, 0, PMPI_Wait(r, s)); }
int MPI_Waitall(int n, MPI_Request r[], MPI_Status *s) { WRAP(Waitall, 0, PMPI_Waitall(n, r, s)); }
int MPI_Waitany(int n, MPI_Request r[], int *i, MPI_Status *s) { WRAP(Waitany, 0, PMPI_Waitany(n, r, i, s)); }
int MPI_Test(MPI_Request *r, int *f, MPI_Status *s) { WRAP(Test, 0, PMPI_Test(r, f, s)); }
int MPI_Testall(int n, MPI_Request r[], int *f, MPI_Status s[]) { WRAP(Testall, 0, PMPI_Testall(n, r, f, s)); }
int MPI_Iallreduce(const void *sb, void *rb, int n, MPI_Datatype t, MPI_Op op, MPI_Comm c, MPI_Request *r)
{
    WRAP(Iallreduce, n * tsize(t), PMPI_Iallreduce(sb, rb, n, t, op, c, r));
}
int MPI_Ibcast(void *b, int n, MPI_Datatype t, int root, MPI_Comm c, MPI_Request *r)
{
    WRAP(Ibcast, n * tsize(t), PMPI_Ibcast(b, n, t, root, c, r));
}
int MPI_File_write_at_all(MPI_File f, MPI_Offset o, const void *b, int n, MPI_Datatype t, MPI_Status *s)
{
    WRAP(File_write_at_all, n * tsize(t), PMPI_File_write_at_all(f, o, b, n, t, s));
}
int MPI_File_read_at_all(MPI_File f, MPI_Offset o, void *b, int n, MPI_Datatype t, MPI_Status *s)
{
    WRAP(File_read_at_all, n * tsize(t), PMPI_File_read_at_all(f, o, b, n, t, s));
}
int MPI_File_write_at(MPI_File f, MPI_Offset o, const void *b, int n, MPI_Datatype t, MPI_Status *s)
{
    WRAP(File_write_at, n * tsize(t), PMPI_File_write_at(f, o, b, n, t, s));
}
int MPI_File_read_at(MPI_File f, MPI_Offset o, void *b, int n, MPI_Datatype t, MPI_Status *s)
{
    WRAP(File_read_at, n * tsize(t), PMPI_File_read_at(f, o, b, n, t, s));
}

int MPI_Pcontrol(const int level, ...)
{
    if (level == 0)
        counting = 0;
    else if (level == 1)
        counting = 1;
    else if (level == 2)
        memset(table, 0, sizeof table);
    return PMPI_Pcontrol(level);
}

int MPI_Init(int *argc, char ***argv)
{
    int rc = PMPI_Init(argc, argv);
    t_init = now();
    return rc;
}

int MPI_Init_thread(int *argc, char ***argv, int required, int *provided)
{
    int rc = PMPI_Init_thread(argc, argv, required, provided);
    t_init = now();
    return rc;
}

/* The summary: per call type (summed over regions) min/avg/max seconds over ranks, total calls and bytes; then
 * per region and call type, averages over ranks. Region paths are agreed by gathering every rank's list. */
static void report(void)
{
    int rank = 0, size = 1;
    PMPI_Comm_rank(MPI_COMM_WORLD, &rank);
    PMPI_Comm_size(MPI_COMM_WORLD, &size);
    double wall = now() - t_init;
    /* union of region paths: rank 0 decides the order, others' extra paths appended */
    char *all = malloc((size_t)size * MAX_REGIONS * PATH_LEN);
    char (*mine)[PATH_LEN] = calloc(MAX_REGIONS, PATH_LEN);
    if (!all || !mine) {
        free(all);
        free(mine);
        return;
    }
    for (int r = 1; r < nregions; r++)
        memcpy(mine[r], region_path[r], PATH_LEN);
    PMPI_Allgather(mine, MAX_REGIONS * PATH_LEN, MPI_CHAR, all, MAX_REGIONS * PATH_LEN, MPI_CHAR, MPI_COMM_WORLD);
    static char uni[MAX_REGIONS][PATH_LEN];
    int nu = 1;
    for (int q = 0; q < size; q++)
        for (int r = 1; r < MAX_REGIONS; r++) {
            const char *p = all + ((size_t)q * MAX_REGIONS + r) * PATH_LEN;
            if (!*p)
                continue;
            int k = 1;
            while (k < nu && strncmp(uni[k], p, PATH_LEN))
                k++;
            if (k == nu && nu < MAX_REGIONS)
                memcpy(uni[nu++], p, PATH_LEN);
        }
    free(all);
    free(mine);
    /* this rank's table in union order */
    size_t nv = (size_t)nu * NCALLS * 3 + NCALLS + 1;
    double *loc = calloc(nv, sizeof(double)), *sum = calloc(nv, sizeof(double));
    double *mn = calloc(NCALLS + 2, sizeof(double)), *mx = calloc(NCALLS + 2, sizeof(double));
    if (!loc || !sum || !mn || !mx)
        goto out;
    for (int k = 0; k < nu; k++) {
        int r = 0;
        if (k > 0)
            for (r = 1; r < nregions && strncmp(region_path[r], uni[k], PATH_LEN); r++)
                ;
        if (r >= nregions)
            continue;
        for (int c = 0; c < NCALLS; c++) {
            double *v = loc + ((size_t)k * NCALLS + c) * 3;
            v[0] = table[r][c].calls;
            v[1] = table[r][c].seconds;
            v[2] = table[r][c].bytes;
        }
    }
    double *per_call = loc + (size_t)nu * NCALLS * 3; /* seconds per call type, all regions */
    for (int k = 0; k < nu; k++)
        for (int c = 0; c < NCALLS; c++)
            per_call[c] += loc[((size_t)k * NCALLS + c) * 3 + 1];
    per_call[NCALLS] = wall;
    PMPI_Allreduce(loc, sum, (int)nv, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    PMPI_Allreduce(per_call, mn, NCALLS + 1, MPI_DOUBLE, MPI_MIN, MPI_COMM_WORLD);
    PMPI_Allreduce(per_call, mx, NCALLS + 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    if (rank == 0) {
        const char *outp = getenv("PREFOPT_PMPI_OUT");
        const char *quiet = getenv("PREFOPT_PMPI_QUIET");
        FILE *f = outp && *outp ? fopen(outp, "a") : stderr;
        if (!f)
            f = stderr;
        const double *tot = sum + (size_t)nu * NCALLS * 3;
        double mpi_avg = 0;
        for (int c = 0; c < NCALLS; c++)
            mpi_avg += tot[c] / size;
        if (!(quiet && *quiet == '1')) {
            fprintf(f, "pmpi summary: %d ranks, wall %.3f s (avg), MPI %.3f s (avg, %.1f%%); per call type, over "
                       "ranks (payload bytes = message sizes):\n",
                    size, tot[NCALLS] / size, mpi_avg, tot[NCALLS] > 0 ? 100.0 * mpi_avg * size / tot[NCALLS] : 0);
            fprintf(f, "  %-26s %12s %14s %10s %10s %10s\n", "call", "calls", "bytes", "min s", "avg s", "max s");
            for (int c = 0; c < NCALLS; c++) {
                double calls = 0, bytes = 0;
                for (int k = 0; k < nu; k++) {
                    calls += sum[((size_t)k * NCALLS + c) * 3];
                    bytes += sum[((size_t)k * NCALLS + c) * 3 + 2];
                }
                if (calls > 0)
                    fprintf(f, "  %-26s %12.0f %14.0f %10.4f %10.4f %10.4f\n", call_names[c], calls, bytes, mn[c],
                            tot[c] / size, mx[c]);
            }
            if (nu > 1) {
                fprintf(f, "  by region (avg seconds per rank, calls and bytes summed over ranks):\n");
                for (int k = 0; k < nu; k++)
                    for (int c = 0; c < NCALLS; c++) {
                        const double *v = sum + ((size_t)k * NCALLS + c) * 3;
                        if (v[0] > 0)
                            fprintf(f, "    %-32s %-22s %10.0f %14.0f %10.4f\n", k ? uni[k] : "(outside)",
                                    call_names[c], v[0], v[2], v[1] / size);
                    }
            }
        }
        fprintf(f, "{\"pmpi\":{\"ranks\":%d,\"wall_s\":%.6f,\"mpi_s_avg\":%.6f,\"calls\":{", size, tot[NCALLS] / size,
                mpi_avg);
        int first = 1;
        for (int c = 0; c < NCALLS; c++) {
            double calls = 0, bytes = 0;
            for (int k = 0; k < nu; k++) {
                calls += sum[((size_t)k * NCALLS + c) * 3];
                bytes += sum[((size_t)k * NCALLS + c) * 3 + 2];
            }
            if (calls <= 0)
                continue;
            fprintf(f, "%s\"%s\":{\"calls\":%.0f,\"bytes\":%.0f,\"s_min\":%.6f,\"s_avg\":%.6f,\"s_max\":%.6f}",
                    first ? "" : ",", call_names[c], calls, bytes, mn[c], tot[c] / size, mx[c]);
            first = 0;
        }
        fprintf(f, "},\"regions\":{");
        first = 1;
        for (int k = 0; k < nu; k++) {
            double calls = 0, bytes = 0, sec = 0;
            for (int c = 0; c < NCALLS; c++) {
                const double *v = sum + ((size_t)k * NCALLS + c) * 3;
                calls += v[0];
                sec += v[1];
                bytes += v[2];
            }
            if (calls <= 0)
                continue;
            fprintf(f, "%s\"%s\":{\"calls\":%.0f,\"bytes\":%.0f,\"s_avg\":%.6f}", first ? "" : ",",
                    k ? uni[k] : "(outside)", calls, bytes, sec / size);
            first = 0;
        }
        fprintf(f, "}}}\n");
        if (f != stderr)
            fclose(f);
        else
            fflush(f);
    }
out:
    free(loc), free(sum), free(mn), free(mx);
}

int MPI_Finalize(void)
{
    report();
    return PMPI_Finalize();
}
