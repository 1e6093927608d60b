/* Internal to the trace (trace.h): the spool record shared by the recorder (trace.c), the MPI interposer
 * (mpi_wrap.c) and the exporter (trace_export.c). */
#ifndef PREFOPT_TRACE_INTERNAL_H
#define PREFOPT_TRACE_INTERNAL_H

#include "prefopt/common.h"

#include <mpi.h>
#include <stdint.h>

/* Every MPI call the interposer times; the OTF2 collective operation, 0 = point-to-point or other. "io" calls are
 * MPI-IO (HDF5's parallel writes and reads): the summary counts them as I/O, not communication. New calls go at
 * the end: the spool stores the position, and spools written before still read back. The nonblocking
 * collectives are the starts (gradsync.c's buckets); their completion is the MPI_Wait / MPI_Test after. */
#define PF_TRACE_CALLS(X)                                                                                         \
    X(Allreduce, COLL) X(Reduce, COLL) X(Bcast, COLL) X(Barrier, COLL) X(Allgather, COLL) X(Allgatherv, COLL)     \
    X(Gather, COLL) X(Gatherv, COLL) X(Scatter, COLL) X(Scatterv, COLL) X(Alltoall, COLL) X(Alltoallv, COLL)      \
    X(Reduce_scatter, COLL) X(Reduce_scatter_block, COLL) X(Scan, COLL) X(Exscan, COLL) X(Send, P2P)              \
    X(Ssend, P2P) X(Recv, P2P) X(Isend, P2P) X(Irecv, P2P) X(Sendrecv, P2P) X(Wait, P2P) X(Waitall, P2P)          \
    X(Waitany, P2P) X(Test, P2P) X(Testall, P2P) X(Iallreduce, COLL) X(Ibcast, COLL) X(Comm_split, COLL)          \
    X(Comm_dup, COLL) X(Comm_create, COLL) X(File_open, IO) X(File_close, IO) X(File_write_at_all, IO)           \
    X(File_read_at_all, IO) X(File_write_at, IO) X(File_read_at, IO) X(File_set_size, IO) X(File_sync, IO) \
    X(Ireduce_scatter, COLL) X(Ialltoallv, COLL) X(Iallgatherv, COLL)

enum { PF_KIND_COLL = 1, PF_KIND_P2P = 2, PF_KIND_IO = 3 };
#define PF_ENUM(n, k) PF_MPI_##n,
enum { PF_TRACE_CALLS(PF_ENUM) PF_MPI_NCALLS };
#undef PF_ENUM
extern const char *const pf_trace_call_name[PF_MPI_NCALLS]; /* "MPI_Allreduce" */
extern const int pf_trace_call_kind[PF_MPI_NCALLS];

/* One spool record (40 bytes, native byte order: the spool is read back on the machine that wrote it).
 *   INFO        id = world rank, peer = world size, index = format version; t0 = start (CLOCK_MONOTONIC)
 *   DEF_REGION  id = region id; index = layer-style index or -1; followed by `bytes` bytes of name
 *   DEF_COMM    id = comm id; peer = size; index = my rank in it; followed by a name of `t1` bytes padded
 *               to 8 and `peer` int32 world ranks (the members, in comm rank order) - `bytes` in all
 *   ENTER/LEAVE id = region id; t0 = time
 *   MPI         call; id = comm id (-1 none); peer = peer or root rank in the comm (-1 none); bytes; t0..t1
 *   STEP        id = step number; t0 = time (the boundary before the step) */
enum { PF_REC_INFO = 1, PF_REC_DEF_REGION, PF_REC_DEF_COMM, PF_REC_ENTER, PF_REC_LEAVE, PF_REC_MPI, PF_REC_STEP };
enum { PF_SPOOL_VERSION = 1 };
typedef struct {
    uint8_t kind, call;
    uint16_t flags;
    int32_t id, peer, index;
    uint64_t bytes;
    double t0, t1;
} pf_trace_rec;

/* Set while events are recorded (the interposer's only test when tracing is off). */
extern int pf_trace_recording;
/* The interposer's entry into the recorder. */
void pf_trace_mpi(int call, MPI_Comm c, int peer, double bytes, double t0, double t1);
/* Forget a communicator about to be freed (its handle may be reused). */
void pf_trace_comm_freed(MPI_Comm c);
/* Region hooks from regions.c. */
void pf_trace_region(const char *name, int index, int enter);
/* Wall time as the trace counts it. */
double pf_trace_now(void);
/* The recorder's side of prefopt_trace_start / _step (trace.c agrees on errors; the recorder cannot). */
int pf_trace_rec_open(const char *dir, MPI_Comm world, int pcontrol, prefopt_err *err);
void pf_trace_rec_abandon(void);
void pf_trace_rec_go(long first);
void pf_trace_rec_step(long step, int in_window);

#endif
