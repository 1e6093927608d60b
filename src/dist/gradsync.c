/* Bucketed data-parallel gradient reduction overlapped with backward by polling, the distributed optimizer's
 * reduce-scatter and all-gather, and bf16 communication with fp32 sums (see gradsync.h). */
#include "prefopt/gradsync.h"
#include "prefopt/gemm_local.h"

#include "prefopt/common.h"
#include "prefopt/regions.h"

#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum { B_IDLE, B_P1, B_P1DONE, B_P2, B_DONE };

typedef struct {
    size_t lo, nb;
    int *cnt, *off;   /* [dp] each rank's shard of the bucket: count and offset inside it */
    int *rcnt, *roff; /* [dp] bf16 all-to-all receive counts and offsets (kept: the collective is nonblocking) */
    size_t rs_off;    /* offset of my shard's receive area (fp32 reduce-scatter: in rs; bf16: in rbuf / dp) */
    int state;
    MPI_Request req;
} bucket;

struct prefopt_gradsync {
    float *g;
    size_t n;
    MPI_Comm ca, cb; /* first phases (all-reduce, reduce-scatter, all-to-all); bf16 all-gather and weight gather */
    int dp, rank;
    prefopt_gradsync_opts o;
    int nb;
    bucket *bk;
    int next_start, next_p2, armed, early;
    size_t *seg_off, *seg_cnt;
    int nseg;
    float *rs;          /* zero 1, fp32: my shards' receive buffer */
    uint16_t *sbuf;     /* bf16: [n] what I send, then (zero 0) the gathered reduced bucket */
    uint16_t *rbuf;     /* bf16: the dp copies of my shard of each bucket */
    MPI_Request *greq;  /* weight gather requests [nb] */
    int gathering;      /* 1 while a deferred weight gather is outstanding (gather_start) */
    int gather_next;    /* the deferred gather's buckets >= this one are complete (waited last to first) */
    double t_exposed, t_finish, t_gather;
};


prefopt_gradsync *prefopt_gradsync_create(float *grads, size_t n, const size_t *bounds, int nbounds, MPI_Comm dp,
                                          const prefopt_gradsync_opts *o)
{
    prefopt_gradsync *gs = prefopt_xcalloc(1, sizeof *gs, "gradient sync");
    gs->g = grads;
    gs->n = n;
    gs->o = *o;
    if (!gs->o.bucket_floats)
        gs->o.bucket_floats = (size_t)8 << 20;
    MPI_Comm_size(dp, &gs->dp);
    MPI_Comm_rank(dp, &gs->rank);
    MPI_Comm_dup(dp, &gs->ca);
    MPI_Comm_dup(dp, &gs->cb);
    const int D = gs->dp;
    gs->bk = prefopt_xcalloc((size_t)nbounds + 1, sizeof *gs->bk, "gradient buckets");
    size_t lo = 0, rs = 0;
    for (int i = 0; i < nbounds; i++) {
        size_t hi = bounds[i];
        if (hi < lo || hi > n || (i == nbounds - 1 && hi != n))
            prefopt_die("gradient sync: boundary %zu out of order (after %zu, buffer %zu)", hi, lo, n);
        if (hi == lo || (hi - lo < gs->o.bucket_floats && hi != n))
            continue;
        if (hi - lo > (size_t)INT_MAX)
            prefopt_die("gradient sync: a bucket of %zu floats exceeds MPI's int counts", hi - lo);
        bucket *b = &gs->bk[gs->nb++];
        b->lo = lo;
        b->nb = hi - lo;
        b->cnt = prefopt_xmalloc(sizeof(int) * 4 * (size_t)D, "bucket shards");
        b->off = b->cnt + D;
        b->rcnt = b->off + D;
        b->roff = b->rcnt + D;
        int q = (int)(b->nb / (size_t)D), rem = (int)(b->nb % (size_t)D), pos = 0;
        for (int r = 0; r < D; r++) {
            b->cnt[r] = q + (r < rem);
            b->off[r] = pos;
            pos += b->cnt[r];
        }
        for (int r = 0; r < D; r++) {
            b->rcnt[r] = b->cnt[gs->rank];
            b->roff[r] = r * b->cnt[gs->rank];
        }
        b->rs_off = rs;
        rs += (size_t)b->cnt[gs->rank];
        lo = hi;
    }
    const int sharded = gs->o.zero && D > 1;
    gs->nseg = sharded ? gs->nb : 1;
    gs->seg_off = prefopt_xcalloc((size_t)gs->nseg + 1, sizeof *gs->seg_off, "shard");
    gs->seg_cnt = prefopt_xcalloc((size_t)gs->nseg + 1, sizeof *gs->seg_cnt, "shard");
    if (sharded)
        for (int i = 0; i < gs->nb; i++) {
            gs->seg_off[i] = gs->bk[i].lo + (size_t)gs->bk[i].off[gs->rank];
            gs->seg_cnt[i] = (size_t)gs->bk[i].cnt[gs->rank];
        }
    else
        gs->seg_cnt[0] = n;
    if (D > 1) {
        if (gs->o.bf16) {
            gs->sbuf = prefopt_xmalloc(sizeof(uint16_t) * (n + 1), "bf16 gradient send buffer");
            gs->rbuf = prefopt_xmalloc(sizeof(uint16_t) * (rs * (size_t)D + 1), "bf16 gradient receive buffer");
        } else if (gs->o.zero)
            gs->rs = prefopt_xmalloc(sizeof(float) * (rs + 1), "reduce-scatter receive buffer");
        gs->greq = prefopt_xmalloc(sizeof(MPI_Request) * ((size_t)gs->nb + 1), "gather requests");
    }
    return gs;
}

void prefopt_gradsync_free(prefopt_gradsync *gs)
{
    if (!gs)
        return;
    prefopt_gradsync_gather_finish(gs);
    for (int i = 0; i < gs->nb; i++)
        free(gs->bk[i].cnt);
    free(gs->bk);
    free(gs->seg_off);
    free(gs->seg_cnt);
    free(gs->rs);
    free(gs->sbuf);
    free(gs->rbuf);
    free(gs->greq);
    MPI_Comm_free(&gs->ca);
    MPI_Comm_free(&gs->cb);
    free(gs);
}

int prefopt_gradsync_nbuckets(const prefopt_gradsync *gs) { return gs->nb; }

int prefopt_gradsync_shard(const prefopt_gradsync *gs, const size_t **offset, const size_t **count)
{
    *offset = gs->seg_off;
    *count = gs->seg_cnt;
    return gs->nseg;
}

double prefopt_gradsync_extra_bytes(size_t n, int dp, int zero, int bf16)
{
    if (dp <= 1)
        return 0;
    if (bf16)
        return 4.0 * (double)n;
    return zero ? 4.0 * (double)n / dp : 0;
}

/* ---- the buckets' collectives -------------------------------------------------------------------------- */

/* Region "bucket N" holds the start of bucket N's collective (inside backward with overlap, else inside the
 * caller's grad_reduce) and, in finish, its completion: the trace and the region timers show each bucket's
 * reduction where it happens. Nonblocking polls (MPI_Test during backward) stay outside any bucket region, so
 * the regions' counts do not depend on timing: one start and one completion per bucket per step. */
static void start(prefopt_gradsync *gs, bucket *b)
{
    prefopt_region_enter_n("bucket", (int)(b - gs->bk));
    float *g = gs->g + b->lo;
    if (gs->o.bf16) {
        uint16_t *s = gs->sbuf + b->lo;
        for (size_t i = 0; i < b->nb; i++)
            s[i] = prefopt_bf16_round(g[i]);
        MPI_Ialltoallv(s, b->cnt, b->off, MPI_UINT16_T, gs->rbuf + b->rs_off * (size_t)gs->dp, b->rcnt, b->roff,
                       MPI_UINT16_T, gs->ca, &b->req);
    } else if (gs->o.zero) {
        MPI_Ireduce_scatter(g, gs->rs + b->rs_off, b->cnt, MPI_FLOAT, MPI_SUM, gs->ca, &b->req);
    } else {
        MPI_Iallreduce(MPI_IN_PLACE, g, (int)b->nb, MPI_FLOAT, MPI_SUM, gs->ca, &b->req);
    }
    b->state = B_P1;
    prefopt_region_exit("bucket");
}

static void complete_p1(prefopt_gradsync *gs, bucket *b)
{
    const int me = gs->rank, c = b->cnt[me];
    float *mine = gs->g + b->lo + b->off[me];
    if (gs->o.bf16) {
        /* the owner's fp32 sum of the dp bf16 copies, in rank order */
        const uint16_t *r = gs->rbuf + b->rs_off * (size_t)gs->dp;
        for (int i = 0; i < c; i++) {
            float s = 0;
            for (int q = 0; q < gs->dp; q++)
                s += prefopt_bf16_value(r[(size_t)q * c + i]);
            if (gs->o.zero)
                mine[i] = s;
            else
                gs->sbuf[b->lo + b->off[me] + i] = prefopt_bf16_round(s);
        }
        b->state = gs->o.zero ? B_DONE : B_P1DONE;
        return;
    }
    if (gs->o.zero)
        memcpy(mine, gs->rs + b->rs_off, sizeof(float) * (size_t)c);
    b->state = B_DONE;
}

static void launch_p2(prefopt_gradsync *gs, bucket *b)
{
    MPI_Iallgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, gs->sbuf + b->lo, b->cnt, b->off, MPI_UINT16_T, gs->cb,
                    &b->req);
    b->state = B_P2;
}

static void complete_p2(prefopt_gradsync *gs, bucket *b)
{
    float *g = gs->g + b->lo;
    const uint16_t *s = gs->sbuf + b->lo;
    for (size_t i = 0; i < b->nb; i++)
        g[i] = prefopt_bf16_value(s[i]);
    b->state = B_DONE;
}

/* Tests (or, blocking, waits for) the outstanding collectives in bucket order; second phases start in bucket
 * order only, so every rank issues them on cb in the same sequence. */
static void progress(prefopt_gradsync *gs, int blocking)
{
    for (int i = 0; i < gs->next_start; i++) {
        bucket *b = &gs->bk[i];
        if (blocking)
            prefopt_region_enter_n("bucket", i);
        for (;;) {
            if (b->state == B_P1DONE) {
                if (gs->next_p2 != i)
                    break;
                launch_p2(gs, b);
                gs->next_p2++;
            }
            if (b->state != B_P1 && b->state != B_P2)
                break;
            int flag = 1;
            if (blocking)
                MPI_Wait(&b->req, MPI_STATUS_IGNORE);
            else
                MPI_Test(&b->req, &flag, MPI_STATUS_IGNORE);
            if (!flag)
                break;
            if (b->state == B_P1)
                complete_p1(gs, b);
            else
                complete_p2(gs, b);
        }
        if (blocking)
            prefopt_region_exit("bucket");
    }
}

void prefopt_gradsync_begin(prefopt_gradsync *gs) { gs->armed = gs->o.overlap && gs->dp > 1; }

void prefopt_gradsync_ready(void *ctx, size_t ready)
{
    prefopt_gradsync *gs = ctx;
    if (!gs->armed)
        return;
    double t0 = MPI_Wtime();
    while (gs->next_start < gs->nb && gs->bk[gs->next_start].lo + gs->bk[gs->next_start].nb <= ready)
        start(gs, &gs->bk[gs->next_start++]);
    progress(gs, 0);
    gs->t_exposed += MPI_Wtime() - t0;
}

void prefopt_gradsync_finish(prefopt_gradsync *gs)
{
    gs->armed = 0;
    if (gs->dp <= 1)
        return;
    double t0 = MPI_Wtime();
    gs->early = gs->next_start;
    while (gs->next_start < gs->nb)
        start(gs, &gs->bk[gs->next_start++]);
    progress(gs, 1);
    for (int i = 0; i < gs->nb; i++)
        gs->bk[i].state = B_IDLE;
    gs->next_start = gs->next_p2 = 0;
    double dt = MPI_Wtime() - t0;
    gs->t_exposed += dt;
    gs->t_finish += dt;
}

/* The buckets' all-gathers go out last bucket first: the next forward needs the embeddings (the end of the flat
 * buffer) first and the head (its start) last. */
void prefopt_gradsync_gather_start(prefopt_gradsync *gs, float *params)
{
    if (!gs->o.zero || gs->dp <= 1)
        return;
    prefopt_gradsync_gather_finish(gs);
    double t0 = MPI_Wtime();
    for (int i = gs->nb - 1; i >= 0; i--)
        MPI_Iallgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, params + gs->bk[i].lo, gs->bk[i].cnt, gs->bk[i].off,
                        MPI_FLOAT, gs->cb, &gs->greq[i]);
    gs->gathering = 1;
    gs->gather_next = gs->nb;
    gs->t_gather += MPI_Wtime() - t0;
}

void prefopt_gradsync_need(void *ctx, size_t lo)
{
    prefopt_gradsync *gs = ctx;
    if (!gs->gathering)
        return;
    double t0 = MPI_Wtime();
    while (gs->gather_next > 0 && gs->bk[gs->gather_next - 1].lo + gs->bk[gs->gather_next - 1].nb > lo) {
        gs->gather_next--;
        MPI_Wait(&gs->greq[gs->gather_next], MPI_STATUS_IGNORE);
    }
    if (gs->gather_next == 0)
        gs->gathering = 0;
    else if (gs->gather_next < gs->nb) {
        int flag; /* a chance for the rest to progress */
        MPI_Testall(gs->gather_next, gs->greq, &flag, MPI_STATUSES_IGNORE);
        if (flag)
            gs->gather_next = 0, gs->gathering = 0;
    }
    gs->t_gather += MPI_Wtime() - t0;
}

void prefopt_gradsync_gather_finish(prefopt_gradsync *gs) { prefopt_gradsync_need(gs, 0); }

void prefopt_gradsync_gather(prefopt_gradsync *gs, float *params)
{
    prefopt_gradsync_gather_start(gs, params);
    prefopt_gradsync_gather_finish(gs);
}

void prefopt_gradsync_take_stats(prefopt_gradsync *gs, prefopt_gradsync_stats *st)
{
    st->exposed = gs->t_exposed;
    st->finish = gs->t_finish;
    st->gather = gs->t_gather;
    st->nbuckets = gs->nb;
    st->early = gs->early;
    gs->t_exposed = gs->t_finish = gs->t_gather = 0;
}

void prefopt_gradsync_gather_shards(prefopt_gradsync *gs, const float *shard, float *full)
{
    size_t pos = 0;
    for (int s = 0; s < gs->nseg; s++) {
        memcpy(full + gs->seg_off[s], shard + pos, sizeof(float) * gs->seg_cnt[s]);
        pos += gs->seg_cnt[s];
    }
    if (gs->o.zero && gs->dp > 1) {
        double keep = gs->t_gather; /* a checkpoint's gather is not a step's */
        prefopt_gradsync_gather(gs, full);
        gs->t_gather = keep;
    }
}

void prefopt_gradsync_copy_shard(const prefopt_gradsync *gs, const float *full, float *shard)
{
    size_t pos = 0;
    for (int s = 0; s < gs->nseg; s++) {
        memcpy(shard + pos, full + gs->seg_off[s], sizeof(float) * gs->seg_cnt[s]);
        pos += gs->seg_cnt[s];
    }
}
