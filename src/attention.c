/* Causal self-attention with shared-prefix branches and grouped-query heads, entirely local: Q's block is the
 * (H/KV) query heads of one KV group and K/V's block is that group's head, so query group j and KV head j sit on
 * the same process column, and a sequence's tokens sit whole on one process row. Work is split over
 * (sequence, KV group) pairs, which write disjoint outputs: deterministic under OpenMP. */
#include "model_internal.h"

#include <math.h>
#include <string.h>

/* token j is visible from token i (both in the same row): causal, not padding, same branch or shared prefix */
static inline int visible(const int8_t *seg, int i, int j) { return seg[j] >= 0 && (seg[j] == 0 || seg[j] == seg[i]); }

/* copy the D columns starting at local column c0 of rows s*T.. into a row-major T x D buffer (and back) */
static void load_head(float *dst, const prefopt_dmat *x, int s, int T, int c0, int D)
{
    for (int d = 0; d < D; d++) {
        const float *col = pf_at(x, s * T, c0 + d);
        for (int i = 0; i < T; i++)
            dst[(size_t)i * D + d] = col[i];
    }
}

static void store_head(prefopt_dmat *x, const float *src, int s, int T, int c0, int D)
{
    for (int d = 0; d < D; d++) {
        float *col = pf_at(x, s * T, c0 + d);
        for (int i = 0; i < T; i++)
            col[i] = src[(size_t)i * D + d];
    }
}

void pf_attention_forward(const prefopt_model *m, prefopt_dmat *y, float *att, const prefopt_dmat *q,
                          const prefopt_dmat *k, const prefopt_dmat *v)
{
    const int T = m->b.T, D = m->cfg.head_dim, G = m->cfg.num_heads / m->cfg.num_kv_heads;
    const int nkb = k->nloc / D, nseq = m->nloc_seq, npair = nseq * nkb;
    const float scale = 1.0f / sqrtf((float)D);
#pragma omp parallel for schedule(dynamic)
    for (int pr = 0; pr < npair; pr++) {
        int s = pr / nkb, kb = pr % nkb;
        const int8_t *seg = m->b.seg + (size_t)pf_seq_row(m, s) * T;
        float *kh = prefopt_xmalloc(sizeof(float) * 4 * T * D, "attention scratch");
        float *vh = kh + T * D, *qh = vh + T * D, *oh = qh + T * D;
        load_head(kh, k, s, T, kb * D, D);
        load_head(vh, v, s, T, kb * D, D);
        for (int hh = 0; hh < G; hh++) {
            int c0 = kb * m->qnb + hh * D;
            float *P = att + ((size_t)pr * G + hh) * T * T;
            load_head(qh, q, s, T, c0, D);
            memset(oh, 0, sizeof(float) * T * D);
            memset(P, 0, sizeof(float) * T * T);
            for (int i = 0; i < T; i++) {
                if (seg[i] < 0)
                    continue; /* padded query: zero output, zero probabilities */
                float *Pi = P + (size_t)i * T, mx = -INFINITY;
                const float *qi = qh + (size_t)i * D;
                for (int j = 0; j <= i; j++) {
                    if (!visible(seg, i, j))
                        continue;
                    float sc = 0;
                    for (int d = 0; d < D; d++)
                        sc += qi[d] * kh[(size_t)j * D + d];
                    Pi[j] = sc * scale;
                    mx = fmaxf(mx, Pi[j]);
                }
                float sum = 0;
                for (int j = 0; j <= i; j++)
                    if (visible(seg, i, j)) {
                        Pi[j] = expf(Pi[j] - mx);
                        sum += Pi[j];
                    }
                float inv = 1.0f / sum; /* i sees itself, so sum >= 1 */
                float *oi = oh + (size_t)i * D;
                for (int j = 0; j <= i; j++) {
                    if (!visible(seg, i, j))
                        continue;
                    Pi[j] *= inv;
                    for (int d = 0; d < D; d++)
                        oi[d] += Pi[j] * vh[(size_t)j * D + d];
                }
            }
            store_head(y, oh, s, T, c0, D);
        }
        free(kh);
    }
}

void pf_attention_backward(const prefopt_model *m, prefopt_dmat *dq, prefopt_dmat *dk, prefopt_dmat *dv,
                           const prefopt_dmat *dy, const float *att, const prefopt_dmat *q, const prefopt_dmat *k,
                           const prefopt_dmat *v)
{
    const int T = m->b.T, D = m->cfg.head_dim, G = m->cfg.num_heads / m->cfg.num_kv_heads;
    const int nkb = k->nloc / D, nseq = m->nloc_seq, npair = nseq * nkb;
    const float scale = 1.0f / sqrtf((float)D);
#pragma omp parallel for schedule(dynamic)
    for (int pr = 0; pr < npair; pr++) {
        int s = pr / nkb, kb = pr % nkb;
        const int8_t *seg = m->b.seg + (size_t)pf_seq_row(m, s) * T;
        float *kh = prefopt_xmalloc(sizeof(float) * (7 * T * D + T), "attention scratch");
        float *vh = kh + T * D, *qh = vh + T * D, *doh = qh + T * D, *dqh = doh + T * D, *dkh = dqh + T * D;
        float *dvh = dkh + T * D, *dP = dvh + T * D;
        load_head(kh, k, s, T, kb * D, D);
        load_head(vh, v, s, T, kb * D, D);
        memset(dkh, 0, sizeof(float) * 2 * T * D);
        for (int hh = 0; hh < G; hh++) {
            int c0 = kb * m->qnb + hh * D;
            const float *P = att + ((size_t)pr * G + hh) * T * T;
            load_head(qh, q, s, T, c0, D);
            load_head(doh, dy, s, T, c0, D);
            memset(dqh, 0, sizeof(float) * T * D);
            for (int i = 0; i < T; i++) {
                if (seg[i] < 0)
                    continue;
                const float *Pi = P + (size_t)i * T, *doi = doh + (size_t)i * D;
                float rowdot = 0;
                for (int j = 0; j <= i; j++) {
                    float acc = 0;
                    if (Pi[j] != 0.0f) {
                        for (int d = 0; d < D; d++) {
                            acc += doi[d] * vh[(size_t)j * D + d];
                            dvh[(size_t)j * D + d] += Pi[j] * doi[d];
                        }
                    }
                    dP[j] = acc;
                    rowdot += Pi[j] * acc;
                }
                for (int j = 0; j <= i; j++) {
                    float ds = Pi[j] * (dP[j] - rowdot) * scale;
                    if (ds == 0.0f)
                        continue;
                    for (int d = 0; d < D; d++) {
                        dqh[(size_t)i * D + d] += ds * kh[(size_t)j * D + d];
                        dkh[(size_t)j * D + d] += ds * qh[(size_t)i * D + d];
                    }
                }
            }
            store_head(dq, dqh, s, T, c0, D);
        }
        store_head(dk, dkh, s, T, kb * D, D);
        store_head(dv, dvh, s, T, kb * D, D);
        free(kh);
    }
}
