/* The transformer engine: parameter registry and flat buffers, grid-independent init, batch checks,
 * activation buffers, and the forward/backward drivers for GPT-2 and the Llama family. The block pieces are in
 * model_layers.c, attention.c and model_head.c. */
#include "model_internal.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

enum { INIT_ZERO, INIT_ONE, INIT_NORMAL, INIT_NORMAL_RESID };

/* ---- registry ---------------------------------------------------------------------------------------- */

typedef struct {
    prefopt_model *m;
    int *init_kind;
    int cap;
} reg_ctx;

static prefopt_param *add_param(reg_ctx *r, const char *name, int out, int in, int mb, int nb, int kind)
{
    prefopt_model *m = r->m;
    if (m->nparams >= r->cap)
        prefopt_die("model: parameter table overflow at %s", name);
    int i = m->nparams++;
    prefopt_param *p = &m->params[i];
    snprintf(p->name, sizeof p->name, "%s", name);
    p->value = &m->values[i];
    p->grad = m->opt.with_grads ? &m->grads[i] : NULL;
    if (in > 0) { /* 2-D: PyTorch [out][in] == column-major in x out */
        p->ndim = 2;
        p->shape[0] = out;
        p->shape[1] = in;
        prefopt_dmat_init(p->value, m->g, in, out, mb, nb);
    } else {
        p->ndim = 1;
        p->shape[0] = out;
        prefopt_dmat_init_rowvec(p->value, m->g, out, nb);
    }
    if (p->grad)
        *p->grad = *p->value;
    p->weight_decay = p->ndim == 2;
    r->init_kind[i] = kind;
    return p;
}

static void build_registry(prefopt_model *m, int *init_kind, int cap)
{
    const prefopt_model_config *c = &m->cfg;
    reg_ctx r = {m, init_kind, cap};
    const int C = c->hidden_size, HD = c->num_heads * c->head_dim, KD = c->num_kv_heads * c->head_dim;
    const int F = c->intermediate_size, V = c->vocab_size, D = c->head_dim;
    const int nbh = m->nbh, nbf = m->nbf, nbv = m->nbv, qnb = m->qnb;
    char n[96];
    const int gpt2 = c->arch == PREFOPT_ARCH_GPT2;
    m->wte = add_param(&r, gpt2 ? "wte" : "embed_tokens", V, C, nbh, nbv, INIT_NORMAL);
    if (gpt2)
        m->wpe = add_param(&r, "wpe", c->max_position, C, nbh, nbv, INIT_NORMAL);
    for (int l = 0; l < c->num_layers; l++) {
        layer_params *P = &m->layers[l];
        const char *pre = gpt2 ? "h" : "layers", *ap = gpt2 ? "attn" : "self_attn";
/* the names of the table in model.h: <pre>.<l>.<suffix> and <pre>.<l>.<attn>.<suffix> */
#define NAME(fmt) (snprintf(n, sizeof n, "%s.%d." fmt, pre, l), n)
#define NAME2(fmt) (snprintf(n, sizeof n, "%s.%d.%s." fmt, pre, l, ap), n)
        if (gpt2) {
            P->ln1_w = add_param(&r, NAME("ln_1.weight"), C, 0, 1, nbh, INIT_ONE);
            P->ln1_b = add_param(&r, NAME("ln_1.bias"), C, 0, 1, nbh, INIT_ZERO);
        } else {
            P->ln1_w = add_param(&r, NAME("input_layernorm.weight"), C, 0, 1, nbh, INIT_ONE);
        }
        P->wq = add_param(&r, NAME2("q_proj.weight"), HD, C, nbh, qnb, INIT_NORMAL);
        if (c->qkv_bias)
            P->bq = add_param(&r, NAME2("q_proj.bias"), HD, 0, 1, qnb, INIT_ZERO);
        P->wk = add_param(&r, NAME2("k_proj.weight"), KD, C, nbh, D, INIT_NORMAL);
        if (c->qkv_bias)
            P->bk = add_param(&r, NAME2("k_proj.bias"), KD, 0, 1, D, INIT_ZERO);
        P->wv = add_param(&r, NAME2("v_proj.weight"), KD, C, nbh, D, INIT_NORMAL);
        if (c->qkv_bias)
            P->bv = add_param(&r, NAME2("v_proj.bias"), KD, 0, 1, D, INIT_ZERO);
        if (gpt2) {
            P->wo = add_param(&r, NAME2("c_proj.weight"), C, HD, qnb, nbh, INIT_NORMAL_RESID);
            P->bo = add_param(&r, NAME2("c_proj.bias"), C, 0, 1, nbh, INIT_ZERO);
        } else {
            P->wo = add_param(&r, NAME2("o_proj.weight"), C, HD, qnb, nbh, INIT_NORMAL_RESID);
        }
        if (gpt2) {
            P->ln2_w = add_param(&r, NAME("ln_2.weight"), C, 0, 1, nbh, INIT_ONE);
            P->ln2_b = add_param(&r, NAME("ln_2.bias"), C, 0, 1, nbh, INIT_ZERO);
            P->wfc = add_param(&r, NAME("mlp.c_fc.weight"), F, C, nbh, nbf, INIT_NORMAL);
            P->bfc = add_param(&r, NAME("mlp.c_fc.bias"), F, 0, 1, nbf, INIT_ZERO);
            P->wdown = add_param(&r, NAME("mlp.c_proj.weight"), C, F, nbf, nbh, INIT_NORMAL_RESID);
            P->bdown = add_param(&r, NAME("mlp.c_proj.bias"), C, 0, 1, nbh, INIT_ZERO);
        } else {
            P->ln2_w = add_param(&r, NAME("post_attention_layernorm.weight"), C, 0, 1, nbh, INIT_ONE);
            P->wfc = add_param(&r, NAME("mlp.gate_proj.weight"), F, C, nbh, nbf, INIT_NORMAL);
            P->wup = add_param(&r, NAME("mlp.up_proj.weight"), F, C, nbh, nbf, INIT_NORMAL);
            P->wdown = add_param(&r, NAME("mlp.down_proj.weight"), C, F, nbf, nbh, INIT_NORMAL_RESID);
        }
#undef NAME
#undef NAME2
    }
    if (gpt2) {
        m->lnf_w = add_param(&r, "ln_f.weight", C, 0, 1, nbh, INIT_ONE);
        m->lnf_b = add_param(&r, "ln_f.bias", C, 0, 1, nbh, INIT_ZERO);
    } else {
        m->lnf_w = add_param(&r, "norm.weight", C, 0, 1, nbh, INIT_ONE);
    }
    m->head = m->wte;
    if (!c->tie_word_embeddings)
        m->head = add_param(&r, "lm_head.weight", V, C, nbh, nbv, INIT_NORMAL);
}

static int check_config(const prefopt_model_config *c, prefopt_err *err)
{
    if (c->arch != PREFOPT_ARCH_GPT2 && c->arch != PREFOPT_ARCH_LLAMA)
        return prefopt_err_set(err, "model config: unknown architecture %d", (int)c->arch), -1;
    if (c->vocab_size < 1 || c->hidden_size < 1 || c->num_layers < 1 || c->num_heads < 1 || c->num_kv_heads < 1 ||
        c->head_dim < 1 || c->intermediate_size < 1 || c->max_position < 1)
        return prefopt_err_set(err,
                               "model config: sizes must be positive (vocab_size %d, hidden_size %d, num_layers %d, "
                               "num_heads %d, num_key_value_heads %d, head_dim %d, intermediate_size %d, "
                               "max_position %d)",
                               c->vocab_size, c->hidden_size, c->num_layers, c->num_heads, c->num_kv_heads,
                               c->head_dim, c->intermediate_size, c->max_position),
               -1;
    if (c->num_heads % c->num_kv_heads)
        return prefopt_err_set(err, "model config: num_heads %d is not a multiple of num_key_value_heads %d",
                               c->num_heads, c->num_kv_heads),
               -1;
    if (c->arch == PREFOPT_ARCH_GPT2 && c->num_heads * c->head_dim != c->hidden_size)
        return prefopt_err_set(err, "model config: gpt2 needs n_head * head_dim (%d * %d) == n_embd %d",
                               c->num_heads, c->head_dim, c->hidden_size),
               -1;
    if (c->arch == PREFOPT_ARCH_LLAMA && (c->head_dim % 2 || !(c->rope_theta > 0)))
        return prefopt_err_set(err, "model config: RoPE needs an even head_dim (%d) and rope_theta > 0 (%g)",
                               c->head_dim, (double)c->rope_theta),
               -1;
    if (c->arch == PREFOPT_ARCH_LLAMA && c->rope_llama3 &&
        (!(c->rope_factor > 0) || !(c->rope_low_freq_factor > 0) ||
         !(c->rope_high_freq_factor > c->rope_low_freq_factor) || c->rope_original_max_position < 1))
        return prefopt_err_set(err,
                               "model config: llama3 rope_scaling needs factor > 0, 0 < low_freq_factor < "
                               "high_freq_factor and original_max_position_embeddings >= 1 (got %g, %g, %g, %d)",
                               (double)c->rope_factor, (double)c->rope_low_freq_factor,
                               (double)c->rope_high_freq_factor, c->rope_original_max_position),
               -1;
    if (!(c->norm_eps > 0))
        return prefopt_err_set(err, "model config: norm eps must be > 0 (%g)", (double)c->norm_eps), -1;
    return 0;
}

prefopt_model *prefopt_model_create(const prefopt_model_config *cfg, const prefopt_grid *g,
                                    const prefopt_model_options *opt, prefopt_err *err)
{
    if (check_config(cfg, err))
        return NULL;
    prefopt_model *m = prefopt_xcalloc(1, sizeof *m, "model");
    m->cfg = *cfg;
    if (opt)
        m->opt = *opt;
    m->g = g;
    m->nbh = m->opt.block_hidden > 0 ? m->opt.block_hidden : 64;
    m->nbf = m->opt.block_ffn > 0 ? m->opt.block_ffn : 256;
    m->nbv = m->opt.block_vocab > 0 ? m->opt.block_vocab : 1024;
    m->qnb = cfg->num_heads / cfg->num_kv_heads * cfg->head_dim;
    int cap = 8 + 20 * cfg->num_layers;
    m->params = prefopt_xcalloc(cap, sizeof *m->params, "parameter table");
    m->values = prefopt_xcalloc(cap, sizeof *m->values, "parameter dmats");
    m->grads = prefopt_xcalloc(cap, sizeof *m->grads, "gradient dmats");
    m->offset = prefopt_xcalloc(cap, sizeof *m->offset, "parameter offsets");
    m->vscr_offset = prefopt_xcalloc(cap, sizeof *m->vscr_offset, "row-vector offsets");
    m->layers = prefopt_xcalloc(cfg->num_layers, sizeof *m->layers, "layer table");
    int *kind = prefopt_xcalloc(cap, sizeof *kind, "init kinds");
    build_registry(m, kind, cap);
    /* each piece starts on a 64-byte boundary of the flat buffers */
    size_t off = 0, voff = 0;
    for (int i = 0; i < m->nparams; i++) {
        m->offset[i] = off;
        off += (prefopt_dmat_local_size(&m->values[i]) + 15) & ~(size_t)15;
        m->vscr_offset[i] = voff;
        if (m->values[i].rep_rows)
            voff += prefopt_dmat_local_size(&m->values[i]);
    }
    m->flat_count = off;
    m->vscr_count = voff;
    m->param_data = prefopt_xcalloc(off + 16, sizeof(float), "parameters");
    if (m->opt.with_grads) {
        m->grad_data = prefopt_xcalloc(off + 16, sizeof(float), "gradients");
        m->vscr = prefopt_xcalloc(voff + 1, sizeof(float), "row-vector gradient scratch");
    }
    for (int i = 0; i < m->nparams; i++) {
        m->values[i].data = m->param_data + m->offset[i];
        if (m->opt.with_grads)
            m->grads[i].data = m->grad_data + m->offset[i];
    }
    m->init_kind = kind;
    return m;
}

static void free_acts(prefopt_model *m)
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

void prefopt_model_free(prefopt_model *m)
{
    if (!m)
        return;
    free_acts(m);
    free_batch(m);
    free(m->rope_cos);
    free(m->rope_sin);
    free(m->kv_k);
    free(m->kv_v);
    free(m->kv_len);
    free(m->param_data);
    free(m->grad_data);
    free(m->vscr);
    free(m->params);
    free(m->values);
    free(m->grads);
    free(m->offset);
    free(m->vscr_offset);
    free(m->init_kind);
    free(m->layers);
    free(m);
}

const prefopt_model_config *prefopt_model_get_config(const prefopt_model *m) { return &m->cfg; }
const prefopt_grid *prefopt_model_get_grid(const prefopt_model *m) { return m->g; }
int prefopt_model_param_count(const prefopt_model *m) { return m->nparams; }
prefopt_param *prefopt_model_param_at(prefopt_model *m, int i) { return i >= 0 && i < m->nparams ? &m->params[i] : NULL; }

prefopt_param *prefopt_model_param_by_name(prefopt_model *m, const char *name)
{
    for (int i = 0; i < m->nparams; i++)
        if (!strcmp(m->params[i].name, name))
            return &m->params[i];
    return NULL;
}

float *prefopt_model_param_data(prefopt_model *m, size_t *count)
{
    if (count)
        *count = m->flat_count;
    return m->param_data;
}

float *prefopt_model_grad_data(prefopt_model *m, size_t *count)
{
    if (count)
        *count = m->grad_data ? m->flat_count : 0;
    return m->grad_data;
}

/* ---- init ------------------------------------------------------------------------------------------------ */

static uint64_t splitmix64(uint64_t x)
{
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

/* A standard normal that is a pure function of (seed, tensor, element): the value of a logical element does
 * not depend on which rank holds it, so every grid starts from the same model. */
static float normal_at(uint64_t seed, int tensor, uint64_t idx)
{
    uint64_t h = splitmix64(splitmix64(seed ^ ((uint64_t)(tensor + 1) << 40)) ^ idx);
    uint64_t h2 = splitmix64(h);
    double u1 = ((h >> 11) + 1.0) * 0x1.0p-53, u2 = (h2 >> 11) * 0x1.0p-53;
    return (float)(sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2));
}

void prefopt_model_init_random(prefopt_model *m, uint64_t seed)
{
    const float std = 0.02f, std_resid = 0.02f / sqrtf(2.0f * m->cfg.num_layers);
    for (int i = 0; i < m->nparams; i++) {
        prefopt_dmat *a = &m->values[i];
        for (int jl = 0; jl < a->nloc; jl++)
            for (int il = 0; il < a->mloc; il++) {
                uint64_t idx = (uint64_t)prefopt_dmat_col_l2g(a, jl) * a->m + prefopt_dmat_row_l2g(a, il);
                float v = 0;
                switch (m->init_kind[i]) {
                case INIT_ONE: v = 1; break;
                case INIT_NORMAL: v = std * normal_at(seed, i, idx); break;
                case INIT_NORMAL_RESID: v = std_resid * normal_at(seed, i, idx); break;
                default: break;
                }
                *pf_at(a, il, jl) = v;
            }
    }
}

/* ---- batch checks and buffers ------------------------------------------------------------------------- */

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
    free_acts(m);
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
        A->n1_mean = new_buf(m, nt, "norm stats");
        A->n1_rstd = new_buf(m, nt, "norm stats");
        A->n2_mean = new_buf(m, nt, "norm stats");
        A->n2_rstd = new_buf(m, nt, "norm stats");
        A->att = new_buf(m, (size_t)m->nloc_seq * (A->k.nloc / D) * (c->num_heads / c->num_kv_heads) * T,
                         "attention log-normalisers");
    }
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
    }
}

/* ---- forward and backward -------------------------------------------------------------------------------- */

static void copy_dmat(prefopt_dmat *dst, const prefopt_dmat *src)
{
    memcpy(dst->data, src->data, prefopt_dmat_local_size(src) * sizeof(float));
}

static void layer_forward(prefopt_model *m, int l, layer_acts *A, const prefopt_dmat *x, prefopt_dmat *xout)
{
    const layer_params *P = &m->layers[l];
    pf_norm_forward(m, &A->n1, A->n1_mean, A->n1_rstd, x, P->ln1_w, P->ln1_b);
    pf_linear_forward(&A->q, &A->n1, P->wq, P->bq, 0.0f);
    pf_linear_forward(&A->k, &A->n1, P->wk, P->bk, 0.0f);
    pf_linear_forward(&A->v, &A->n1, P->wv, P->bv, 0.0f);
    if (m->cfg.arch == PREFOPT_ARCH_LLAMA) {
        pf_rope_apply(m, &A->q, 0);
        pf_rope_apply(m, &A->k, 0);
    }
    if (m->decoding)
        pf_attention_cached(m, l, &A->y, &A->q, &A->k, &A->v);
    else
        pf_attention_forward(m, &A->y, A->att, &A->q, &A->k, &A->v);
    copy_dmat(&A->xmid, x);
    pf_linear_forward(&A->xmid, &A->y, P->wo, P->bo, 1.0f);
    pf_norm_forward(m, &A->n2, A->n2_mean, A->n2_rstd, &A->xmid, P->ln2_w, P->ln2_b);
    pf_linear_forward(&A->h1, &A->n2, P->wfc, P->bfc, 0.0f);
    if (P->wup)
        pf_linear_forward(&A->h2, &A->n2, P->wup, NULL, 0.0f);
    pf_mlp_act_forward(m, &A->a, &A->h1, &A->h2);
    copy_dmat(xout, &A->xmid);
    pf_linear_forward(xout, &A->a, P->wdown, P->bdown, 1.0f);
}

/* m->dx holds d loss / d (layer output) on entry and d loss / d (layer input) on return. */
static void layer_backward(prefopt_model *m, int l, layer_acts *A, const prefopt_dmat *x)
{
    const layer_params *P = &m->layers[l];
    pf_linear_backward(m, &m->da, 0.0f, &m->dx, &A->a, P->wdown, P->bdown);
    pf_mlp_act_backward(m, &m->dh1, &m->dh2, &m->da, &A->h1, &A->h2);
    pf_linear_backward(m, &m->dn, 0.0f, &m->dh1, &A->n2, P->wfc, P->bfc);
    if (P->wup)
        pf_linear_backward(m, &m->dn, 1.0f, &m->dh2, &A->n2, P->wup, NULL);
    pf_norm_backward(m, &m->dx, &m->dn, &A->xmid, A->n2_mean, A->n2_rstd, P->ln2_w, P->ln2_b);
    pf_linear_backward(m, &m->dy, 0.0f, &m->dx, &A->y, P->wo, P->bo);
    pf_attention_backward(m, &m->dq, &m->dk, &m->dv, &m->dy, A->att, &A->q, &A->k, &A->v);
    if (m->cfg.arch == PREFOPT_ARCH_LLAMA) {
        pf_rope_apply(m, &m->dq, 1);
        pf_rope_apply(m, &m->dk, 1);
    }
    pf_linear_backward(m, &m->dn, 0.0f, &m->dq, &A->n1, P->wq, P->bq);
    pf_linear_backward(m, &m->dn, 1.0f, &m->dk, &A->n1, P->wk, P->bk);
    pf_linear_backward(m, &m->dn, 1.0f, &m->dv, &A->n1, P->wv, P->bv);
    pf_norm_backward(m, &m->dx, &m->dn, x, A->n1_mean, A->n1_rstd, P->ln1_w, P->ln1_b);
}

/* embeddings, blocks and the final norm: m->xf holds the normed hidden states of every token */
static int run_trunk(prefopt_model *m, const prefopt_batch *b, prefopt_err *err)
{
    if (check_batch(m, b, err))
        return -1;
    copy_batch(m, b);
    alloc_acts(m);
    if (m->cfg.arch == PREFOPT_ARCH_LLAMA)
        pf_rope_tables(m);
    pf_embed_forward(m, &m->xs[0]);
    for (int l = 0; l < m->cfg.num_layers; l++)
        layer_forward(m, l, &m->acts[m->nacts == 1 ? 0 : l], &m->xs[l], &m->xs[l + 1]);
    pf_norm_forward(m, &m->xf, m->nf_mean, m->nf_rstd, &m->xs[m->cfg.num_layers], m->lnf_w, m->lnf_b);
    return 0;
}

int prefopt_model_forward(prefopt_model *m, const prefopt_batch *b, prefopt_unit_stats *out, prefopt_err *err)
{
    if (run_trunk(m, b, err))
        return -1;
    pf_head_forward(m, out);
    return 0;
}

/* The rows' last hidden states go into an nrows x C dmat with mb = 1, which deals row r to process row
 * r % nprow exactly as the batch's sequences are dealt, so the copy is local; only nrows x V logits are formed
 * and gathered. A row with last[r] < 0 gets zero logits. */
static void last_logits(prefopt_model *m, const int32_t *last, float *logits)
{
    const int V = m->cfg.vocab_size, C = m->cfg.hidden_size, nr = m->b.nrows, T = m->b.T;
    prefopt_dmat X, Y;
    prefopt_dmat_init(&X, m->g, nr, C, 1, m->nbh);
    prefopt_dmat_init(&Y, m->g, nr, V, 1, m->nbv);
    X.data = prefopt_xcalloc(prefopt_dmat_local_size(&X) + 1, sizeof(float), "last hidden states");
    Y.data = prefopt_xcalloc(prefopt_dmat_local_size(&Y) + 1, sizeof(float), "last logits");
    for (int il = 0; il < X.mloc; il++) {
        int r = prefopt_dmat_row_l2g(&X, il);
        if (last[r] >= 0)
            for (int jl = 0; jl < X.nloc; jl++)
                *pf_at(&X, il, jl) = *pf_at(&m->xf, il * T + last[r], jl);
    }
    prefopt_dmat_gemm('N', 'N', 1.0f, &X, m->head->value, 0.0f, &Y);
    float *full = prefopt_xmalloc(sizeof(float) * (size_t)nr * V + 4, "gathered logits");
    prefopt_dmat_gather(&Y, full);
    for (int r = 0; r < nr; r++)
        for (int v = 0; v < V; v++)
            logits[(size_t)r * V + v] = full[(size_t)v * nr + r];
    free(full);
    free(X.data);
    free(Y.data);
    m->have_batch = 0; /* nothing for backward */
}

int prefopt_model_logits_at(prefopt_model *m, const prefopt_batch *b, const int32_t *last, float *logits,
                            prefopt_err *err)
{
    for (int r = 0; r < b->nrows; r++)
        if (last[r] < 0 || last[r] >= b->T || b->seg[(size_t)r * b->T + last[r]] < 0)
            return prefopt_err_set(err, "logits_at: row %d: position %d is outside the row or padding", r, last[r]),
                   -1;
    if (run_trunk(m, b, err))
        return -1;
    last_logits(m, last, logits);
    return 0;
}

int prefopt_model_decode_begin(prefopt_model *m, int nrows, int max_len, prefopt_err *err)
{
    if (nrows < 0 || max_len < 1 || max_len > m->cfg.max_position)
        return prefopt_err_set(err, "decode: %d rows of up to %d tokens (max_position %d)", nrows, max_len,
                               m->cfg.max_position),
               -1;
    const int D = m->cfg.head_dim;
    prefopt_dmat probe;
    prefopt_dmat_init(&probe, m->g, nrows > 0 ? nrows : 1, m->cfg.num_kv_heads * D, 1, D);
    m->kv_nseq = nrows > 0 ? probe.mloc : 0;
    m->kv_nkb = probe.nloc / D;
    m->kv_rows = nrows;
    m->kv_max = max_len;
    size_t n = (size_t)m->cfg.num_layers * m->kv_nseq * m->kv_nkb * max_len * D;
    free(m->kv_k);
    free(m->kv_v);
    free(m->kv_len);
    m->kv_k = prefopt_xcalloc(n + 1, sizeof(float), "key cache");
    m->kv_v = prefopt_xcalloc(n + 1, sizeof(float), "value cache");
    m->kv_len = prefopt_xcalloc((size_t)nrows + 1, sizeof(int), "cache lengths");
    return 0;
}

int prefopt_model_decode_step(prefopt_model *m, const int32_t *tokens, const int32_t *n, int width, float *logits,
                              prefopt_err *err)
{
    if (!m->kv_len)
        return prefopt_err_set(err, "decode: no prefopt_model_decode_begin before decode_step"), -1;
    const int nr = m->kv_rows;
    for (int r = 0; r < nr; r++)
        if (n[r] < 0 || n[r] > width || m->kv_len[r] + n[r] > m->kv_max)
            return prefopt_err_set(err, "decode: row %d: %d new tokens (width %d) after %d cached exceed the cache of %d",
                                   r, n[r], width, m->kv_len[r], m->kv_max),
                   -1;
    if (width < 1)
        return prefopt_err_set(err, "decode: width %d < 1", width), -1;
    size_t nt = (size_t)nr * width;
    int32_t *pos = prefopt_xmalloc(sizeof(int32_t) * (3 * nt + 1) + nr * sizeof(int32_t), "decode batch");
    int32_t *par = pos + nt, *unit = par + nt, *last = unit + nt;
    int8_t *seg = prefopt_xmalloc(nt + 1, "decode batch");
    uint8_t *comp = prefopt_xcalloc(nt + 1, 1, "decode batch");
    for (int r = 0; r < nr; r++) {
        last[r] = n[r] - 1;
        for (int i = 0; i < width; i++) {
            size_t t = (size_t)r * width + i;
            seg[t] = i < n[r] ? 0 : -1;
            pos[t] = m->kv_len[r] + i;
            par[t] = unit[t] = -1;
        }
    }
    prefopt_batch b = {nr, width, 0, tokens, pos, seg, par, unit, comp};
    m->decoding = 1;
    int rc = run_trunk(m, &b, err);
    m->decoding = 0;
    if (!rc) {
        last_logits(m, last, logits);
        for (int r = 0; r < nr; r++)
            m->kv_len[r] += n[r];
    }
    free(pos);
    free(seg);
    free(comp);
    return rc;
}

void prefopt_model_backward(prefopt_model *m, const float *d_completion, const float *d_all)
{
    if (!m->opt.with_grads || !m->have_batch)
        prefopt_die("prefopt_model_backward: %s", m->opt.with_grads ? "no forward before backward"
                                                                     : "the model was made without gradients");
    const int L = m->cfg.num_layers;
    memset(m->vscr, 0, m->vscr_count * sizeof(float));
    pf_head_backward(m, d_completion, d_all); /* d xf -> m->dn */
    memset(m->dx.data, 0, prefopt_dmat_local_size(&m->dx) * sizeof(float));
    pf_norm_backward(m, &m->dx, &m->dn, &m->xs[L], m->nf_mean, m->nf_rstd, m->lnf_w, m->lnf_b);
    for (int l = L - 1; l >= 0; l--) {
        layer_acts *A = &m->acts[m->nacts == 1 ? 0 : l];
        if (m->nacts == 1 && l < L - 1) /* checkpointing: recompute (the last layer is still in place) */
            layer_forward(m, l, A, &m->xs[l], &m->xs[l + 1]);
        layer_backward(m, l, A, &m->xs[l]);
    }
    pf_embed_backward(m, &m->dx);
    /* row-vector gradients: each process row summed its own tokens; add up the process rows */
    if (m->vscr_count)
        MPI_Allreduce(MPI_IN_PLACE, m->vscr, (int)m->vscr_count, MPI_FLOAT, MPI_SUM, m->g->col);
    for (int i = 0; i < m->nparams; i++) {
        if (!m->values[i].rep_rows)
            continue;
        float *gd = m->grads[i].data, *s = m->vscr + m->vscr_offset[i];
        for (size_t e = 0; e < prefopt_dmat_local_size(&m->grads[i]); e++)
            gd[e] += s[e];
    }
}

void prefopt_model_zero_grad(prefopt_model *m)
{
    if (m->grad_data)
        memset(m->grad_data, 0, m->flat_count * sizeof(float));
}

void prefopt_model_set_grad_bucket(prefopt_model *m, size_t floats) { m->bucket = floats; }

void prefopt_model_set_completion_logits_only(prefopt_model *m, int on)
{
    m->head_kept_only = on != 0;
    free_acts(m); /* the compact head's buffers are allocated with the activations */
    m->have_batch = 0;
}

void prefopt_model_set_logits_budget(prefopt_model *m, size_t bytes)
{
    m->logits_budget = bytes;
    free_acts(m); /* re-plan the head chunks at the next forward */
    m->have_batch = 0;
}

/* Buckets of 8M floats (32 MB) by default: large enough to run at bandwidth, small enough not to double peak
 * memory inside MPI. */
void prefopt_model_allreduce_grads(prefopt_model *m)
{
    if (!m->grad_data || m->g->dp_size == 1)
        return;
    const size_t bucket = m->bucket ? m->bucket : (size_t)8 << 20;
    for (size_t off = 0; off < m->flat_count; off += bucket) {
        size_t n = m->flat_count - off < bucket ? m->flat_count - off : bucket;
        MPI_Allreduce(MPI_IN_PLACE, m->grad_data + off, (int)n, MPI_FLOAT, MPI_SUM, m->g->dp);
    }
}

void prefopt_model_copy_weights(prefopt_model *dst, const prefopt_model *src)
{
    if (dst->flat_count != src->flat_count)
        prefopt_die("prefopt_model_copy_weights: models differ in layout (%zu vs %zu floats)", dst->flat_count,
                    src->flat_count);
    memcpy(dst->param_data, src->param_data, src->flat_count * sizeof(float));
}

void prefopt_model_mix_weights(prefopt_model *dst, const prefopt_model *src, float alpha)
{
    if (dst->flat_count != src->flat_count)
        prefopt_die("prefopt_model_mix_weights: models differ in layout (%zu vs %zu floats)", dst->flat_count,
                    src->flat_count);
    for (size_t e = 0; e < src->flat_count; e++)
        dst->param_data[e] = (1.0f - alpha) * dst->param_data[e] + alpha * src->param_data[e];
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
