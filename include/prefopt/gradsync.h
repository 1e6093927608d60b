/* prefopt: the data-parallel gradient reduction, bucketed and overlapped with backward, and the distributed
 * optimizer's (ZeRO stage 1) reduce-scatter of gradients and all-gather of updated weights.
 *
 * The flat gradient buffer is cut into buckets at the boundaries where backward's readiness advances (model.h:
 * prefopt_model_grad_boundaries; the buffer is in reverse layer order, so bucket 0 is the head and the last
 * layers). A bucket holds whole layers and closes at the first boundary past bucket_floats. Every rank issues
 * the buckets' collectives in bucket order on communicators of its own (duplicates of dp), so other collectives
 * on dp never interleave with them.
 *
 * Overlap. Open MPI 4.1 has no background progress for nonblocking collectives, and the executable runs
 * MPI_THREAD_FUNNELED, so there is no communication thread: a bucket's nonblocking collective starts from
 * prefopt_gradsync_ready (backward's hook) as soon as backward has passed it, and every later call of the hook
 * (twice per layer) tests the outstanding ones, which is what makes them progress while backward computes. The
 * blocking path (overlap 0) issues exactly the same collectives on the same buckets after backward and waits for
 * each: the sums are bit-identical, only the timing differs.
 *
 * Modes, per bucket of nb floats split into dp shards (shard r: nb/dp elements, one more for r < nb % dp):
 *   zero 0, fp32:  MPI_Iallreduce (sum) in place.
 *   zero 1, fp32:  MPI_Ireduce_scatter: this rank's shard of the sum lands at its place in the buffer; the other
 *                  shards of the buffer keep this rank's own partial gradients (do not read them).
 *   bf16:          each rank rounds its bucket to bf16 (nearest even), an MPI_Ialltoallv hands every owner the dp
 *                  bf16 copies of its shard, the owner sums them in fp32 in rank order (the result does not depend
 *                  on MPI's reduction algorithm). zero 1 keeps that fp32 sum; zero 0 rounds it to bf16 once and an
 *                  MPI_Iallgatherv of bf16 gives every rank the same reduced bucket. So each element is rounded
 *                  at most twice (relative error <= 2^-8 of each contribution plus 2^-9 of the sum) and half the
 *                  bytes of the fp32 path cross the network.
 * Memory: zero 1 keeps one shard-sized fp32 receive buffer (n/dp floats); bf16 keeps 2 bytes per element for
 * sending and 2 for receiving (prefopt_gradsync_extra_bytes). */
#ifndef PREFOPT_GRADSYNC_H
#define PREFOPT_GRADSYNC_H

#include <mpi.h>
#include <stddef.h>

typedef struct {
    size_t bucket_floats; /* a bucket closes at the first boundary at or past this many floats (0: 8M = 32 MB) */
    int overlap;          /* 1: buckets start during backward; 0: all after it (same collectives) */
    int zero;             /* 0: all-reduce; 1: reduce-scatter (distributed optimizer) */
    int bf16;             /* 1: bf16 on the wire, fp32 sums */
} prefopt_gradsync_opts;

/* Times of the caller's thread inside this module since the last prefopt_gradsync_take_stats. */
typedef struct {
    double exposed;  /* seconds inside ready (starting and testing collectives) and finish (waiting): the
                      * communication backward did not hide */
    double finish;   /* of which in prefopt_gradsync_finish */
    double gather;   /* zero 1: time inside the weight all-gather's calls (with overlap: its start after the
                      * optimizer step and the waits of the forward that follows) */
    int nbuckets;
    int early;       /* buckets of the last finish that had started during backward (overlap) */
} prefopt_gradsync_stats;

typedef struct prefopt_gradsync prefopt_gradsync;

/* grads: the flat buffer of n floats; bounds[0..nbounds-1]: increasing readiness boundaries, the last == n.
 * Collective over dp (duplicates it twice). With dp of one rank every call below returns at once. */
prefopt_gradsync *prefopt_gradsync_create(float *grads, size_t n, const size_t *bounds, int nbounds, MPI_Comm dp,
                                          const prefopt_gradsync_opts *o);
void prefopt_gradsync_free(prefopt_gradsync *gs);

int prefopt_gradsync_nbuckets(const prefopt_gradsync *gs);
/* This rank's shard as segments of the flat buffer (one per bucket; zero 0 or dp 1: the whole buffer as one
 * segment). The arrays stay valid until free. Returns the segment count. */
int prefopt_gradsync_shard(const prefopt_gradsync *gs, const size_t **offset, const size_t **count);
/* Bytes of communication buffers this module holds, for the memory estimate: see the header comment. */
double prefopt_gradsync_extra_bytes(size_t n, int dp, int zero, int bf16);

/* Arms the next backward (call it before the last micro-batch's backward): with overlap, ready() starts each
 * bucket as backward passes it. Without begin, ready() does nothing. */
void prefopt_gradsync_begin(prefopt_gradsync *gs);
/* The model's grad-ready hook (model.h prefopt_grad_ready_fn): ctx is the prefopt_gradsync. */
void prefopt_gradsync_ready(void *ctx, size_t ready);
/* Starts the buckets not started yet (all of them without overlap), in order, and waits for every one. After it
 * the gradient (zero 0) or this rank's shard of it (zero 1) is the sum over the replicas. Collective over dp. */
void prefopt_gradsync_finish(prefopt_gradsync *gs);
/* zero 1: every rank's shard of params (same layout as the gradients) all-gathered over dp, so all replicas hold
 * the updated weights. zero 0: nothing. Collective over dp. */
void prefopt_gradsync_gather(prefopt_gradsync *gs, float *params);
/* The same gather overlapped with the next forward: start issues every bucket's MPI_Iallgatherv (last bucket
 * first); need (the model's param-need hook, ctx = the prefopt_gradsync) waits for the buckets holding flat
 * offsets >= lo, which is what forward is about to read; finish waits for all. Until finish (or a need(0)) the
 * weights must not be read outside the hooked forward. */
void prefopt_gradsync_gather_start(prefopt_gradsync *gs, float *params);
void prefopt_gradsync_need(void *ctx, size_t lo);
void prefopt_gradsync_gather_finish(prefopt_gradsync *gs);
void prefopt_gradsync_take_stats(prefopt_gradsync *gs, prefopt_gradsync_stats *st);

/* Gathers a shard-laid-out array (one value per element of this rank's shard, segments in order) into a full
 * flat array of n floats on every rank (zero 1, e.g. the AdamW moments for a checkpoint), and the reverse copy
 * of a full array's shard into a shard-laid-out one. Collective over dp (gather only). */
void prefopt_gradsync_gather_shards(prefopt_gradsync *gs, const float *shard, float *full);
void prefopt_gradsync_copy_shard(const prefopt_gradsync *gs, const float *full, float *shard);


#endif
