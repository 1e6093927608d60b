/* The transformer's drivers: batch checks, activation buffers sized for the batch, and forward/backward of GPT-2
 * and the Llama family over the layers (layers.c, attention.c, head.c), plus the data-parallel gradient sum and
 * the FLOP count. Parameters are in params.c, generation in decode.c. */
#include "model_internal.h"
#include "prefopt/regions.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

/* ---- batch checks and buffers ------------------------------------------------------------------------- */

void pf_free_acts(prefopt_model *m)
{
    for (int i = 0; i < m->nbufs; i++)
        free(m->bufs[i]);
    free(m->bufs);
    m->bufs = NULL;
    m->nbufs = m->capbufs = 0;
    free(m->xs);
    free(m->acts);
    free(m->head_row);
    free(m->head_pos);
    m->xs = NULL;
    m->acts = NULL;
    m->head_row = m->head_pos = NULL;
    m->alloc_rows = m->alloc_T = 0;
}

static void free_batch(prefopt_model *m)
{
    free((void *)m->b.tokens);
    memset(&m->b, 0, sizeof m->b);
    m->have_batch = 0;
}

void pf_free_activations(prefopt_model *m)
{
    pf_free_acts(m);
    free_batch(m);
    free(m->rope_cos);
    free(m->rope_sin);
    free(m->kv_k);
    free(m->kv_v);
    free(m->kv_len);
}

static int check_batch(const prefopt_model *m, const prefopt_batch *b, prefopt_err *err)
{
    if (b->nrows < 0 || b->T < 1 || b->nunits < 0)
        return prefopt_err_set(err, "batch: bad shape (rows %d, length %d, units %d)", b->nrows, b->T, b->nunits),
               -1;
    if ((int64_t)b->nrows * b->T > (1 << 30))
        return prefopt_err_set(err, "batch: %d rows x %d tokens is too large", b->nrows, b->T), -1;
    for (int r = 0; r < b->nrows; r++)
        for (int i = 0; i < b->T; i++) {
            size_t t = (size_t)r * b->T + i;
            int seg = b->seg[t], p = b->parent[t], u = b->unit[t];
            if (seg < 0) {
                if (p >= 0 || u >= 0)
                    return prefopt_err_set(err, "batch row %d position %d: padding has a parent or a unit", r, i), -1;
                continue;
            }
            if (b->tokens[t] < 0 || b->tokens[t] >= m->cfg.vocab_size)
                return prefopt_err_set(err, "batch row %d position %d: token id %d outside [0, vocab_size %d)", r, i,
                                       b->tokens[t], m->cfg.vocab_size),
                       -1;
            if (b->pos[t] < 0 || b->pos[t] >= m->cfg.max_position)
                return prefopt_err_set(err, "batch row %d position %d: position id %d outside [0, max_position %d)",
                                       r, i, b->pos[t], m->cfg.max_position),
                       -1;
            if (p >= i || p < -1 || (p >= 0 && (b->seg[(size_t)r * b->T + p] < 0 ||
                                                (b->seg[(size_t)r * b->T + p] != 0 &&
                                                 b->seg[(size_t)r * b->T + p] != seg))))
                return prefopt_err_set(err, "batch row %d position %d: parent %d is not a visible earlier token", r,
                                       i, p),
                       -1;
            if (u < -1 || u >= b->nunits)
                return prefopt_err_set(err, "batch row %d position %d: unit %d outside [-1, %d)", r, i, u, b->nunits),
                       -1;
        }
    return 0;
}

static void copy_batch(prefopt_model *m, const prefopt_batch *b)
{
    free_batch(m);
    size_t n = (size_t)b->nrows * b->T;
    char *mem = prefopt_xmalloc(n * (4 * sizeof(int32_t) + 2) + 16, "batch copy");
    int32_t *tok = (int32_t *)mem, *pos = tok + n, *par = pos + n, *unit = par + n;
    int8_t *seg = (int8_t *)(unit + n);
    uint8_t *comp = (uint8_t *)(seg + n);
    memcpy(tok, b->tokens, n * sizeof *tok);
    memcpy(pos, b->pos, n * sizeof *pos);
    memcpy(par, b->parent, n * sizeof *par);
    memcpy(unit, b->unit, n * sizeof *unit);
    memcpy(seg, b->seg, n);
    memcpy(comp, b->completion, n);
    m->b = (prefopt_batch){b->nrows, b->T, b->nunits, tok, pos, seg, par, unit, comp};
    m->have_batch = 1;
}

static float *new_buf(prefopt_model *m, size_t n, const char *what)
{
    if (m->nbufs == m->capbufs) {
        m->capbufs = m->capbufs ? 2 * m->capbufs : 64;
        float **nb = prefopt_xmalloc(sizeof *nb * m->capbufs, "buffer list");
        if (m->nbufs)
            memcpy(nb, m->bufs, sizeof *nb * m->nbufs);
        free(m->bufs);
        m->bufs = nb;
    }
    return m->bufs[m->nbufs++] = prefopt_xcalloc(n + 16, sizeof(float), what);
}

static void act(prefopt_model *m, prefopt_dmat *a, int ncols, int nb)
{
    prefopt_dmat_init(a, m->g, m->b.nrows * m->b.T, ncols, m->b.T, nb);
    a->data = new_buf(m, prefopt_dmat_local_size(a), "activations");
}

static void alloc_acts(prefopt_model *m)
{
    const prefopt_model_config *c = &m->cfg;
    if (m->alloc_rows == m->b.nrows && m->alloc_T == m->b.T)
        return;
    pf_free_acts(m);
    m->alloc_rows = m->b.nrows;
    m->alloc_T = m->b.T;
    const int C = c->hidden_size, HD = c->num_heads * c->head_dim, KD = c->num_kv_heads * c->head_dim;
    const int F = c->intermediate_size, L = c->num_layers, T = m->b.T, D = c->head_dim;
    const int llama = c->arch == PREFOPT_ARCH_LLAMA;
    m->xs = prefopt_xcalloc(L + 1, sizeof *m->xs, "residual streams");
    for (int l = 0; l <= L; l++)
        act(m, &m->xs[l], C, m->nbh);
    m->ntok_loc = m->xs[0].mloc;
    m->nloc_seq = m->ntok_loc / T;
    m->nacts = m->opt.with_grads && !m->opt.activation_checkpoint ? L : 1;
    m->acts = prefopt_xcalloc(m->nacts, sizeof *m->acts, "layer activations");
    size_t nt = (size_t)m->ntok_loc;
    for (int i = 0; i < m->nacts; i++) {
        layer_acts *A = &m->acts[i];
        act(m, &A->n1, C, m->nbh);
        act(m, &A->q, HD, m->qnb);
        act(m, &A->k, KD, D);
        act(m, &A->v, KD, D);
        act(m, &A->y, HD, m->qnb);
        act(m, &A->xmid, C, m->nbh);
        act(m, &A->n2, C, m->nbh);
        act(m, &A->h1, F, m->nbf);
        if (llama)
            act(m, &A->h2, F, m->nbf);
        act(m, &A->a, F, m->nbf);
        for (int k = 0; m->lora.r > 0 && k < PREFOPT_LORA_NKIND; k++)
            if (m->lora.targets & (1u << k))
                act(m, &A->lu[k], m->lora.r, m->lora.r);
        A->n1_mean = new_buf(m, nt, "norm stats");
        A->n1_rstd = new_buf(m, nt, "norm stats");
        A->n2_mean = new_buf(m, nt, "norm stats");
        A->n2_rstd = new_buf(m, nt, "norm stats");
        A->att = new_buf(m, (size_t)m->nloc_seq * (A->k.nloc / D) * (c->num_heads / c->num_kv_heads) * T,
                         "attention log-normalisers");
        if (llama && c->qk_norm) {
            act(m, &A->qr, HD, m->qnb);
            act(m, &A->kr, KD, D);
            size_t per = c->qk_norm == PREFOPT_QK_NORM_HEAD ? (size_t)(A->q.nloc / D) : 1;
            A->qn_mean = new_buf(m, nt, "norm stats");
            A->qn_rstd = new_buf(m, nt * per, "norm stats");
            per = c->qk_norm == PREFOPT_QK_NORM_HEAD ? (size_t)(A->k.nloc / D) : 1;
            A->kn_mean = new_buf(m, nt, "norm stats");
            A->kn_rstd = new_buf(m, nt * per, "norm stats");
        }
        if (llama && c->norm_style != PREFOPT_NORM_PRE) {
            act(m, &A->ao, C, m->nbh);
            act(m, &A->mo, C, m->nbh);
            A->pa_mean = new_buf(m, nt, "norm stats");
            A->pa_rstd = new_buf(m, nt, "norm stats");
            A->pf_mean = new_buf(m, nt, "norm stats");
            A->pf_rstd = new_buf(m, nt, "norm stats");
        }
    }
    if (llama && c->norm_style != PREFOPT_NORM_PRE)
        act(m, &m->tmpc, C, m->nbh);
    act(m, &m->xf, C, m->nbh);
    /* the LM head's chunk: as many rows as fit the logits budget (default 1 GiB per rank), whole process rows */
    {
        prefopt_dmat probe;
        prefopt_dmat_init(&probe, m->g, 1, c->vocab_size, 1, m->nbv);
        size_t per_row = (size_t)T * (probe.nloc > 0 ? probe.nloc : 1) * sizeof(float); /* per local sequence */
        size_t budget = m->logits_budget ? m->logits_budget : (size_t)1 << 30;
        size_t fit = budget / per_row;
        int rows = (int)(fit < 1 ? 1 : fit > (size_t)m->b.nrows ? (size_t)m->b.nrows : fit) * m->g->nprow;
        m->head_rows = rows >= m->b.nrows ? (m->b.nrows > 0 ? m->b.nrows : 1) : rows;
        prefopt_dmat_init(&m->logits, m->g, m->head_rows * T, c->vocab_size, T, m->nbv);
        m->logits.data = new_buf(m, prefopt_dmat_local_size(&m->logits), "logits");
    }
    if (m->head_kept_only) {
        act(m, &m->hx, C, m->nbh);
        if (m->opt.with_grads)
            act(m, &m->hdn, C, m->nbh);
        m->head_row = prefopt_xmalloc(sizeof(int) * (size_t)m->b.nrows * T + 4, "head plan");
        m->head_pos = prefopt_xmalloc(sizeof(int) * (size_t)m->b.nrows * T + 4, "head plan");
    }
    m->nf_mean = new_buf(m, nt, "norm stats");
    m->nf_rstd = new_buf(m, nt, "norm stats");
    m->lse = new_buf(m, nt, "log-sum-exp");
    m->tgt = new_buf(m, nt, "target logits");
    m->emb_full = new_buf(m, (size_t)m->b.nrows * T * C, "embedding exchange");
    if (m->opt.with_grads) {
        act(m, &m->dn, C, m->nbh);
        act(m, &m->dx, C, m->nbh);
        act(m, &m->dq, HD, m->qnb);
        act(m, &m->dy, HD, m->qnb);
        act(m, &m->dk, KD, D);
        act(m, &m->dv, KD, D);
        act(m, &m->dh1, F, m->nbf);
        if (llama)
            act(m, &m->dh2, F, m->nbf);
        act(m, &m->da, F, m->nbf);
        if (llama && c->qk_norm) {
            act(m, &m->dqr, HD, m->qnb);
            act(m, &m->dkr, KD, D);
        }
        if (llama && c->norm_style != PREFOPT_NORM_PRE)
            act(m, &m->dc, C, m->nbh);
        if (m->lora.r > 0) {
            int wide = C > HD ? C : HD;
            wide = wide > F ? wide : F;
            act(m, &m->ldu, m->lora.r, m->lora.r);
            if (m->lora.dropout > 0) { /* the dropped input and its gradient: lora.c gives them x's layout */
                m->lxd.data = new_buf(m, (nt > 0 ? nt : 1) * (size_t)wide, "LoRA dropout");
                m->lxg.data = new_buf(m, (nt > 0 ? nt : 1) * (size_t)wide, "LoRA dropout");
            }
        }
    }
}

/* ---- forward and backward -------------------------------------------------------------------------------- */

static void copy_dmat(prefopt_dmat *dst, const prefopt_dmat *src)
{
    memcpy(dst->data, src->data, prefopt_dmat_local_size(src) * sizeof(float));
}

static void zero_dmat(prefopt_dmat *a) { memset(a->data, 0, prefopt_dmat_local_size(a) * sizeof(float)); }

/* y := x + z elementwise (same distribution) */
static void add_dmat(prefopt_dmat *y, const prefopt_dmat *x, const prefopt_dmat *z)
{
    size_t n = prefopt_dmat_local_size(y);
    for (size_t e = 0; e < n; e++)
        y->data[e] = x->data[e] + z->data[e];
}

/* One block. Llama (norm_style PRE): xmid = x + attn(norm1(x)), out = xmid + mlp(norm2(xmid)). OLMo 2 (POST):
 * xmid = x + norm_pa(attn(x)), out = xmid + norm_pf(mlp(xmid)). Gemma (SANDWICH): xmid = x +
 * norm_pa(attn(norm1(x))), out = xmid + norm_pf(mlp(norm2(xmid))). attn's q and k pass through their norms
 * (qk_norm) before RoPE. */
static void layer_forward(prefopt_model *m, int l, layer_acts *A, const prefopt_dmat *x, prefopt_dmat *xout)
{
    const layer_params *P = &m->layers[l];
    prefopt_region_enter_n("layer", l);
    const int qkn = m->cfg.qk_norm;
    const prefopt_dmat *ain = x;
    if (P->ln1_w) {
        pf_norm_forward(m, &A->n1, A->n1_mean, A->n1_rstd, x, P->ln1_w, P->ln1_b);
        ain = &A->n1;
    }
    /* LoRA adds to each projection's output, before the q/k norms (PEFT wraps q_proj and k_proj) */
    prefopt_dmat *qo = qkn ? &A->qr : &A->q, *ko = qkn ? &A->kr : &A->k;
    pf_linear_forward(qo, ain, P->wq, P->bq, 0.0f);
    pf_lora_forward(m, l, PF_LQ, qo, ain, &A->lu[PF_LQ]);
    pf_linear_forward(ko, ain, P->wk, P->bk, 0.0f);
    pf_lora_forward(m, l, PF_LK, ko, ain, &A->lu[PF_LK]);
    pf_linear_forward(&A->v, ain, P->wv, P->bv, 0.0f);
    pf_lora_forward(m, l, PF_LV, &A->v, ain, &A->lu[PF_LV]);
    if (qkn == PREFOPT_QK_NORM_HEAD) {
        pf_head_norm_forward(m, &A->q, A->qn_rstd, &A->qr, P->q_norm);
        pf_head_norm_forward(m, &A->k, A->kn_rstd, &A->kr, P->k_norm);
    } else if (qkn == PREFOPT_QK_NORM_FULL) {
        pf_norm_forward(m, &A->q, A->qn_mean, A->qn_rstd, &A->qr, P->q_norm, NULL);
        pf_norm_forward(m, &A->k, A->kn_mean, A->kn_rstd, &A->kr, P->k_norm, NULL);
    }
    if (m->cfg.arch == PREFOPT_ARCH_LLAMA) {
        pf_rope_apply(m, l, &A->q, 0);
        pf_rope_apply(m, l, &A->k, 0);
    }
    prefopt_region_enter("attention");
    if (m->decoding)
        pf_attention_cached(m, l, &A->y, &A->q, &A->k, &A->v);
    else
        pf_attention_forward(m, l, &A->y, A->att, &A->q, &A->k, &A->v);
    prefopt_region_exit("attention");
    if (P->ln_pa) {
        pf_linear_forward(&A->ao, &A->y, P->wo, P->bo, 0.0f);
        pf_lora_forward(m, l, PF_LO, &A->ao, &A->y, &A->lu[PF_LO]);
        pf_norm_forward(m, &m->tmpc, A->pa_mean, A->pa_rstd, &A->ao, P->ln_pa, NULL);
        add_dmat(&A->xmid, x, &m->tmpc);
    } else {
        copy_dmat(&A->xmid, x);
        pf_linear_forward(&A->xmid, &A->y, P->wo, P->bo, 1.0f);
        pf_lora_forward(m, l, PF_LO, &A->xmid, &A->y, &A->lu[PF_LO]);
    }
    const prefopt_dmat *min = &A->xmid;
    if (P->ln2_w) {
        pf_norm_forward(m, &A->n2, A->n2_mean, A->n2_rstd, &A->xmid, P->ln2_w, P->ln2_b);
        min = &A->n2;
    }
    pf_linear_forward(&A->h1, min, P->wfc, P->bfc, 0.0f);
    pf_lora_forward(m, l, PF_LFC, &A->h1, min, &A->lu[PF_LFC]);
    if (P->wup) {
        pf_linear_forward(&A->h2, min, P->wup, NULL, 0.0f);
        pf_lora_forward(m, l, PF_LUP, &A->h2, min, &A->lu[PF_LUP]);
    }
    pf_mlp_act_forward(m, &A->a, &A->h1, &A->h2);
    if (P->ln_pf) {
        pf_linear_forward(&A->mo, &A->a, P->wdown, P->bdown, 0.0f);
        pf_lora_forward(m, l, PF_LDOWN, &A->mo, &A->a, &A->lu[PF_LDOWN]);
        pf_norm_forward(m, &m->tmpc, A->pf_mean, A->pf_rstd, &A->mo, P->ln_pf, NULL);
        add_dmat(xout, &A->xmid, &m->tmpc);
    } else {
        copy_dmat(xout, &A->xmid);
        pf_linear_forward(xout, &A->a, P->wdown, P->bdown, 1.0f);
        pf_lora_forward(m, l, PF_LDOWN, xout, &A->a, &A->lu[PF_LDOWN]);
    }
    prefopt_region_exit("layer");
}

static void notify_ready(prefopt_model *m, size_t ready)
{
    if (m->ready_fn)
        m->ready_fn(m->ready_ctx, ready);
}

/* The row-vector gradients of registry parameters [a, b): each process row summed its own tokens; add up the
 * process rows (one all-reduce over grid->col: the part's scratch is contiguous) and into the gradients. Frozen
 * parameters (a LoRA base) have none. */
static void flush_vgrads(prefopt_model *m, int a, int b)
{
    size_t lo = SIZE_MAX, hi = 0;
    for (int i = a; i < b; i++)
        if (m->values[i].rep_rows && m->params[i].grad) {
            size_t o = m->vscr_offset[i], e = o + prefopt_dmat_local_size(&m->values[i]);
            lo = o < lo ? o : lo;
            hi = e > hi ? e : hi;
        }
    if (hi <= lo)
        return;
    if (m->g->nprow > 1)
        MPI_Allreduce(MPI_IN_PLACE, m->vscr + lo, (int)(hi - lo), MPI_FLOAT, MPI_SUM, m->g->col);
    for (int i = a; i < b; i++) {
        if (!m->values[i].rep_rows || !m->params[i].grad)
            continue;
        float *gd = m->grads[i].data, *s = m->vscr + m->vscr_offset[i];
        for (size_t e = 0; e < prefopt_dmat_local_size(&m->grads[i]); e++)
            gd[e] += s[e];
    }
}

/* m->dx holds d loss / d (layer output) on entry and d loss / d (layer input) on return. */
static void layer_backward(prefopt_model *m, int l, layer_acts *A, const prefopt_dmat *x)
{
    const layer_params *P = &m->layers[l];
    prefopt_region_enter_n("layer", l);
    const int qkn = m->cfg.qk_norm;
    const prefopt_dmat *dmo = &m->dx;
    if (P->ln_pf) {
        zero_dmat(&m->dc);
        pf_norm_backward(m, &m->dc, &m->dx, &A->mo, A->pf_mean, A->pf_rstd, P->ln_pf, NULL);
        dmo = &m->dc;
    }
    pf_linear_backward(m, &m->da, 0.0f, dmo, &A->a, P->wdown, P->bdown);
    pf_lora_backward(m, l, PF_LDOWN, &m->da, dmo, &A->a, &A->lu[PF_LDOWN]);
    pf_mlp_act_backward(m, &m->dh1, &m->dh2, &m->da, &A->h1, &A->h2);
    if (P->ln2_w) {
        pf_linear_backward(m, &m->dn, 0.0f, &m->dh1, &A->n2, P->wfc, P->bfc);
        pf_lora_backward(m, l, PF_LFC, &m->dn, &m->dh1, &A->n2, &A->lu[PF_LFC]);
        if (P->wup) {
            pf_linear_backward(m, &m->dn, 1.0f, &m->dh2, &A->n2, P->wup, NULL);
            pf_lora_backward(m, l, PF_LUP, &m->dn, &m->dh2, &A->n2, &A->lu[PF_LUP]);
        }
        pf_norm_backward(m, &m->dx, &m->dn, &A->xmid, A->n2_mean, A->n2_rstd, P->ln2_w, P->ln2_b);
    } else { /* the MLP reads xmid itself */
        pf_linear_backward(m, &m->dx, 1.0f, &m->dh1, &A->xmid, P->wfc, P->bfc);
        pf_lora_backward(m, l, PF_LFC, &m->dx, &m->dh1, &A->xmid, &A->lu[PF_LFC]);
        pf_linear_backward(m, &m->dx, 1.0f, &m->dh2, &A->xmid, P->wup, NULL);
        pf_lora_backward(m, l, PF_LUP, &m->dx, &m->dh2, &A->xmid, &A->lu[PF_LUP]);
    }
    notify_ready(m, m->ready_at[m->cfg.num_layers - l - 1]); /* nothing new: a chance to poll */
    const prefopt_dmat *dao = &m->dx; /* m->dx is now d xmid */
    if (P->ln_pa) {
        zero_dmat(&m->dc);
        pf_norm_backward(m, &m->dc, &m->dx, &A->ao, A->pa_mean, A->pa_rstd, P->ln_pa, NULL);
        dao = &m->dc;
    }
    pf_linear_backward(m, &m->dy, 0.0f, dao, &A->y, P->wo, P->bo);
    pf_lora_backward(m, l, PF_LO, &m->dy, dao, &A->y, &A->lu[PF_LO]);
    prefopt_region_enter("attention");
    pf_attention_backward(m, l, &m->dq, &m->dk, &m->dv, &m->dy, A->att, &A->q, &A->k, &A->v, &A->y);
    prefopt_region_exit("attention");
    if (m->cfg.arch == PREFOPT_ARCH_LLAMA) {
        pf_rope_apply(m, l, &m->dq, 1);
        pf_rope_apply(m, l, &m->dk, 1);
    }
    const prefopt_dmat *dq = &m->dq, *dk = &m->dk, *xq = P->ln1_w ? &A->n1 : x;
    if (qkn) {
        zero_dmat(&m->dqr);
        zero_dmat(&m->dkr);
        if (qkn == PREFOPT_QK_NORM_HEAD) {
            pf_head_norm_backward(m, &m->dqr, &m->dq, &A->qr, A->qn_rstd, P->q_norm);
            pf_head_norm_backward(m, &m->dkr, &m->dk, &A->kr, A->kn_rstd, P->k_norm);
        } else {
            pf_norm_backward(m, &m->dqr, &m->dq, &A->qr, A->qn_mean, A->qn_rstd, P->q_norm, NULL);
            pf_norm_backward(m, &m->dkr, &m->dk, &A->kr, A->kn_mean, A->kn_rstd, P->k_norm, NULL);
        }
        dq = &m->dqr;
        dk = &m->dkr;
    }
    prefopt_dmat *dxq = P->ln1_w ? &m->dn : &m->dx; /* OLMo 2: q, k, v read the layer input itself */
    pf_linear_backward(m, dxq, P->ln1_w ? 0.0f : 1.0f, dq, xq, P->wq, P->bq);
    pf_lora_backward(m, l, PF_LQ, dxq, dq, xq, &A->lu[PF_LQ]);
    pf_linear_backward(m, dxq, 1.0f, dk, xq, P->wk, P->bk);
    pf_lora_backward(m, l, PF_LK, dxq, dk, xq, &A->lu[PF_LK]);
    pf_linear_backward(m, dxq, 1.0f, &m->dv, xq, P->wv, P->bv);
    pf_lora_backward(m, l, PF_LV, dxq, &m->dv, xq, &A->lu[PF_LV]);
    if (P->ln1_w)
        pf_norm_backward(m, &m->dx, &m->dn, x, A->n1_mean, A->n1_rstd, P->ln1_w, P->ln1_b);
    prefopt_region_exit("layer");
}

/* embeddings, blocks and the final norm: m->xf holds the normed hidden states of every token */
int pf_run_trunk(prefopt_model *m, const prefopt_batch *b, prefopt_err *err)
{
    pf_bf16_sync(m);
    if (check_batch(m, b, err))
        return -1;
    copy_batch(m, b);
    alloc_acts(m);
    if (m->cfg.arch == PREFOPT_ARCH_LLAMA)
        pf_rope_tables(m);
    const int L = m->cfg.num_layers;
    if (m->need_fn)
        m->need_fn(m->need_ctx, m->ready_at[L]);
    pf_embed_forward(m, &m->xs[0]);
    for (int l = 0; l < L; l++) {
        if (m->need_fn)
            m->need_fn(m->need_ctx, m->ready_at[L - l - 1]);
        layer_forward(m, l, &m->acts[m->nacts == 1 ? 0 : l], &m->xs[l], &m->xs[l + 1]);
    }
    if (m->need_fn)
        m->need_fn(m->need_ctx, 0);
    pf_norm_forward(m, &m->xf, m->nf_mean, m->nf_rstd, &m->xs[L], m->lnf_w, m->lnf_b);
    return 0;
}

int prefopt_model_forward(prefopt_model *m, const prefopt_batch *b, prefopt_unit_stats *out, prefopt_err *err)
{
    if (m->lora_on && m->lora_train)
        m->lora_fwd++; /* a new dropout mask (a checkpointing recompute in backward reuses this one) */
    if (pf_run_trunk(m, b, err))
        return -1;
    prefopt_region_enter("lm_head");
    pf_head_forward(m, out);
    prefopt_region_exit("lm_head");
    return 0;
}

/* The rows' last hidden states go into an nrows x C dmat with mb = 1, which deals row r to process row
 * r % nprow exactly as the batch's sequences are dealt, so the copy is local; only nrows x V logits are formed
 * and gathered. A row with last[r] < 0 gets zero logits. */
void prefopt_model_backward(prefopt_model *m, const float *d_completion, const float *d_all)
{
    if (!m->opt.with_grads || !m->have_batch)
        prefopt_die("prefopt_model_backward: %s", m->opt.with_grads ? "no forward before backward"
                                                                     : "the model was made without gradients");
    const int L = m->cfg.num_layers;
    if (m->lora.r > 0 && !m->lora_on)
        prefopt_die("prefopt_model_backward: the LoRA adapters were off in the last forward");
    memset(m->vscr, 0, m->vscr_count * sizeof(float));
    prefopt_region_enter("lm_head");
    pf_head_backward(m, d_completion, d_all); /* d xf -> m->dn */
    prefopt_region_exit("lm_head");
    memset(m->dx.data, 0, prefopt_dmat_local_size(&m->dx) * sizeof(float));
    pf_norm_backward(m, &m->dx, &m->dn, &m->xs[L], m->nf_mean, m->nf_rstd, m->lnf_w, m->lnf_b);
    flush_vgrads(m, m->layer_first[L], m->nparams);
    notify_ready(m, m->ready_at[0]);
    for (int l = L - 1; l >= 0; l--) {
        layer_acts *A = &m->acts[m->nacts == 1 ? 0 : l];
        if (m->nacts == 1 && l < L - 1) /* checkpointing: recompute (the last layer is still in place) */
            layer_forward(m, l, A, &m->xs[l], &m->xs[l + 1]);
        layer_backward(m, l, A, &m->xs[l]);
        flush_vgrads(m, m->layer_first[l], m->layer_first[l + 1]);
        notify_ready(m, m->ready_at[L - l]);
    }
    pf_embed_backward(m, &m->dx);
    flush_vgrads(m, 0, m->layer_first[0]);
    notify_ready(m, m->train_count);
}

int prefopt_model_grad_boundaries(const prefopt_model *m, size_t *out)
{
    const int n = m->cfg.num_layers + 2;
    if (out)
        memcpy(out, m->ready_at, sizeof *out * (size_t)n);
    return n;
}

void prefopt_model_set_grad_ready_hook(prefopt_model *m, prefopt_grad_ready_fn fn, void *ctx)
{
    m->ready_fn = fn;
    m->ready_ctx = ctx;
}

void prefopt_model_set_param_need_hook(prefopt_model *m, prefopt_param_need_fn fn, void *ctx)
{
    m->need_fn = fn;
    m->need_ctx = ctx;
}

void prefopt_model_set_grad_bucket(prefopt_model *m, size_t floats) { m->bucket = floats; }

void prefopt_model_set_completion_logits_only(prefopt_model *m, int on)
{
    m->head_kept_only = on != 0;
    pf_free_acts(m); /* the compact head's buffers are allocated with the activations */
    m->have_batch = 0;
}

void prefopt_model_set_logits_budget(prefopt_model *m, size_t bytes)
{
    m->logits_budget = bytes;
    pf_free_acts(m); /* re-plan the head chunks at the next forward */
    m->have_batch = 0;
}

/* Buckets of 8M floats (32 MB) by default: large enough to run at bandwidth, small enough not to double peak
 * memory inside MPI. */
void prefopt_model_allreduce_grads(prefopt_model *m)
{
    if (!m->grad_data || m->g->dp_size == 1)
        return;
    const size_t bucket = m->bucket ? m->bucket : (size_t)8 << 20, count = m->train_count;
    for (size_t off = 0; off < count; off += bucket) { /* with LoRA: the adapters' gradients only */
        size_t n = count - off < bucket ? count - off : bucket;
        prefopt_region_enter_n("bucket", (int)(off / bucket));
        MPI_Allreduce(MPI_IN_PLACE, m->grad_data + off, (int)n, MPI_FLOAT, MPI_SUM, m->g->dp);
        prefopt_region_exit("bucket");
    }
}

double prefopt_model_forward_flops(const prefopt_model *m, const prefopt_batch *b)
{
    const prefopt_model_config *c = &m->cfg;
    double C = c->hidden_size, HD = (double)c->num_heads * c->head_dim, KD = (double)c->num_kv_heads * c->head_dim;
    double F = c->intermediate_size, nmlp = c->arch == PREFOPT_ARCH_LLAMA ? 3 : 2;
    double tok = (double)b->nrows * b->T;
    double per_layer = 2 * tok * (C * HD + 2 * C * KD + HD * C + nmlp * C * F) + 4.0 * b->nrows * b->T * b->T * HD;
    return c->num_layers * per_layer + 2 * (double)b->nrows * pf_head_rows_per_seq(m, b) * C * c->vocab_size;
}
