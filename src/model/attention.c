/* Causal self-attention with shared-prefix branches and grouped-query heads, entirely local: Q's block is the
 * (H/KV) query heads of one KV group and K/V's block is that group's head, so query group j and KV head j sit on
 * the same process column, and a sequence's tokens sit whole on one process row. Work is split over
 * (sequence, KV group) pairs, which write disjoint outputs: deterministic under OpenMP. */
#include "model_internal.h"
#include "pf_math.h"

#include <blis.h>
#include <math.h>
#include <string.h>

/* token j is visible from token i (both in the same row): causal, not padding, same branch or shared prefix,
 * and, in a sliding-window layer (window W > 0), fewer than W positions back. Positions rather than row indices:
 * a rejected branch's positions restart after the prompt, so its window is the one of its own unpacked sequence. */
static inline int visible(const int8_t *seg, const int32_t *pos, int W, int i, int j)
{
    return seg[j] >= 0 && (seg[j] == 0 || seg[j] == seg[i]) && (W <= 0 || pos[i] - pos[j] < W);
}

/* HF's scaling (query_pre_attn_scalar^-1/2 or D^-1/2), Gemma 2's attn_logit_softcapping, and the layer's window */
pf_attn_params pf_attn_params_of(const prefopt_model *m, int layer)
{
    const prefopt_model_config *c = &m->cfg;
    pf_attn_params a;
    a.scale = c->attn_scale > 0 ? c->attn_scale : 1.0f / sqrtf((float)c->head_dim);
    a.softcap = c->attn_softcap;
    a.window = c->sliding_window > 0 && (c->layer_flags[layer] & PREFOPT_LAYER_SLIDING) ? c->sliding_window : 0;
    return a;
}

/* cap tanh(s / cap), and its derivative 1 - tanh^2 when dcap is given */
static inline float softcap(float s, float cap, float *dcap)
{
    float t = tanhf(s / cap);
    if (dcap)
        *dcap = 1.0f - t * t;
    return cap * t;
}

/* copy n rows (from local row row0) of the D columns starting at local column c0 into a row-major n x D buffer */
static void load_rows(float *dst, const prefopt_dmat *x, int row0, int n, int c0, int D)
{
    for (int d = 0; d < D; d++) {
        const float *col = pf_at(x, row0, c0 + d);
        for (int i = 0; i < n; i++)
            dst[(size_t)i * D + d] = col[i];
    }
}

/* the T x D block of sequence s (and back) */
static void load_head(float *dst, const prefopt_dmat *x, int s, int T, int c0, int D) { load_rows(dst, x, s * T, T, c0, D); }

static void store_head(prefopt_dmat *x, const float *src, int s, int T, int c0, int D)
{
    for (int d = 0; d < D; d++) {
        float *col = pf_at(x, s * T, c0 + d);
        for (int i = 0; i < T; i++)
            col[i] = src[(size_t)i * D + d];
    }
}

/* C = alpha op(A) op(B) + beta C on row-major buffers (BLIS takes the strides directly) */
static void gemm_rm(int ta, int tb, int m, int n, int k, float alpha, const float *a, int lda, const float *b,
                    int ldb, float beta, float *c, int ldc)
{
    bli_sgemm(ta ? BLIS_TRANSPOSE : BLIS_NO_TRANSPOSE, tb ? BLIS_TRANSPOSE : BLIS_NO_TRANSPOSE, m, n, k, &alpha,
              (float *)a, lda, 1, (float *)b, ldb, 1, &beta, c, ldc, 1);
}

/* P = softmax over the visible keys of scale * Q K^T, written as exp(S - lse) so that backward recomputes the
 * identical P from Q, K and the saved per-row lse: only T floats per head are kept instead of T x T (the
 * flash-attention trade: one more Q K^T GEMM in backward). Scores and products are full T x T GEMMs (twice the
 * causal work, at GEMM speed); masked and padded entries become exact zeros. */
/* Row i of P from its scores (see probs). Inlined twice, with W = 0 a constant in the full-attention copy, so
 * that the windowless path (every Llama layer) compiles to the loop it was before windows existed. */
static inline __attribute__((always_inline)) void softmax_row(float *restrict Pi, const int8_t *restrict seg,
                                                              const int32_t *restrict pos, int W, int i, float *lse,
                                                              int fresh)
{
    if (fresh) {
        /* simd reductions: a fixed (vector-width) summation order, the same on every run and grid */
        float mx = -INFINITY, sum = 0;
#pragma omp simd reduction(max : mx)
        for (int j = 0; j <= i; j++)
            mx = visible(seg, pos, W, i, j) && Pi[j] > mx ? Pi[j] : mx; /* a select, not fmaxf: vectorises */
#pragma omp simd reduction(+ : sum)
        for (int j = 0; j <= i; j++)
            sum += visible(seg, pos, W, i, j) ? pf_exp(Pi[j] - mx) : 0.0f;
        lse[i] = mx + logf(sum); /* i sees itself, so sum >= 1 */
    }
    const float li = lse[i];
    /* the causal half only; restrict tells GCC the float stores cannot change the int8 mask, which it
     * otherwise reloads every iteration and does not vectorise */
    for (int j = 0; j <= i; j++)
        Pi[j] = visible(seg, pos, W, i, j) ? pf_exp(Pi[j] - li) : 0.0f;
}

/* P = softmax over the visible keys of scale * Q K^T, written as exp(S - lse) so that backward recomputes the
 * identical P from Q, K and the saved per-row lse: only T floats per head are kept instead of T x T (the
 * flash-attention trade: one more Q K^T GEMM in backward). Scores and products are full T x T GEMMs (twice the
 * causal work, at GEMM speed); masked and padded entries become exact zeros. The layer's parameters: the score
 * scale, Gemma 2's soft-cap (applied to the scores before mask and softmax; dcap, when given, receives
 * 1 - tanh^2 for backward), the sliding window. */
static void probs(float *restrict P, const float *qh, const float *kh, const int8_t *restrict seg,
                  const int32_t *restrict pos, const pf_attn_params *ap, int T, int D, float *lse, int fresh,
                  float *restrict dcap)
{
    const int W = ap->window;
    gemm_rm(0, 1, T, T, D, ap->scale, qh, D, kh, D, 0.0f, P, T);
    for (int i = 0; i < T; i++) {
        float *Pi = P + (size_t)i * T;
        if (seg[i] < 0) { /* padded query: zero output, zero gradients */
            memset(Pi, 0, sizeof(float) * T);
            continue;
        }
        if (ap->softcap > 0)
            for (int j = 0; j <= i; j++)
                Pi[j] = softcap(Pi[j], ap->softcap, dcap ? dcap + (size_t)i * T + j : NULL);
        if (W > 0)
            softmax_row(Pi, seg, pos, W, i, lse, fresh);
        else
            softmax_row(Pi, seg, pos, 0, i, lse, fresh);
        memset(Pi + i + 1, 0, sizeof(float) * (size_t)(T - i - 1));
    }
}

void pf_attention_forward(const prefopt_model *m, int layer, prefopt_dmat *y, float *att, const prefopt_dmat *q,
                          const prefopt_dmat *k, const prefopt_dmat *v)
{
    const int T = m->b.T, D = m->cfg.head_dim, G = m->cfg.num_heads / m->cfg.num_kv_heads;
    const int nkb = k->nloc / D, nseq = m->nloc_seq, npair = nseq * nkb;
    const pf_attn_params ap = pf_attn_params_of(m, layer);
#pragma omp parallel for schedule(dynamic)
    for (int pr = 0; pr < npair; pr++) {
        int s = pr / nkb, kb = pr % nkb;
        const int8_t *seg = m->b.seg + (size_t)pf_seq_row(m, s) * T;
        const int32_t *pos = m->b.pos + (size_t)pf_seq_row(m, s) * T;
        float *kh = prefopt_xmalloc(sizeof(float) * ((size_t)4 * T * D + (size_t)T * T), "attention scratch");
        float *vh = kh + T * D, *qh = vh + T * D, *oh = qh + T * D, *P = oh + T * D;
        load_head(kh, k, s, T, kb * D, D);
        load_head(vh, v, s, T, kb * D, D);
        for (int hh = 0; hh < G; hh++) {
            int c0 = kb * m->qnb + hh * D;
            load_head(qh, q, s, T, c0, D);
            probs(P, qh, kh, seg, pos, &ap, T, D, att + ((size_t)pr * G + hh) * T, 1, NULL);
            gemm_rm(0, 0, T, D, T, 1.0f, P, T, vh, D, 0.0f, oh, D);
            store_head(y, oh, s, T, c0, D);
        }
        free(kh);
    }
}

void pf_attention_backward(const prefopt_model *m, int layer, prefopt_dmat *dq, prefopt_dmat *dk, prefopt_dmat *dv,
                           const prefopt_dmat *dy, const float *att, const prefopt_dmat *q, const prefopt_dmat *k,
                           const prefopt_dmat *v)
{
    const int T = m->b.T, D = m->cfg.head_dim, G = m->cfg.num_heads / m->cfg.num_kv_heads;
    const int nkb = k->nloc / D, nseq = m->nloc_seq, npair = nseq * nkb;
    const pf_attn_params ap = pf_attn_params_of(m, layer);
    const float scale = ap.scale;
    const int capped = ap.softcap > 0;
#pragma omp parallel for schedule(dynamic)
    for (int pr = 0; pr < npair; pr++) {
        int s = pr / nkb, kb = pr % nkb;
        const int8_t *seg = m->b.seg + (size_t)pf_seq_row(m, s) * T;
        const int32_t *pos = m->b.pos + (size_t)pf_seq_row(m, s) * T;
        float *kh = prefopt_xmalloc(sizeof(float) * ((size_t)7 * T * D + (size_t)(2 + capped) * T * T),
                                    "attention scratch");
        float *vh = kh + T * D, *qh = vh + T * D, *doh = qh + T * D, *dqh = doh + T * D, *dkh = dqh + T * D;
        float *dvh = dkh + T * D, *dS = dvh + T * D, *P = dS + (size_t)T * T;
        float *dcap = capped ? P + (size_t)T * T : NULL; /* 1 - tanh^2 of the capped scores */
        load_head(kh, k, s, T, kb * D, D);
        load_head(vh, v, s, T, kb * D, D);
        memset(dkh, 0, sizeof(float) * 2 * T * D);
        for (int hh = 0; hh < G; hh++) {
            int c0 = kb * m->qnb + hh * D;
            load_head(qh, q, s, T, c0, D);
            load_head(doh, dy, s, T, c0, D);
            probs(P, qh, kh, seg, pos, &ap, T, D, (float *)att + ((size_t)pr * G + hh) * T, 0, dcap);
            gemm_rm(1, 0, T, D, T, 1.0f, P, T, doh, D, 1.0f, dvh, D);  /* dV += P^T dO */
            gemm_rm(0, 1, T, T, D, 1.0f, doh, D, vh, D, 0.0f, dS, T); /* dP = dO V^T */
            for (int i = 0; i < T; i++) { /* dS = P (dP - rowsum(P dP)); P is 0 above the diagonal */
                const float *Pi = P + (size_t)i * T;
                float *dSi = dS + (size_t)i * T, rowdot = 0;
                for (int j = 0; j <= i; j++)
                    rowdot += Pi[j] * dSi[j];
                for (int j = 0; j <= i; j++)
                    dSi[j] = Pi[j] * (dSi[j] - rowdot);
                if (capped) /* through the cap: d tanh */
                    for (int j = 0; j <= i; j++)
                        dSi[j] *= dcap[(size_t)i * T + j];
                memset(dSi + i + 1, 0, sizeof(float) * (size_t)(T - i - 1));
            }
            gemm_rm(0, 0, T, D, T, scale, dS, T, kh, D, 0.0f, dqh, D); /* dQ = scale dS K */
            gemm_rm(1, 0, T, D, T, scale, dS, T, qh, D, 1.0f, dkh, D); /* dK += scale dS^T Q */
            store_head(dq, dqh, s, T, c0, D);
        }
        store_head(dk, dkh, s, T, kb * D, D);
        store_head(dv, dvh, s, T, kb * D, D);
        free(kh);
    }
}

/* Decoding step: this step's rows are the new tokens of each sequence (valid ones first, then padding). Their
 * keys and values are appended to the layer's cache after the kv_len[r] cached ones; query i attends to cache
 * entries 0 .. kv_len[r] + i. */
void pf_attention_cached(prefopt_model *m, int layer, prefopt_dmat *y, const prefopt_dmat *q, const prefopt_dmat *k,
                         const prefopt_dmat *v)
{
    const int T = m->b.T, D = m->cfg.head_dim, G = m->cfg.num_heads / m->cfg.num_kv_heads, M = m->kv_max;
    const int nkb = k->nloc / D, nseq = m->nloc_seq, npair = nseq * nkb;
    const pf_attn_params ap = pf_attn_params_of(m, layer);
    const float scale = ap.scale;
#pragma omp parallel for schedule(dynamic)
    for (int pr = 0; pr < npair; pr++) {
        int s = pr / nkb, kb = pr % nkb, r = pf_seq_row(m, s), len = m->kv_len[r];
        const int8_t *seg = m->b.seg + (size_t)r * T;
        size_t base = ((((size_t)layer * m->kv_nseq + s) * m->kv_nkb + kb) * M) * D;
        float *kc = m->kv_k + base, *vc = m->kv_v + base;
        int nv = 0;
        while (nv < T && seg[nv] >= 0)
            nv++;
        float *tmp = prefopt_xmalloc(sizeof(float) * ((size_t)2 * T * D + (size_t)T * M + 1), "decode scratch");
        float *qh = tmp, *oh = qh + T * D, *S = oh + T * D;
        load_rows(kc + (size_t)len * D, k, s * T, nv, kb * D, D);
        load_rows(vc + (size_t)len * D, v, s * T, nv, kb * D, D);
        int ctx = len + nv;
        for (int hh = 0; hh < G; hh++) {
            int c0 = kb * m->qnb + hh * D;
            load_head(qh, q, s, T, c0, D);
            memset(oh, 0, sizeof(float) * T * D);
            if (nv > 0) {
                gemm_rm(0, 1, nv, ctx, D, scale, qh, D, kc, D, 0.0f, S, ctx);
                for (int i = 0; i < nv; i++) {
                    /* cache entry j holds position j: visible from position len + i when in the window */
                    float *Si = S + (size_t)i * ctx, mx = -INFINITY, sum = 0;
                    const int hi = len + i, lo = ap.window > 0 && hi - ap.window + 1 > 0 ? hi - ap.window + 1 : 0;
                    if (ap.softcap > 0)
                        for (int j = lo; j <= hi; j++)
                            Si[j] = softcap(Si[j], ap.softcap, NULL);
                    for (int j = lo; j <= hi; j++)
                        mx = fmaxf(mx, Si[j]);
                    for (int j = 0; j < ctx; j++) {
                        Si[j] = j >= lo && j <= hi ? pf_exp(Si[j] - mx) : 0.0f;
                        sum += Si[j];
                    }
                    for (int j = 0; j < ctx; j++)
                        Si[j] /= sum;
                }
                gemm_rm(0, 0, nv, D, ctx, 1.0f, S, ctx, vc, D, 0.0f, oh, D);
            }
            store_head(y, oh, s, T, c0, D);
        }
        free(tmp);
    }
}
