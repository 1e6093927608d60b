/* Causal self-attention with shared-prefix branches and grouped-query heads, entirely local: Q's block is the
 * (H/KV) query heads of one KV group and K/V's block is that group's head, so query group j and KV head j sit on
 * the same process column, and a sequence's tokens sit whole on one process row. Work is split over
 * (sequence, KV group) pairs, which write disjoint outputs: deterministic under OpenMP. */
#include "attention_blocked.h"
#include "model_internal.h"
#include "pf_math.h"

#include <blis.h>
#include <math.h>
#include <string.h>

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

/* the kernel's view of sequence s under layer's parameters */
static pf_attn_row row_of(const prefopt_model *m, const pf_attn_params *ap, int s)
{
    pf_attn_row r;
    r.T = m->b.T;
    r.D = m->cfg.head_dim;
    r.seg = m->b.seg + (size_t)pf_seq_row(m, s) * r.T;
    r.pos = m->b.pos + (size_t)pf_seq_row(m, s) * r.T;
    r.scale = ap->scale;
    r.softcap = ap->softcap;
    r.window = ap->window;
    /* a bf16 model's attention products in bf16 too, where the CPU has the dot-product instruction */
    r.bf16 = m->opt.bf16 && r.D % 2 == 0 && pf_attn_bf16_available();
    return r;
}

size_t prefopt_attention_scratch_floats(const prefopt_model_config *cfg, int64_t T, int bf16)
{
    pf_attn_row r = {(int)T, cfg->head_dim, NULL, NULL, 0.0f, 0.0f, 0, bf16 && cfg->head_dim % 2 == 0};
    const size_t TD = (size_t)T * cfg->head_dim, fwd = 4 * TD + pf_attn_fwd_work(&r), bwd = 8 * TD + pf_attn_bwd_work(&r);
    return fwd > bwd ? fwd : bwd;
}

int prefopt_attention_bf16_kernel(void) { return pf_attn_bf16_available(); }

/* Per (sequence, KV group) worker: the group's K and V heads, one query head at a time, and the blocked kernel
 * (attention_blocked.c): scratch O(T x D + B x B) per worker, never T x T. Only the per-row lse is kept for
 * backward (T floats per head). */
void pf_attention_forward(const prefopt_model *m, int layer, prefopt_dmat *y, float *att, const prefopt_dmat *q,
                          const prefopt_dmat *k, const prefopt_dmat *v)
{
    const int T = m->b.T, D = m->cfg.head_dim, G = m->cfg.num_heads / m->cfg.num_kv_heads;
    const int nkb = k->nloc / D, nseq = m->nloc_seq, npair = nseq * nkb;
    const pf_attn_params ap = pf_attn_params_of(m, layer);
#pragma omp parallel for schedule(dynamic)
    for (int pr = 0; pr < npair; pr++) {
        int s = pr / nkb, kb = pr % nkb;
        const pf_attn_row r = row_of(m, &ap, s);
        float *kh = prefopt_xmalloc(sizeof(float) * ((size_t)4 * T * D + pf_attn_fwd_work(&r)), "attention scratch");
        float *vh = kh + (size_t)T * D, *qh = vh + (size_t)T * D, *oh = qh + (size_t)T * D, *work = oh + (size_t)T * D;
        load_head(kh, k, s, T, kb * D, D);
        load_head(vh, v, s, T, kb * D, D);
        for (int hh = 0; hh < G; hh++) {
            int c0 = kb * m->qnb + hh * D;
            load_head(qh, q, s, T, c0, D);
            pf_attn_forward_head(&r, qh, kh, vh, oh, att + ((size_t)pr * G + hh) * T, work, hh == 0);
            store_head(y, oh, s, T, c0, D);
        }
        free(kh);
    }
}

/* y: the forward's output (backward's rowsum(dO o O) needs it) */
void pf_attention_backward(const prefopt_model *m, int layer, prefopt_dmat *dq, prefopt_dmat *dk, prefopt_dmat *dv,
                           const prefopt_dmat *dy, const float *att, const prefopt_dmat *q, const prefopt_dmat *k,
                           const prefopt_dmat *v, const prefopt_dmat *y)
{
    const int T = m->b.T, D = m->cfg.head_dim, G = m->cfg.num_heads / m->cfg.num_kv_heads;
    const int nkb = k->nloc / D, nseq = m->nloc_seq, npair = nseq * nkb;
    const pf_attn_params ap = pf_attn_params_of(m, layer);
#pragma omp parallel for schedule(dynamic)
    for (int pr = 0; pr < npair; pr++) {
        int s = pr / nkb, kb = pr % nkb;
        const pf_attn_row r = row_of(m, &ap, s);
        const size_t TD = (size_t)T * D;
        float *kh = prefopt_xmalloc(sizeof(float) * (8 * TD + pf_attn_bwd_work(&r)), "attention scratch");
        float *vh = kh + TD, *qh = vh + TD, *oh = qh + TD, *doh = oh + TD, *dqh = doh + TD, *dkh = dqh + TD;
        float *dvh = dkh + TD, *work = dvh + TD;
        load_head(kh, k, s, T, kb * D, D);
        load_head(vh, v, s, T, kb * D, D);
        memset(dkh, 0, sizeof(float) * 2 * TD);
        for (int hh = 0; hh < G; hh++) {
            int c0 = kb * m->qnb + hh * D;
            load_head(qh, q, s, T, c0, D);
            load_head(oh, y, s, T, c0, D);
            load_head(doh, dy, s, T, c0, D);
            pf_attn_backward_head(&r, qh, kh, vh, oh, doh, att + ((size_t)pr * G + hh) * T, dqh, dkh, dvh, work,
                                  hh == 0);
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
