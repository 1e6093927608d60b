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
 * row's tokens only: the row-vector scratch is summed over process rows at the end of backward). */
void pf_linear_backward(prefopt_model *m, prefopt_dmat *dx, float beta_dx, const prefopt_dmat *dy,
                        const prefopt_dmat *x, const prefopt_param *w, const prefopt_param *b)
{
    if (dx)
        pf_gemm(m->opt.bf16, 'N', 'T', 1.0f, dy, w->value, beta_dx, dx);
    pf_gemm(m->opt.bf16, 'T', 'N', 1.0f, x, dy, 1.0f, w->grad);
    if (b) {
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
#pragma omp parallel for schedule(static)
    for (int jl = 0; jl < x->nloc; jl++) {
        const float *xc = pf_at(x, 0, jl);
        float *yc = pf_at(y, 0, jl);
        for (int il = 0; il < nt; il++) {
            float v = (xc[il] - mean[il]) * rstd[il] * wv[jl];
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
    float *dw = pf_vgrad(m, w), *db = b ? pf_vgrad(m, b) : NULL;
    double *s = prefopt_xcalloc((size_t)2 * nt + 2, sizeof *s, "norm backward sums");
#pragma omp parallel for schedule(static)
    for (int jl = 0; jl < x->nloc; jl++) { /* weight and bias gradients: column sums */
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
                float g = gc[il] * wv[jl];
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
            float g = gc[il] * wv[jl];
            float mg = b ? (float)(s[2 * il] / C) : 0.0f;
            dc[il] += rstd[il] * (g - mg - xhat * (float)(s[2 * il + 1] / C));
        }
    }
    free(s);
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
    for (int jl = 0; jl < x->nloc; jl++) {
        int c = prefopt_dmat_col_l2g(x, jl);
        float *col = pf_at(x, 0, jl);
        for (int il = 0; il < x->mloc; il++)
            col[il] = m->emb_full[(size_t)prefopt_dmat_row_l2g(x, il) * C + c];
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
    int C = m->cfg.hidden_size;
    size_t n = (size_t)m->b.nrows * m->b.T * C;
    memset(m->emb_full, 0, n * sizeof(float));
    for (int jl = 0; jl < dx->nloc; jl++) {
        int c = prefopt_dmat_col_l2g(dx, jl);
        const float *col = pf_at(dx, 0, jl);
        for (int il = 0; il < dx->mloc; il++)
            m->emb_full[(size_t)prefopt_dmat_row_l2g(dx, il) * C + c] = col[il];
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
 * fp32 product), so long positions round the same way. */
void pf_rope_tables(prefopt_model *m)
{
    int ntok = m->b.nrows * m->b.T, maxp = 0, D = m->cfg.head_dim, h = D / 2;
    for (int t = 0; t < ntok; t++)
        if (m->b.seg[t] >= 0 && m->b.pos[t] > maxp)
            maxp = m->b.pos[t];
    free(m->rope_cos);
    free(m->rope_sin);
    m->rope_npos = maxp + 1;
    m->rope_cos = prefopt_xmalloc(sizeof(float) * m->rope_npos * h + 4, "rope cos");
    m->rope_sin = prefopt_xmalloc(sizeof(float) * m->rope_npos * h + 4, "rope sin");
    const prefopt_model_config *c = &m->cfg;
    for (int i = 0; i < h; i++) {
        float inv = 1.0f / powf(c->rope_theta, (float)(2 * i) / (float)D);
        if (c->rope_llama3) { /* HF _compute_llama3_parameters, in float32 like torch */
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
        for (int p = 0; p < m->rope_npos; p++) {
            float ang = inv * (float)p;
            m->rope_cos[(size_t)p * h + i] = cosf(ang);
            m->rope_sin[(size_t)p * h + i] = sinf(ang);
        }
    }
}

/* HF rotate_half: x' = x cos + rotate_half(x) sin pairs dimension i with i + D/2 of the same head; a head never
 * straddles a block, so the pair is local. inverse applies the transpose (for gradients). */
void pf_rope_apply(const prefopt_model *m, prefopt_dmat *x, int inverse)
{
    int D = m->cfg.head_dim, h = D / 2;
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
            float c = m->rope_cos[k], s = inverse ? -m->rope_sin[k] : m->rope_sin[k];
            float av = a[il], bv = b[il];
            a[il] = av * c - bv * s;
            b[il] = bv * c + av * s;
        }
    }
}
