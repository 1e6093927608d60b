/* The pieces of a transformer block on block-cyclic activations (tokens x features, mb = T): linear layers
 * through psgemm, LayerNorm/RMSNorm with their reductions over the process-row communicator, the token and
 * position embeddings, GELU/SwiGLU and RoPE. Every loop runs over local elements in a fixed order, so the
 * results are bit-reproducible on a given grid. */
#include "model_internal.h"
#include "pf_math.h"

#include "prefopt/gemm_local.h"

#include <math.h>
#include <string.h>

float *pf_vgrad(prefopt_model *m, const prefopt_param *p) { return m->vscr + m->vscr_offset[p - m->params]; }

/* the bf16 copies of the matrices from their fp32 masters, when the weights changed since the last forward */
void pf_bf16_sync(prefopt_model *m)
{
    if (!m->opt.bf16 || m->bf16_only || !m->half_stale)
        return;
    for (int i = 0; i < m->nparams; i++)
        if (m->params[i].ndim == 2)
            prefopt_bf16_from_f32(m->half_data + m->offset[i], m->values[i].data,
                                  prefopt_dmat_local_size(&m->values[i]));
    m->half_stale = 0;
}

static void add_bias(prefopt_dmat *y, const prefopt_param *b)
{
    const float *bv = b->value->data;
#pragma omp parallel for schedule(static)
    for (int jl = 0; jl < y->nloc; jl++) {
        float *col = pf_at(y, 0, jl), v = bv[jl];
        for (int il = 0; il < y->mloc; il++)
            col[il] += v;
    }
}

/* y := x W + b + beta y. beta = 1 adds a residual the caller copied into y. */
void pf_linear_forward(prefopt_dmat *y, const prefopt_dmat *x, const prefopt_param *w, const prefopt_param *b,
                       float beta)
{
    pf_gemm(w->value->half != NULL, 'N', 'N', 1.0f, x, w->value, beta, y); /* a bf16 model's weights have copies */
    if (b)
        add_bias(y, b);
}

/* dx := dy W^T + beta_dx dx (skipped when dx is NULL); dW += x^T dy; db += column sums of dy (this process
 * row's tokens only: the row-vector scratch is summed over process rows at the end of backward). A frozen
 * (LoRA base) W or b has no gradient and costs no product. */
void pf_linear_backward(prefopt_model *m, prefopt_dmat *dx, float beta_dx, const prefopt_dmat *dy,
                        const prefopt_dmat *x, const prefopt_param *w, const prefopt_param *b)
{
    if (dx)
        pf_gemm(m->opt.bf16, 'N', 'T', 1.0f, dy, w->value, beta_dx, dx);
    if (w->grad) /* a frozen (LoRA base) weight gets no gradient */
        pf_gemm(m->opt.bf16, 'T', 'N', 1.0f, x, dy, 1.0f, w->grad);
    if (b && b->grad) {
        float *db = pf_vgrad(m, b);
#pragma omp parallel for schedule(static)
        for (int jl = 0; jl < dy->nloc; jl++) {
            const float *col = pf_at(dy, 0, jl);
            float s = 0;
            for (int il = 0; il < dy->mloc; il++)
                s += col[il];
            db[jl] += s;
        }
    }
}

/* LayerNorm when b is given (GPT-2), RMSNorm otherwise (Llama). A token's features are spread over the
 * process row, so the sums are all-reduced over grid->row: one all-reduce of two doubles per local token. */
void pf_norm_forward(prefopt_model *m, prefopt_dmat *y, float *mean, float *rstd, const prefopt_dmat *x,
                     const prefopt_param *w, const prefopt_param *b)
{
    int nt = x->mloc, C = x->n;
    double *s = prefopt_xcalloc((size_t)2 * nt + 2, sizeof *s, "norm sums");
#pragma omp parallel for schedule(static)
    for (int rb = 0; rb < nt; rb += PF_RB)
        for (int jl = 0; jl < x->nloc; jl++) {
            const float *col = pf_at(x, 0, jl);
            for (int il = rb, re = rb + PF_RB < nt ? rb + PF_RB : nt; il < re; il++) {
                s[2 * il] += col[il];
                s[2 * il + 1] += (double)col[il] * col[il];
            }
        }
    MPI_Allreduce(MPI_IN_PLACE, s, 2 * nt, MPI_DOUBLE, MPI_SUM, m->g->row);
    for (int il = 0; il < nt; il++) {
        double mu = b ? s[2 * il] / C : 0.0;
        double var = s[2 * il + 1] / C - mu * mu;
        mean[il] = (float)mu;
        rstd[il] = (float)(1.0 / sqrt((var > 0 ? var : 0) + m->cfg.norm_eps));
    }
    free(s);
    const float *wv = w->value->data, *bv = b ? b->value->data : NULL;
    const float off = m->cfg.norm_unit_offset ? 1.0f : 0.0f; /* Gemma: (1 + w) */
#pragma omp parallel for schedule(static)
    for (int jl = 0; jl < x->nloc; jl++) {
        const float *xc = pf_at(x, 0, jl);
        float *yc = pf_at(y, 0, jl);
        for (int il = 0; il < nt; il++) {
            float v = (xc[il] - mean[il]) * rstd[il] * (off + wv[jl]);
            yc[il] = bv ? v + bv[jl] : v;
        }
    }
}

/* dx += norm backward of dy. */
void pf_norm_backward(prefopt_model *m, prefopt_dmat *dx, const prefopt_dmat *dy, const prefopt_dmat *x,
                      const float *mean, const float *rstd, const prefopt_param *w, const prefopt_param *b)
{
    int nt = x->mloc, C = x->n;
    const float *wv = w->value->data;
    const float off = m->cfg.norm_unit_offset ? 1.0f : 0.0f;
    float *dw = w->grad ? pf_vgrad(m, w) : NULL, *db = b && b->grad ? pf_vgrad(m, b) : NULL;
    double *s = prefopt_xcalloc((size_t)2 * nt + 2, sizeof *s, "norm backward sums");
#pragma omp parallel for schedule(static) if (dw != NULL)
    for (int jl = 0; jl < (dw ? x->nloc : 0); jl++) { /* weight and bias gradients: column sums */
        const float *xc = pf_at(x, 0, jl), *gc = pf_at(dy, 0, jl);
        float sw = 0, sb = 0;
        for (int il = 0; il < nt; il++) {
            sw += gc[il] * ((xc[il] - mean[il]) * rstd[il]);
            sb += gc[il];
        }
        dw[jl] += sw;
        if (db)
            db[jl] += sb;
    }
#pragma omp parallel for schedule(static)
    for (int rb = 0; rb < nt; rb += PF_RB) /* the row sums the input gradient needs */
        for (int jl = 0; jl < x->nloc; jl++) {
            const float *xc = pf_at(x, 0, jl), *gc = pf_at(dy, 0, jl);
            for (int il = rb, re = rb + PF_RB < nt ? rb + PF_RB : nt; il < re; il++) {
                float xhat = (xc[il] - mean[il]) * rstd[il];
                float g = gc[il] * (off + wv[jl]);
                s[2 * il] += g;
                s[2 * il + 1] += (double)g * xhat;
            }
        }
    MPI_Allreduce(MPI_IN_PLACE, s, 2 * nt, MPI_DOUBLE, MPI_SUM, m->g->row);
#pragma omp parallel for schedule(static)
    for (int jl = 0; jl < x->nloc; jl++) {
        const float *xc = pf_at(x, 0, jl), *gc = pf_at(dy, 0, jl);
        float *dc = pf_at(dx, 0, jl);
        for (int il = 0; il < nt; il++) {
            float xhat = (xc[il] - mean[il]) * rstd[il];
            float g = gc[il] * (off + wv[jl]);
            float mg = b ? (float)(s[2 * il] / C) : 0.0f;
            dc[il] += rstd[il] * (g - mg - xhat * (float)(s[2 * il + 1] / C));
        }
    }
    free(s);
}

/* The [D] weight of a per-head norm, on every rank: it lives on process column 0 (a D-wide row vector), so it
 * is broadcast over the process row; D floats per use. */
static void head_norm_weight(const prefopt_model *m, const prefopt_param *w, float *out, int D)
{
    if (m->g->mycol == 0)
        memcpy(out, w->value->data, sizeof(float) * (size_t)D);
    if (m->g->npcol > 1)
        MPI_Bcast(out, D, MPI_FLOAT, 0, m->g->row);
}

/* y = x / rms(head) * (off + w) over each head's D features (a head's D columns are adjacent and local: the
 * blocks of q and k hold whole heads). rstd per local token and local head. */
void pf_head_norm_forward(prefopt_model *m, prefopt_dmat *y, float *rstd, const prefopt_dmat *x,
                          const prefopt_param *w)
{
    const int D = m->cfg.head_dim, nt = x->mloc, nh = x->nloc / D;
    const float off = m->cfg.norm_unit_offset ? 1.0f : 0.0f;
    float *wv = prefopt_xmalloc(sizeof(float) * (size_t)D + 4, "head norm weight");
    head_norm_weight(m, w, wv, D);
#pragma omp parallel for schedule(static)
    for (int h = 0; h < nh; h++)
        for (int il = 0; il < nt; il++) {
            double ss = 0;
            for (int d = 0; d < D; d++) {
                float v = *pf_at(x, il, h * D + d);
                ss += (double)v * v;
            }
            float r = (float)(1.0 / sqrt(ss / D + m->cfg.norm_eps));
            rstd[(size_t)h * nt + il] = r;
            for (int d = 0; d < D; d++)
                *pf_at(y, il, h * D + d) = *pf_at(x, il, h * D + d) * r * (off + wv[d]);
        }
    free(wv);
}

/* dx += the per-head norm's input gradient; the weight's gradient over my heads is reduced onto process column 0
 * over the process row, then joins the row-vector scratch like any norm weight's */
void pf_head_norm_backward(prefopt_model *m, prefopt_dmat *dx, const prefopt_dmat *dy, const prefopt_dmat *x,
                           const float *rstd, const prefopt_param *w)
{
    const int D = m->cfg.head_dim, nt = x->mloc, nh = x->nloc / D;
    const float off = m->cfg.norm_unit_offset ? 1.0f : 0.0f;
    float *wv = prefopt_xmalloc(sizeof(float) * (size_t)D * 2 + 4, "head norm weight"), *dw = wv + D;
    head_norm_weight(m, w, wv, D);
    memset(dw, 0, sizeof(float) * (size_t)D);
    for (int h = 0; h < nh; h++) /* serial over heads: the weight gradient is one sum in a fixed order */
        for (int il = 0; il < nt; il++) {
            float r = rstd[(size_t)h * nt + il];
            double sg = 0;
            for (int d = 0; d < D; d++) {
                float xhat = *pf_at(x, il, h * D + d) * r, g = *pf_at(dy, il, h * D + d);
                dw[d] += g * xhat;
                sg += (double)g * (off + wv[d]) * xhat;
            }
            float mg = (float)(sg / D);
            for (int d = 0; d < D; d++) {
                float xhat = *pf_at(x, il, h * D + d) * r, g = *pf_at(dy, il, h * D + d) * (off + wv[d]);
                *pf_at(dx, il, h * D + d) += r * (g - xhat * mg);
            }
        }
    if (w->grad && m->g->npcol > 1) /* a frozen (LoRA base) norm has no gradient to reduce */
        MPI_Reduce(m->g->mycol == 0 ? MPI_IN_PLACE : dw, dw, D, MPI_FLOAT, MPI_SUM, 0, m->g->row);
    if (w->grad && m->g->mycol == 0) {
        float *acc = pf_vgrad(m, w);
        for (int d = 0; d < D; d++)
            acc[d] += dw[d];
    }
    free(wv);
}

/* X[t,:] = E[:, id_t] (+ P[:, pos_t]). The column of E is spread over a process column's ranks and lives on one
 * process column, while X's row lives on one process row: every rank writes what it owns into a zeroed
 * nrows*T x C buffer that is summed over the TP group (each element has one or two non-zero terms, so the sum
 * is exact and grid-independent), then keeps its block. Cost: one all-reduce of the whole batch's hidden
 * states per forward and per backward; fine at these sizes, a point-to-point exchange would scale better. */
static void embed_scatter_owned(const prefopt_model *m, float *full, const prefopt_dmat *E, const int32_t *ids)
{
    int C = m->cfg.hidden_size, ntok = m->b.nrows * m->b.T;
    for (int t = 0; t < ntok; t++) {
        if (m->b.seg[t] < 0 || prefopt_dmat_col_owner(E, ids[t]) != m->g->mycol)
            continue;
        size_t at = (size_t)prefopt_dmat_col_g2l(E, ids[t]) * E->lld;
        if (E->half) /* a bf16 model looks up the values its products use (policy and reference alike) */
            for (int il = 0; il < E->mloc; il++)
                full[(size_t)t * C + prefopt_dmat_row_l2g(E, il)] += prefopt_bf16_value(E->half[at + il]);
        else
            for (int il = 0; il < E->mloc; il++)
                full[(size_t)t * C + prefopt_dmat_row_l2g(E, il)] += E->data[at + il];
    }
}

static void allreduce_big(float *buf, size_t n, MPI_Comm comm)
{
    const size_t chunk = (size_t)1 << 28;
    for (size_t off = 0; off < n; off += chunk)
        MPI_Allreduce(MPI_IN_PLACE, buf + off, (int)(n - off < chunk ? n - off : chunk), MPI_FLOAT, MPI_SUM, comm);
}

void pf_embed_forward(prefopt_model *m, prefopt_dmat *x)
{
    int C = m->cfg.hidden_size;
    size_t n = (size_t)m->b.nrows * m->b.T * C;
    memset(m->emb_full, 0, n * sizeof(float));
    embed_scatter_owned(m, m->emb_full, m->wte->value, m->b.tokens);
    if (m->wpe)
        embed_scatter_owned(m, m->emb_full, m->wpe->value, m->b.pos);
    allreduce_big(m->emb_full, n, m->g->tp);
    const float sc = m->cfg.embed_scale > 0 ? m->cfg.embed_scale : 1.0f; /* Gemma: sqrt(hidden) */
    for (int jl = 0; jl < x->nloc; jl++) {
        int c = prefopt_dmat_col_l2g(x, jl);
        float *col = pf_at(x, 0, jl);
        for (int il = 0; il < x->mloc; il++)
            col[il] = m->emb_full[(size_t)prefopt_dmat_row_l2g(x, il) * C + c] * sc;
    }
}

static void embed_gather_owned(const prefopt_model *m, prefopt_dmat *dE, const float *full, const int32_t *ids)
{
    int C = m->cfg.hidden_size, ntok = m->b.nrows * m->b.T;
    for (int t = 0; t < ntok; t++) {
        if (m->b.seg[t] < 0 || prefopt_dmat_col_owner(dE, ids[t]) != m->g->mycol)
            continue;
        float *col = pf_at(dE, 0, prefopt_dmat_col_g2l(dE, ids[t]));
        for (int il = 0; il < dE->mloc; il++)
            col[il] += full[(size_t)t * C + prefopt_dmat_row_l2g(dE, il)];
    }
}

void pf_embed_backward(prefopt_model *m, const prefopt_dmat *dx)
{
    if (!m->wte->grad) /* frozen embeddings (LoRA): nothing below them learns */
        return;
    int C = m->cfg.hidden_size;
    size_t n = (size_t)m->b.nrows * m->b.T * C;
    memset(m->emb_full, 0, n * sizeof(float));
    const float sc = m->cfg.embed_scale > 0 ? m->cfg.embed_scale : 1.0f;
    for (int jl = 0; jl < dx->nloc; jl++) {
        int c = prefopt_dmat_col_l2g(dx, jl);
        const float *col = pf_at(dx, 0, jl);
        for (int il = 0; il < dx->mloc; il++)
            m->emb_full[(size_t)prefopt_dmat_row_l2g(dx, il) * C + c] = col[il] * sc;
    }
    allreduce_big(m->emb_full, n, m->g->tp);
    embed_gather_owned(m, m->wte->grad, m->emb_full, m->b.tokens);
    if (m->wpe)
        embed_gather_owned(m, m->wpe->grad, m->emb_full, m->b.pos);
}

/* GPT-2: gelu_new (tanh approximation). Llama: silu(gate) * up. */
#define GELU_K 0.7978845608028654f /* sqrt(2/pi) */

/* tanh(u) = sign(u) (1 - e) / (1 + e), e = exp(-2|u|): absolute error below 1e-7, which is what GELU and its
 * derivative see (they add it to 1). */
static inline float pf_tanh(float u)
{
    float e = pf_exp(-2.0f * fabsf(u));
    return copysignf((1.0f - e) / (1.0f + e), u);
}

void pf_mlp_act_forward(const prefopt_model *m, prefopt_dmat *a, const prefopt_dmat *h1, const prefopt_dmat *h2)
{
    size_t n = prefopt_dmat_local_size(a);
    if (m->cfg.arch == PREFOPT_ARCH_GPT2) {
#pragma omp parallel for schedule(static)
        for (size_t e = 0; e < n; e++) {
            float x = h1->data[e];
            a->data[e] = 0.5f * x * (1.0f + pf_tanh(GELU_K * (x + 0.044715f * x * x * x)));
        }
    } else if (m->cfg.mlp_act == PREFOPT_ACT_GELU_TANH) { /* GeGLU: gelu_tanh(gate) * up (Gemma) */
#pragma omp parallel for schedule(static)
        for (size_t e = 0; e < n; e++) {
            float x = h1->data[e];
            a->data[e] = 0.5f * x * (1.0f + pf_tanh(GELU_K * (x + 0.044715f * x * x * x))) * h2->data[e];
        }
    } else {
#pragma omp parallel for schedule(static)
        for (size_t e = 0; e < n; e++) {
            float x = h1->data[e];
            a->data[e] = x / (1.0f + pf_exp(-x)) * h2->data[e];
        }
    }
}

void pf_mlp_act_backward(const prefopt_model *m, prefopt_dmat *dh1, prefopt_dmat *dh2, const prefopt_dmat *da,
                         const prefopt_dmat *h1, const prefopt_dmat *h2)
{
    size_t n = prefopt_dmat_local_size(da);
    if (m->cfg.arch == PREFOPT_ARCH_GPT2) {
#pragma omp parallel for schedule(static)
        for (size_t e = 0; e < n; e++) {
            float x = h1->data[e];
            float t = pf_tanh(GELU_K * (x + 0.044715f * x * x * x));
            float d = 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * GELU_K * (1.0f + 3.0f * 0.044715f * x * x);
            dh1->data[e] = da->data[e] * d;
        }
    } else if (m->cfg.mlp_act == PREFOPT_ACT_GELU_TANH) {
#pragma omp parallel for schedule(static)
        for (size_t e = 0; e < n; e++) {
            float x = h1->data[e];
            float t = pf_tanh(GELU_K * (x + 0.044715f * x * x * x));
            float d = 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * GELU_K * (1.0f + 3.0f * 0.044715f * x * x);
            dh1->data[e] = da->data[e] * h2->data[e] * d;
            dh2->data[e] = da->data[e] * 0.5f * x * (1.0f + t);
        }
    } else {
#pragma omp parallel for schedule(static)
        for (size_t e = 0; e < n; e++) {
            float x = h1->data[e], s = 1.0f / (1.0f + pf_exp(-x));
            dh1->data[e] = da->data[e] * h2->data[e] * s * (1.0f + x * (1.0f - s));
            dh2->data[e] = da->data[e] * x * s;
        }
    }
}

/* cos/sin of pos * inv_freq[i], computed in float exactly as HF's LlamaRotaryEmbedding does (fp32 inv_freq,
 * fp32 product), so long positions round the same way. Two tables: the layers on rope_theta (with its scaling),
 * then the sliding layers' when they have their own base (Gemma 3's rope_local_base_freq, unscaled). Over
 * rope_dim features (Phi-3's partial rotary: inv_freq over rope_dim, not D). */
static int rope_dim(const prefopt_model_config *c) { return c->rope_dim ? c->rope_dim : c->head_dim; }

void pf_rope_tables(prefopt_model *m)
{
    int ntok = m->b.nrows * m->b.T, maxp = 0, R = rope_dim(&m->cfg), h = R / 2;
    for (int t = 0; t < ntok; t++)
        if (m->b.seg[t] >= 0 && m->b.pos[t] > maxp)
            maxp = m->b.pos[t];
    free(m->rope_cos);
    free(m->rope_sin);
    m->rope_npos = maxp + 1;
    size_t per = (size_t)m->rope_npos * h;
    m->rope_cos = prefopt_xmalloc(sizeof(float) * 2 * per + 4, "rope cos");
    m->rope_sin = prefopt_xmalloc(sizeof(float) * 2 * per + 4, "rope sin");
    const prefopt_model_config *c = &m->cfg;
    for (int tab = 0; tab < 2; tab++)
        for (int i = 0; i < h; i++) {
            float theta = tab && c->rope_local_theta > 0 ? c->rope_local_theta : c->rope_theta;
            float inv = 1.0f / powf(theta, (float)(2 * i) / (float)R);
            if (c->rope_llama3 && !tab) { /* HF _compute_llama3_parameters, in float32 like torch */
                float old_len = (float)c->rope_original_max_position;
                float low_wl = old_len / c->rope_low_freq_factor, high_wl = old_len / c->rope_high_freq_factor;
                float wl = 2.0f * (float)M_PI / inv;
                float scaled = wl > low_wl ? inv / c->rope_factor : inv;
                if (!(wl < high_wl) && !(wl > low_wl)) {
                    float smooth = (old_len / wl - c->rope_low_freq_factor) /
                                   (c->rope_high_freq_factor - c->rope_low_freq_factor);
                    scaled = (1.0f - smooth) * scaled / c->rope_factor + smooth * scaled;
                }
                inv = scaled;
            }
            if (c->rope_linear_factor > 0 && (!tab || !(c->rope_local_theta > 0)))
                inv /= c->rope_linear_factor; /* HF "linear": inv_freq / factor */
            for (int p = 0; p < m->rope_npos; p++) {
                float ang = inv * (float)p;
                m->rope_cos[tab * per + (size_t)p * h + i] = cosf(ang);
                m->rope_sin[tab * per + (size_t)p * h + i] = sinf(ang);
            }
        }
}

/* HF rotate_half: x' = x cos + rotate_half(x) sin pairs dimension i with i + rope_dim/2 of the same head (the
 * features past rope_dim pass through); a head never straddles a block, so the pair is local. inverse applies
 * the transpose (for gradients). A NOROPE layer (SmolLM3) is left alone. */
void pf_rope_apply(const prefopt_model *m, int layer, prefopt_dmat *x, int inverse)
{
    const prefopt_model_config *c = &m->cfg;
    if (c->layer_flags[layer] & PREFOPT_LAYER_NOROPE)
        return;
    int D = c->head_dim, R = rope_dim(c), h = R / 2;
    const int tab = (c->layer_flags[layer] & PREFOPT_LAYER_SLIDING) && c->rope_local_theta > 0;
    const float *tc = m->rope_cos + (size_t)tab * m->rope_npos * h, *ts = m->rope_sin + (size_t)tab * m->rope_npos * h;
    for (int jl = 0; jl < x->nloc; jl++) {
        int d = prefopt_dmat_col_l2g(x, jl) % D;
        if (d >= h)
            continue;
        float *a = pf_at(x, 0, jl), *b = pf_at(x, 0, jl + h);
        for (int il = 0; il < x->mloc; il++) {
            int t = prefopt_dmat_row_l2g(x, il);
            if (m->b.seg[t] < 0)
                continue;
            size_t k = (size_t)m->b.pos[t] * h + d;
            float cs = tc[k], sn = inverse ? -ts[k] : ts[k];
            float av = a[il], bv = b[il];
            a[il] = av * cs - bv * sn;
            b[il] = bv * cs + av * sn;
        }
    }
}
