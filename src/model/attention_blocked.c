/* Blocked causal attention of one head (flash-attention 2, on CPU): queries and keys in blocks of PF_ATT_B rows;
 * forward keeps a running row maximum and sum and rescales its output accumulator (online softmax), so no T x T
 * score matrix exists, and saves the per-row logsumexp; backward recomputes each score block from Q, K and that
 * lse. A key block that no query of a query block sees is skipped whole (causality, padding, another branch of a
 * packed DPO row, outside the sliding window), decided from per-block ranges of seg and pos; blocks seen in full
 * skip the per-entry mask. Blocks are visited in a fixed order and nothing is shared between workers: the
 * result is a function of the inputs only (no thread or grid dependence). A bf16 row (pf_attn_row.bf16) makes
 * all seven block products with bf16 inputs and fp32 accumulation (attention_bf16.c); the softmax, its
 * statistics and every accumulator stay fp32. */
#include "attention_blocked.h"

#include "pf_math.h"
#include "prefopt/common.h"

#include <blis.h>
#include <math.h>
#include <string.h>

#define B PF_ATT_B

/* C = alpha op(A) op(B) + beta C on row-major buffers (BLIS takes the strides directly) */
static void gemm_rm(int ta, int tb, int m, int n, int k, float alpha, const float *a, int lda, const float *b,
                    int ldb, float beta, float *c, int ldc)
{
    bli_sgemm(ta ? BLIS_TRANSPOSE : BLIS_NO_TRANSPOSE, tb ? BLIS_TRANSPOSE : BLIS_NO_TRANSPOSE, m, n, k, &alpha,
              (float *)a, lda, 1, (float *)b, ldb, 1, &beta, c, ldc, 1);
}

/* The ranges of one block's non-padding tokens (n: how many; 0: the block is all padding). */
typedef struct {
    int n, segmin, segmax, posmin, posmax;
} block_range;

static block_range *block_ranges(const pf_attn_row *r, int nb)
{
    block_range *br = prefopt_xmalloc(sizeof(block_range) * (size_t)nb, "attention block ranges");
    for (int b = 0; b < nb; b++) {
        block_range x = {0, 127, -1, INT32_MAX, INT32_MIN};
        for (int i = b * B; i < r->T && i < (b + 1) * B; i++) {
            if (r->seg[i] < 0)
                continue;
            x.n++;
            x.segmin = r->seg[i] < x.segmin ? r->seg[i] : x.segmin;
            x.segmax = r->seg[i] > x.segmax ? r->seg[i] : x.segmax;
            x.posmin = r->pos[i] < x.posmin ? r->pos[i] : x.posmin;
            x.posmax = r->pos[i] > x.posmax ? r->pos[i] : x.posmax;
        }
        br[b] = x;
    }
    return br;
}

enum { SKIP, PARTIAL, FULL };

/* Which entries of query block qb x key block kb are visible (see visible() below), conservatively from the
 * blocks' ranges: SKIP only when none can be, FULL only when all must be. */
static int classify(const pf_attn_row *r, const block_range *br, int qb, int kb)
{
    const block_range *q = br + qb, *k = br + kb;
    const int nq = (qb + 1) * B <= r->T ? B : r->T - qb * B, nk = (kb + 1) * B <= r->T ? B : r->T - kb * B;
    if (kb > qb || q->n == 0 || k->n == 0)
        return SKIP; /* after the query block (causal), or all padding */
    if (k->segmin > 0 && (k->segmax < q->segmin || k->segmin > q->segmax))
        return SKIP; /* no shared-prefix key and no branch in common */
    if (r->window > 0 && (int64_t)q->posmin - k->posmax >= r->window)
        return SKIP; /* every key outside every query's window */
    const int same_branch = k->segmax == 0 || (k->segmin == k->segmax && q->segmin == q->segmax && q->segmin == k->segmin);
    if (kb < qb && q->n == nq && k->n == nk && same_branch &&
        (r->window <= 0 || (int64_t)q->posmax - k->posmin < r->window))
        return FULL;
    return PARTIAL;
}

/* token j visible from token i: causal, neither padding, same branch or shared prefix, inside the window */
static inline int visible(const pf_attn_row *r, int i, int j)
{
    const int8_t *seg = r->seg;
    return j <= i && seg[i] >= 0 && seg[j] >= 0 && (seg[j] == 0 || seg[j] == seg[i]) &&
           (r->window <= 0 || r->pos[i] - r->pos[j] < r->window);
}

/* The bf16 operand forms of one head (attention_bf16.c names them): Tp = T rounded up to the block, Dh = D / 2
 * pairs, Dn = D rounded up to 16. Read in place by every block product. The forms of K and V come first in the
 * work buffer and are made only when the caller says K and V changed (kv_new): the G query heads of a KV group
 * share them. */
typedef struct {
    int Tp, Dh, Dn;
    uint32_t *q, *kt;        /* R(Q): T x Dh; W(K): Dh x Tp (the B operand of S = Q K^T) */
    uint32_t *vp;            /* forward: P(V): Tp/2 x Dn (O += P V) */
    uint32_t *vt, *dor, *dop; /* backward: W(V) (dP = dO V^T); R(dO); P(dO) (dV += P^T dO) */
    uint32_t *qp, *kp;       /* backward: P(Q) (dK += dS^T Q), P(K) (dQ += dS K) */
    uint32_t *blk_r, *blk_p; /* a block's probabilities or dS: R(.) B x B/2, P(.) B/2 x B */
} bf16_forms;

static int tp_of(int T) { return (T + B - 1) / B * B; }
static int dn_of(int D) { return (D + 15) / 16 * 16; }

/* words of forms: forward W(K), P(V), R(Q), the R(.) that W(.) is made from, the block's R(P); backward W(K),
 * W(V), P(K), R(Q), R(dO), P(dO), P(Q), the R(.) source, the block's R(.) and P(.) */
static size_t bf16_fwd_words(const pf_attn_row *r)
{
    const size_t Tp = tp_of(r->T), Dh = r->D / 2, Dn = dn_of(r->D);
    return 3 * Tp * Dh + Tp / 2 * Dn + (size_t)B * B / 2;
}

static size_t bf16_bwd_words(const pf_attn_row *r)
{
    const size_t Tp = tp_of(r->T), Dh = r->D / 2, Dn = dn_of(r->D);
    return 5 * Tp * Dh + 3 * (Tp / 2 * Dn) + (size_t)2 * B * B / 2;
}

/* W(X) of the T x D X, through its R(X) in tmp */
static void bf16_words_t_of(const bf16_forms *f, const pf_attn_row *r, uint32_t *dst, const float *x, uint32_t *tmp)
{
    pf_bf16_rows(tmp, f->Dh, x, r->D, r->T, r->D, r->T);
    pf_bf16_words_t(dst, f->Tp, tmp, f->Dh, r->T, f->Dh);
}

/* S = scale Q_i K_j^T of the nq x nk block (leading dimension B), soft-capped (dcap, when given, receives
 * 1 - tanh^2 for backward), invisible entries -inf in a PARTIAL block */
static void score_block(const pf_attn_row *r, const bf16_forms *f, const float *q, const float *k, int i0, int nq,
                        int j0, int nk, int cls, float *restrict S, float *restrict dcap)
{
    const int D = r->D;
    if (r->bf16)
        pf_bf16_gemm(nq, nk, f->Dh, r->scale, f->q + (size_t)i0 * f->Dh, f->Dh, 1, f->kt + j0, f->Tp, 0.0f, S, B);
    else
        gemm_rm(0, 1, nq, nk, D, r->scale, q + (size_t)i0 * D, D, k + (size_t)j0 * D, D, 0.0f, S, B);
    if (r->softcap > 0) {
        const float cap = r->softcap, inv = 1.0f / cap;
        for (int a = 0; a < nq; a++)
            for (int b = 0; b < nk; b++) {
                float t = tanhf(S[a * B + b] * inv);
                S[a * B + b] = cap * t;
                if (dcap)
                    dcap[a * B + b] = 1.0f - t * t;
            }
    }
    if (cls == PARTIAL)
        for (int a = 0; a < nq; a++)
            for (int b = 0; b < nk; b++)
                if (!visible(r, i0 + a, j0 + b))
                    S[a * B + b] = -INFINITY;
}

size_t pf_attn_fwd_work(const pf_attn_row *r)
{
    /* S; row max and sum; the bf16 forms (one word a float) */
    return (size_t)B * B + 2 * B + (r->bf16 ? bf16_fwd_words(r) : 0);
}

size_t pf_attn_bwd_work(const pf_attn_row *r)
{
    /* S (then P), dP (then dS), dcap; rowsum(dO o O); the bf16 forms */
    return (size_t)3 * B * B + (size_t)r->T + (r->bf16 ? bf16_bwd_words(r) : 0);
}

void pf_attn_forward_head(const pf_attn_row *r, const float *q, const float *k, const float *v, float *o,
                          float *lse, float *work, int kv_new)
{
    const int T = r->T, D = r->D, nb = (T + B - 1) / B;
    float *S = work, *mx = S + (size_t)B * B, *sum = mx + B;
    bf16_forms f = {0};
    if (r->bf16) {
        f.Tp = tp_of(T), f.Dh = D / 2, f.Dn = dn_of(D);
        const size_t rows = (size_t)T * f.Dh;
        uint32_t *w = (uint32_t *)(sum + B), *tmp;
        f.kt = w, w += (size_t)f.Dh * f.Tp;
        f.vp = w, w += (size_t)f.Tp / 2 * f.Dn;
        f.q = w, w += rows;
        tmp = w, w += rows;
        f.blk_r = w;
        if (kv_new) {
            bf16_words_t_of(&f, r, f.kt, k, tmp);
            pf_bf16_pairs(f.vp, f.Dn, v, D, T, D, f.Tp / 2);
        }
        pf_bf16_rows(f.q, f.Dh, q, D, T, D, T);
    }
    block_range *br = block_ranges(r, nb);
    memset(o, 0, sizeof(float) * (size_t)T * D); /* the accumulator, then the output */
    for (int qb = 0; qb < nb; qb++) {
        const int i0 = qb * B, nq = i0 + B <= T ? B : T - i0;
        float *oq = o + (size_t)i0 * D;
        for (int a = 0; a < nq; a++)
            mx[a] = -INFINITY, sum[a] = 0.0f;
        for (int kb = 0; kb <= qb; kb++) {
            const int cls = classify(r, br, qb, kb);
            if (cls == SKIP)
                continue;
            const int j0 = kb * B, nk = j0 + B <= T ? B : T - j0;
            score_block(r, &f, q, k, i0, nq, j0, nk, cls, S, NULL);
            for (int a = 0; a < nq; a++) {
                float *restrict Sa = S + (size_t)a * B, m = -INFINITY, s = 0.0f;
                /* simd reductions: a fixed (vector-width) summation order, the same on every run and grid */
#pragma omp simd reduction(max : m)
                for (int b = 0; b < nk; b++)
                    m = Sa[b] > m ? Sa[b] : m; /* a select, not fmaxf: vectorises */
                const float mnew = m > mx[a] ? m : mx[a];
                if (mnew == -INFINITY) { /* nothing visible yet in this row: contributes nothing */
                    memset(Sa, 0, sizeof(float) * (size_t)nk);
                    continue;
                }
#pragma omp simd reduction(+ : s)
                for (int b = 0; b < nk; b++) {
                    Sa[b] = Sa[b] > -INFINITY ? pf_exp(Sa[b] - mnew) : 0.0f;
                    s += Sa[b];
                }
                if (mnew > mx[a]) { /* rescale what was accumulated under the old maximum */
                    const float c = mx[a] == -INFINITY ? 0.0f : pf_exp(mx[a] - mnew);
                    sum[a] *= c;
                    for (int d = 0; d < D; d++)
                        oq[(size_t)a * D + d] *= c;
                    mx[a] = mnew;
                }
                sum[a] += s;
            }
            if (r->bf16) { /* O_i += P V_j */
                pf_bf16_rows(f.blk_r, B / 2, S, B, nq, nk, nq);
                pf_bf16_gemm(nq, D, (nk + 1) / 2, 1.0f, f.blk_r, B / 2, 1, f.vp + (size_t)j0 / 2 * f.Dn, f.Dn, 1.0f,
                             oq, D);
            } else
                gemm_rm(0, 0, nq, D, nk, 1.0f, S, B, v + (size_t)j0 * D, D, 1.0f, oq, D);
        }
        for (int a = 0; a < nq; a++) {
            if (sum[a] > 0) { /* a query sees itself: every non-padding row */
                const float inv = 1.0f / sum[a];
                for (int d = 0; d < D; d++)
                    oq[(size_t)a * D + d] *= inv;
                lse[i0 + a] = mx[a] + logf(sum[a]);
            } else
                lse[i0 + a] = 0.0f; /* padding: output 0 (never accumulated), gradients 0 */
        }
    }
    free(br);
}

void pf_attn_backward_head(const pf_attn_row *r, const float *q, const float *k, const float *v, const float *o,
                           const float *dout, const float *lse, float *dq, float *dk, float *dv, float *work,
                           int kv_new)
{
    const int T = r->T, D = r->D, nb = (T + B - 1) / B;
    float *P = work, *dS = P + (size_t)B * B, *dcap = dS + (size_t)B * B, *Dr = dcap + (size_t)B * B;
    const int capped = r->softcap > 0;
    bf16_forms f = {0};
    if (r->bf16) {
        f.Tp = tp_of(T), f.Dh = D / 2, f.Dn = dn_of(D);
        const size_t pairs = (size_t)f.Tp / 2 * f.Dn, rows = (size_t)T * f.Dh;
        uint32_t *w = (uint32_t *)(Dr + T), *tmp;
        f.kt = w, w += (size_t)f.Dh * f.Tp;
        f.vt = w, w += (size_t)f.Dh * f.Tp;
        f.kp = w, w += pairs;
        f.q = w, w += rows;
        f.dor = w, w += rows;
        f.dop = w, w += pairs;
        f.qp = w, w += pairs;
        tmp = w, w += rows;
        f.blk_r = w, w += (size_t)B * B / 2;
        f.blk_p = w; /* P(P) for dV, then P(dS) for dK */
        if (kv_new) {
            bf16_words_t_of(&f, r, f.kt, k, tmp);
            bf16_words_t_of(&f, r, f.vt, v, tmp);
            pf_bf16_pairs(f.kp, f.Dn, k, D, T, D, f.Tp / 2);
        }
        pf_bf16_rows(f.q, f.Dh, q, D, T, D, T);
        pf_bf16_rows(f.dor, f.Dh, dout, D, T, D, T);
        pf_bf16_pairs(f.dop, f.Dn, dout, D, T, D, f.Tp / 2);
        pf_bf16_pairs(f.qp, f.Dn, q, D, T, D, f.Tp / 2);
    }
    block_range *br = block_ranges(r, nb);
    for (int i = 0; i < T; i++) { /* D_i = rowsum(dO_i o O_i) = sum_j P_ij dP_ij */
        float s = 0.0f;
        for (int d = 0; d < D; d++)
            s += dout[(size_t)i * D + d] * o[(size_t)i * D + d];
        Dr[i] = s;
    }
    memset(dq, 0, sizeof(float) * (size_t)T * D);
    /* key blocks outside, query blocks inside: dK_j and dV_j complete in one pass; dQ_i accumulates over the key
     * blocks in increasing order (fixed: deterministic) */
    for (int kb = 0; kb < nb; kb++) {
        const int j0 = kb * B, nk = j0 + B <= T ? B : T - j0;
        for (int qb = kb; qb < nb; qb++) {
            const int cls = classify(r, br, qb, kb);
            if (cls == SKIP)
                continue;
            const int i0 = qb * B, nq = i0 + B <= T ? B : T - i0;
            score_block(r, &f, q, k, i0, nq, j0, nk, cls, P, capped ? dcap : NULL);
            for (int a = 0; a < nq; a++) { /* P = exp(S - lse): the forward's probabilities */
                float *restrict Pa = P + (size_t)a * B;
                const float l = lse[i0 + a];
                for (int b = 0; b < nk; b++)
                    Pa[b] = Pa[b] > -INFINITY ? pf_exp(Pa[b] - l) : 0.0f;
            }
            const float *doq = dout + (size_t)i0 * D, *qq = q + (size_t)i0 * D;
            const int qpairs = (nq + 1) / 2, kpairs = (nk + 1) / 2;
            if (r->bf16) {
                pf_bf16_pairs(f.blk_p, B, P, B, nq, nk, qpairs); /* read with row stride 1: P^T */
                pf_bf16_gemm(nk, D, qpairs, 1.0f, f.blk_p, 1, B, f.dop + (size_t)i0 / 2 * f.Dn, f.Dn, 1.0f,
                             dv + (size_t)j0 * D, D);
                pf_bf16_gemm(nq, nk, f.Dh, 1.0f, f.dor + (size_t)i0 * f.Dh, f.Dh, 1, f.vt + j0, f.Tp, 0.0f, dS, B);
            } else {
                gemm_rm(1, 0, nk, D, nq, 1.0f, P, B, doq, D, 1.0f, dv + (size_t)j0 * D, D);    /* dV_j += P^T dO_i */
                gemm_rm(0, 1, nq, nk, D, 1.0f, doq, D, v + (size_t)j0 * D, D, 0.0f, dS, B); /* dP = dO_i V_j^T */
            }
            for (int a = 0; a < nq; a++) { /* dS = P (dP - D_i), through the cap: d tanh */
                float *restrict dSa = dS + (size_t)a * B;
                const float *restrict Pa = P + (size_t)a * B, *restrict ca = dcap + (size_t)a * B;
                const float Di = Dr[i0 + a];
                if (capped)
                    for (int b = 0; b < nk; b++)
                        dSa[b] = Pa[b] * (dSa[b] - Di) * ca[b];
                else
                    for (int b = 0; b < nk; b++)
                        dSa[b] = Pa[b] * (dSa[b] - Di);
            }
            if (r->bf16) {
                pf_bf16_pairs(f.blk_p, B, dS, B, nq, nk, qpairs);
                pf_bf16_gemm(nk, D, qpairs, r->scale, f.blk_p, 1, B, f.qp + (size_t)i0 / 2 * f.Dn, f.Dn, 1.0f,
                             dk + (size_t)j0 * D, D);
                pf_bf16_rows(f.blk_r, B / 2, dS, B, nq, nk, nq);
                pf_bf16_gemm(nq, D, kpairs, r->scale, f.blk_r, B / 2, 1, f.kp + (size_t)j0 / 2 * f.Dn, f.Dn, 1.0f,
                             dq + (size_t)i0 * D, D);
            } else {
                gemm_rm(1, 0, nk, D, nq, r->scale, dS, B, qq, D, 1.0f, dk + (size_t)j0 * D, D); /* dK_j += s dS^T Q_i */
                gemm_rm(0, 0, nq, D, nk, r->scale, dS, B, k + (size_t)j0 * D, D, 1.0f, dq + (size_t)i0 * D, D); /* dQ_i */
            }
        }
    }
    free(br);
}
