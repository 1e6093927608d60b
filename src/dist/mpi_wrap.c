/* The MPI interposer of `--trace` (trace.h): the executable defines the MPI calls it times, so its own calls and
 * those of ScaLAPACK/BLACS and parallel HDF5 (which import MPI_* from the global scope) come here first. Each one
 * passes on to the *next* definition (dlsym RTLD_NEXT): an LD_PRELOADed PMPI tool (mpiP, the PMPI summary in
 * perf/pmpi) still sees every call, and without one the MPI library's own. Tracing off, a call costs one load
 * and a branch more (perf/README.md, "tracing overhead"). */
#define _GNU_SOURCE
#include "prefopt/trace.h"
#include "trace_internal.h"

#include <dlfcn.h>
#include <string.h>


static void *resolve(const char *name, void *fallback)
{
    void *f = dlsym(RTLD_NEXT, name);
    return f ? f : fallback;
}

static double tsize(MPI_Datatype t)
{
    int s = 0;
    if (t != MPI_DATATYPE_NULL)
        PMPI_Type_size(t, &s);
    return (double)s;
}

static int csize(MPI_Comm c)
{
    int s = 1;
    PMPI_Comm_size(c, &s);
    return s;
}

/* next_<name>: the definition after ours, looked up once (the first call comes from main's thread) */
#define NEXT(name, ...)                                                                                           \
    typedef int (*name##_fn)(__VA_ARGS__);                                                                        \
    static name##_fn next_##name;                                                                                 \
    static name##_fn get_##name(void)                                                                             \
    {                                                                                                             \
        if (!next_##name) {                                                                                       \
            void *f = resolve("MPI_" #name, NULL);                                                                \
            if (f)                                                                                                \
                memcpy(&next_##name, &f, sizeof f);                                                               \
            else                                                                                                  \
                next_##name = PMPI_##name;                                                                        \
        }                                                                                                         \
        return next_##name;                                                                                       \
    }

/* the call itself: untimed when not recording */
#define CALL(name, comm, peer, bytes_expr, ...)                                                                   \
    do {                                                                                                          \
        name##_fn f_ = get_##name();                                                                              \
        if (!pf_trace_recording)                                                                                  \
            return f_(__VA_ARGS__);                                                                               \
        double t0_ = pf_trace_now();                                                                              \
        int rc_ = f_(__VA_ARGS__);                                                                                \
        double t1_ = pf_trace_now();                                                                              \
        pf_trace_mpi(PF_MPI_##name, comm, peer, bytes_expr, t0_, t1_);                                            \
        return rc_;                                                                                               \
    } while (0)

NEXT(Allreduce, const void *, void *, int, MPI_Datatype, MPI_Op, MPI_Comm)
int MPI_Allreduce(const void *sb, void *rb, int n, MPI_Datatype t, MPI_Op op, MPI_Comm c)
{
    CALL(Allreduce, c, -1, n * tsize(t), sb, rb, n, t, op, c);
}
NEXT(Reduce, const void *, void *, int, MPI_Datatype, MPI_Op, int, MPI_Comm)
int MPI_Reduce(const void *sb, void *rb, int n, MPI_Datatype t, MPI_Op op, int root, MPI_Comm c)
{
    CALL(Reduce, c, root, n * tsize(t), sb, rb, n, t, op, root, c);
}
NEXT(Bcast, void *, int, MPI_Datatype, int, MPI_Comm)
int MPI_Bcast(void *b, int n, MPI_Datatype t, int root, MPI_Comm c)
{
    CALL(Bcast, c, root, n * tsize(t), b, n, t, root, c);
}
NEXT(Barrier, MPI_Comm)
int MPI_Barrier(MPI_Comm c) { CALL(Barrier, c, -1, 0, c); }
NEXT(Allgather, const void *, int, MPI_Datatype, void *, int, MPI_Datatype, MPI_Comm)
int MPI_Allgather(const void *sb, int sn, MPI_Datatype st, void *rb, int rn, MPI_Datatype rt, MPI_Comm c)
{
    CALL(Allgather, c, -1, sb == MPI_IN_PLACE ? rn * tsize(rt) : sn * tsize(st), sb, sn, st, rb, rn, rt, c);
}
NEXT(Allgatherv, const void *, int, MPI_Datatype, void *, const int *, const int *, MPI_Datatype, MPI_Comm)
int MPI_Allgatherv(const void *sb, int sn, MPI_Datatype st, void *rb, const int rn[], const int d[], MPI_Datatype rt,
                   MPI_Comm c)
{
    int me = 0;
    if (sb == MPI_IN_PLACE)
        PMPI_Comm_rank(c, &me);
    CALL(Allgatherv, c, -1, sb == MPI_IN_PLACE ? rn[me] * tsize(rt) : sn * tsize(st), sb, sn, st, rb, rn, d, rt, c);
}
NEXT(Gather, const void *, int, MPI_Datatype, void *, int, MPI_Datatype, int, MPI_Comm)
int MPI_Gather(const void *sb, int sn, MPI_Datatype st, void *rb, int rn, MPI_Datatype rt, int root, MPI_Comm c)
{
    CALL(Gather, c, root, sb == MPI_IN_PLACE ? rn * tsize(rt) : sn * tsize(st), sb, sn, st, rb, rn, rt, root, c);
}
NEXT(Gatherv, const void *, int, MPI_Datatype, void *, const int *, const int *, MPI_Datatype, int, MPI_Comm)
int MPI_Gatherv(const void *sb, int sn, MPI_Datatype st, void *rb, const int rn[], const int d[], MPI_Datatype rt,
                int root, MPI_Comm c)
{
    CALL(Gatherv, c, root, sb == MPI_IN_PLACE ? rn[root] * tsize(rt) : sn * tsize(st), sb, sn, st, rb, rn, d, rt,
         root, c);
}
NEXT(Scatter, const void *, int, MPI_Datatype, void *, int, MPI_Datatype, int, MPI_Comm)
int MPI_Scatter(const void *sb, int sn, MPI_Datatype st, void *rb, int rn, MPI_Datatype rt, int root, MPI_Comm c)
{
    CALL(Scatter, c, root, rb == MPI_IN_PLACE ? sn * tsize(st) : rn * tsize(rt), sb, sn, st, rb, rn, rt, root, c);
}
NEXT(Scatterv, const void *, const int *, const int *, MPI_Datatype, void *, int, MPI_Datatype, int, MPI_Comm)
int MPI_Scatterv(const void *sb, const int sn[], const int d[], MPI_Datatype st, void *rb, int rn, MPI_Datatype rt,
                 int root, MPI_Comm c)
{
    CALL(Scatterv, c, root, rb == MPI_IN_PLACE ? 0 : rn * tsize(rt), sb, sn, d, st, rb, rn, rt, root, c);
}
NEXT(Alltoall, const void *, int, MPI_Datatype, void *, int, MPI_Datatype, MPI_Comm)
int MPI_Alltoall(const void *sb, int sn, MPI_Datatype st, void *rb, int rn, MPI_Datatype rt, MPI_Comm c)
{
    CALL(Alltoall, c, -1, (sb == MPI_IN_PLACE ? rn * tsize(rt) : sn * tsize(st)) * csize(c), sb, sn, st, rb, rn, rt,
         c);
}
static double sum_counts(const int *n, int p, MPI_Datatype t)
{
    double b = 0;
    for (int i = 0; i < p; i++)
        b += n[i];
    return b * tsize(t);
}
NEXT(Alltoallv, const void *, const int *, const int *, MPI_Datatype, void *, const int *, const int *, MPI_Datatype,
     MPI_Comm)
int MPI_Alltoallv(const void *sb, const int sn[], const int sd[], MPI_Datatype st, void *rb, const int rn[],
                  const int rd[], MPI_Datatype rt, MPI_Comm c)
{
    CALL(Alltoallv, c, -1, sb == MPI_IN_PLACE ? 0 : sum_counts(sn, csize(c), st), sb, sn, sd, st, rb, rn, rd, rt, c);
}
NEXT(Reduce_scatter, const void *, void *, const int *, MPI_Datatype, MPI_Op, MPI_Comm)
int MPI_Reduce_scatter(const void *sb, void *rb, const int rn[], MPI_Datatype t, MPI_Op op, MPI_Comm c)
{
    CALL(Reduce_scatter, c, -1, sum_counts(rn, csize(c), t), sb, rb, rn, t, op, c);
}
NEXT(Reduce_scatter_block, const void *, void *, int, MPI_Datatype, MPI_Op, MPI_Comm)
int MPI_Reduce_scatter_block(const void *sb, void *rb, int rn, MPI_Datatype t, MPI_Op op, MPI_Comm c)
{
    CALL(Reduce_scatter_block, c, -1, (double)rn * tsize(t) * csize(c), sb, rb, rn, t, op, c);
}
NEXT(Scan, const void *, void *, int, MPI_Datatype, MPI_Op, MPI_Comm)
int MPI_Scan(const void *sb, void *rb, int n, MPI_Datatype t, MPI_Op op, MPI_Comm c)
{
    CALL(Scan, c, -1, n * tsize(t), sb, rb, n, t, op, c);
}
NEXT(Exscan, const void *, void *, int, MPI_Datatype, MPI_Op, MPI_Comm)
int MPI_Exscan(const void *sb, void *rb, int n, MPI_Datatype t, MPI_Op op, MPI_Comm c)
{
    CALL(Exscan, c, -1, n * tsize(t), sb, rb, n, t, op, c);
}
NEXT(Send, const void *, int, MPI_Datatype, int, int, MPI_Comm)
int MPI_Send(const void *b, int n, MPI_Datatype t, int dst, int tag, MPI_Comm c)
{
    CALL(Send, c, dst, n * tsize(t), b, n, t, dst, tag, c);
}
NEXT(Ssend, const void *, int, MPI_Datatype, int, int, MPI_Comm)
int MPI_Ssend(const void *b, int n, MPI_Datatype t, int dst, int tag, MPI_Comm c)
{
    CALL(Ssend, c, dst, n * tsize(t), b, n, t, dst, tag, c);
}
NEXT(Recv, void *, int, MPI_Datatype, int, int, MPI_Comm, MPI_Status *)
int MPI_Recv(void *b, int n, MPI_Datatype t, int src, int tag, MPI_Comm c, MPI_Status *st)
{
    CALL(Recv, c, src, n * tsize(t), b, n, t, src, tag, c, st);
}
NEXT(Isend, const void *, int, MPI_Datatype, int, int, MPI_Comm, MPI_Request *)
int MPI_Isend(const void *b, int n, MPI_Datatype t, int dst, int tag, MPI_Comm c, MPI_Request *r)
{
    CALL(Isend, c, dst, n * tsize(t), b, n, t, dst, tag, c, r);
}
NEXT(Irecv, void *, int, MPI_Datatype, int, int, MPI_Comm, MPI_Request *)
int MPI_Irecv(void *b, int n, MPI_Datatype t, int src, int tag, MPI_Comm c, MPI_Request *r)
{
    CALL(Irecv, c, src, n * tsize(t), b, n, t, src, tag, c, r);
}
NEXT(Sendrecv, const void *, int, MPI_Datatype, int, int, void *, int, MPI_Datatype, int, int, MPI_Comm, MPI_Status *)
int MPI_Sendrecv(const void *sb, int sn, MPI_Datatype st, int dst, int stag, void *rb, int rn, MPI_Datatype rt,
                 int src, int rtag, MPI_Comm c, MPI_Status *s)
{
    CALL(Sendrecv, c, dst, sn * tsize(st) + rn * tsize(rt), sb, sn, st, dst, stag, rb, rn, rt, src, rtag, c, s);
}
NEXT(Wait, MPI_Request *, MPI_Status *)
int MPI_Wait(MPI_Request *r, MPI_Status *s) { CALL(Wait, MPI_COMM_NULL, -1, 0, r, s); }
NEXT(Waitall, int, MPI_Request *, MPI_Status *)
int MPI_Waitall(int n, MPI_Request r[], MPI_Status *s) { CALL(Waitall, MPI_COMM_NULL, -1, 0, n, r, s); }
NEXT(Waitany, int, MPI_Request *, int *, MPI_Status *)
int MPI_Waitany(int n, MPI_Request r[], int *i, MPI_Status *s) { CALL(Waitany, MPI_COMM_NULL, -1, 0, n, r, i, s); }
NEXT(Test, MPI_Request *, int *, MPI_Status *)
int MPI_Test(MPI_Request *r, int *f, MPI_Status *s) { CALL(Test, MPI_COMM_NULL, -1, 0, r, f, s); }
NEXT(Testall, int, MPI_Request *, int *, MPI_Status *)
int MPI_Testall(int n, MPI_Request r[], int *f, MPI_Status s[]) { CALL(Testall, MPI_COMM_NULL, -1, 0, n, r, f, s); }
NEXT(Iallreduce, const void *, void *, int, MPI_Datatype, MPI_Op, MPI_Comm, MPI_Request *)
int MPI_Iallreduce(const void *sb, void *rb, int n, MPI_Datatype t, MPI_Op op, MPI_Comm c, MPI_Request *r)
{
    CALL(Iallreduce, c, -1, n * tsize(t), sb, rb, n, t, op, c, r);
}
NEXT(Ibcast, void *, int, MPI_Datatype, int, MPI_Comm, MPI_Request *)
int MPI_Ibcast(void *b, int n, MPI_Datatype t, int root, MPI_Comm c, MPI_Request *r)
{
    CALL(Ibcast, c, root, n * tsize(t), b, n, t, root, c, r);
}
/* the nonblocking collectives of the distributed optimizer and of bf16 gradients (gradsync.c) */
NEXT(Ireduce_scatter, const void *, void *, const int *, MPI_Datatype, MPI_Op, MPI_Comm, MPI_Request *)
int MPI_Ireduce_scatter(const void *sb, void *rb, const int rn[], MPI_Datatype t, MPI_Op op, MPI_Comm c,
                        MPI_Request *r)
{
    CALL(Ireduce_scatter, c, -1, sum_counts(rn, csize(c), t), sb, rb, rn, t, op, c, r);
}
NEXT(Ialltoallv, const void *, const int *, const int *, MPI_Datatype, void *, const int *, const int *,
     MPI_Datatype, MPI_Comm, MPI_Request *)
int MPI_Ialltoallv(const void *sb, const int sn[], const int sd[], MPI_Datatype st, void *rb, const int rn[],
                   const int rd[], MPI_Datatype rt, MPI_Comm c, MPI_Request *r)
{
    CALL(Ialltoallv, c, -1, sb == MPI_IN_PLACE ? 0 : sum_counts(sn, csize(c), st), sb, sn, sd, st, rb, rn, rd, rt, c,
         r);
}
NEXT(Iallgatherv, const void *, int, MPI_Datatype, void *, const int *, const int *, MPI_Datatype, MPI_Comm,
     MPI_Request *)
int MPI_Iallgatherv(const void *sb, int sn, MPI_Datatype st, void *rb, const int rn[], const int d[],
                    MPI_Datatype rt, MPI_Comm c, MPI_Request *r)
{
    int me = 0;
    if (sb == MPI_IN_PLACE)
        PMPI_Comm_rank(c, &me);
    CALL(Iallgatherv, c, -1, sb == MPI_IN_PLACE ? rn[me] * tsize(rt) : sn * tsize(st), sb, sn, st, rb, rn, d, rt, c,
         r);
}
NEXT(Comm_split, MPI_Comm, int, int, MPI_Comm *)
int MPI_Comm_split(MPI_Comm c, int color, int key, MPI_Comm *out) { CALL(Comm_split, c, -1, 0, c, color, key, out); }
NEXT(Comm_dup, MPI_Comm, MPI_Comm *)
int MPI_Comm_dup(MPI_Comm c, MPI_Comm *out) { CALL(Comm_dup, c, -1, 0, c, out); }
NEXT(Comm_create, MPI_Comm, MPI_Group, MPI_Comm *)
int MPI_Comm_create(MPI_Comm c, MPI_Group g, MPI_Comm *out) { CALL(Comm_create, c, -1, 0, c, g, out); }
NEXT(File_open, MPI_Comm, const char *, int, MPI_Info, MPI_File *)
int MPI_File_open(MPI_Comm c, const char *name, int amode, MPI_Info info, MPI_File *fh)
{
    CALL(File_open, c, -1, 0, c, name, amode, info, fh);
}
NEXT(File_close, MPI_File *)
int MPI_File_close(MPI_File *fh) { CALL(File_close, MPI_COMM_NULL, -1, 0, fh); }
NEXT(File_write_at_all, MPI_File, MPI_Offset, const void *, int, MPI_Datatype, MPI_Status *)
int MPI_File_write_at_all(MPI_File f, MPI_Offset o, const void *b, int n, MPI_Datatype t, MPI_Status *s)
{
    CALL(File_write_at_all, MPI_COMM_NULL, -1, n * tsize(t), f, o, b, n, t, s);
}
NEXT(File_read_at_all, MPI_File, MPI_Offset, void *, int, MPI_Datatype, MPI_Status *)
int MPI_File_read_at_all(MPI_File f, MPI_Offset o, void *b, int n, MPI_Datatype t, MPI_Status *s)
{
    CALL(File_read_at_all, MPI_COMM_NULL, -1, n * tsize(t), f, o, b, n, t, s);
}
NEXT(File_write_at, MPI_File, MPI_Offset, const void *, int, MPI_Datatype, MPI_Status *)
int MPI_File_write_at(MPI_File f, MPI_Offset o, const void *b, int n, MPI_Datatype t, MPI_Status *s)
{
    CALL(File_write_at, MPI_COMM_NULL, -1, n * tsize(t), f, o, b, n, t, s);
}
NEXT(File_read_at, MPI_File, MPI_Offset, void *, int, MPI_Datatype, MPI_Status *)
int MPI_File_read_at(MPI_File f, MPI_Offset o, void *b, int n, MPI_Datatype t, MPI_Status *s)
{
    CALL(File_read_at, MPI_COMM_NULL, -1, n * tsize(t), f, o, b, n, t, s);
}
NEXT(File_set_size, MPI_File, MPI_Offset)
int MPI_File_set_size(MPI_File f, MPI_Offset n) { CALL(File_set_size, MPI_COMM_NULL, -1, 0, f, n); }
NEXT(File_sync, MPI_File)
int MPI_File_sync(MPI_File f) { CALL(File_sync, MPI_COMM_NULL, -1, 0, f); }

/* not timed: a freed handle may come back for another communicator, so the recorder forgets it first */
NEXT(Comm_free, MPI_Comm *)
int MPI_Comm_free(MPI_Comm *c)
{
    if (c)
        pf_trace_comm_freed(*c);
    return get_Comm_free()(c);
}

/* an agreed error exits through MPI_Finalize: the trace is completed there too */

NEXT(Finalize, void)
int MPI_Finalize(void)
{
    prefopt_trace_finish();
    return get_Finalize()();
}
