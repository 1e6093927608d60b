/* The transformer's parameters: the registry of named logical tensors and their distribution, the flat local
 * buffers of weights and gradients, the grid-independent init, and whole-model weight copies. The forward and
 * backward drivers are in model.c, generation in decode.c, the block pieces in layers.c, attention.c, head.c. */
#include "model_internal.h"

#include "prefopt/gemm_local.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

enum { INIT_ZERO, INIT_ONE, INIT_NORMAL, INIT_NORMAL_RESID, INIT_KAIMING_A };

/* ---- registry ---------------------------------------------------------------------------------------- */

typedef struct {
    prefopt_model *m;
    int *init_kind;
    int cap;
    int trained; /* the tensors being added get gradients */
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
    p->grad = m->opt.with_grads && r->trained ? &m->grads[i] : NULL;
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
    reg_ctx r = {m, init_kind, cap, m->lora.r == 0};
    const int C = c->hidden_size, HD = c->num_heads * c->head_dim, KD = c->num_kv_heads * c->head_dim;
    const int F = c->intermediate_size, V = c->vocab_size, D = c->head_dim;
    const int nbh = m->nbh, nbf = m->nbf, nbv = m->nbv, qnb = m->qnb;
    char n[96];
    const int gpt2 = c->arch == PREFOPT_ARCH_GPT2;
    const int one = c->norm_unit_offset ? INIT_ZERO : INIT_ONE; /* Gemma's norms scale by (1 + w) */
    m->wte = add_param(&r, gpt2 ? "wte" : "embed_tokens", V, C, nbh, nbv, INIT_NORMAL);
    if (gpt2)
        m->wpe = add_param(&r, "wpe", c->max_position, C, nbh, nbv, INIT_NORMAL);
    for (int l = 0; l < c->num_layers; l++) {
        layer_params *P = &m->layers[l];
        m->layer_first[l] = m->nparams;
        const char *pre = gpt2 ? "h" : "layers", *ap = gpt2 ? "attn" : "self_attn";
/* the names of the table in model.h: <pre>.<l>.<suffix> and <pre>.<l>.<attn>.<suffix> */
#define NAME(fmt) (snprintf(n, sizeof n, "%s.%d." fmt, pre, l), n)
#define NAME2(fmt) (snprintf(n, sizeof n, "%s.%d.%s." fmt, pre, l, ap), n)
        if (gpt2) {
            P->ln1_w = add_param(&r, NAME("ln_1.weight"), C, 0, 1, nbh, INIT_ONE);
            P->ln1_b = add_param(&r, NAME("ln_1.bias"), C, 0, 1, nbh, INIT_ZERO);
        } else if (c->norm_style != PREFOPT_NORM_POST) {
            P->ln1_w = add_param(&r, NAME("input_layernorm.weight"), C, 0, 1, nbh, one);
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
            /* per-head norms: one [D] vector on process column 0 (broadcast where used); whole-projection norms
             * are distributed like q and k */
            if (c->qk_norm == PREFOPT_QK_NORM_HEAD) {
                P->q_norm = add_param(&r, NAME2("q_norm.weight"), D, 0, 1, D, one);
                P->k_norm = add_param(&r, NAME2("k_norm.weight"), D, 0, 1, D, one);
            } else if (c->qk_norm == PREFOPT_QK_NORM_FULL) {
                P->q_norm = add_param(&r, NAME2("q_norm.weight"), HD, 0, 1, qnb, one);
                P->k_norm = add_param(&r, NAME2("k_norm.weight"), KD, 0, 1, D, one);
            }
        }
        if (gpt2) {
            P->ln2_w = add_param(&r, NAME("ln_2.weight"), C, 0, 1, nbh, INIT_ONE);
            P->ln2_b = add_param(&r, NAME("ln_2.bias"), C, 0, 1, nbh, INIT_ZERO);
            P->wfc = add_param(&r, NAME("mlp.c_fc.weight"), F, C, nbh, nbf, INIT_NORMAL);
            P->bfc = add_param(&r, NAME("mlp.c_fc.bias"), F, 0, 1, nbf, INIT_ZERO);
            P->wdown = add_param(&r, NAME("mlp.c_proj.weight"), C, F, nbf, nbh, INIT_NORMAL_RESID);
            P->bdown = add_param(&r, NAME("mlp.c_proj.bias"), C, 0, 1, nbh, INIT_ZERO);
        } else {
            if (c->norm_style == PREFOPT_NORM_PRE)
                P->ln2_w = add_param(&r, NAME("post_attention_layernorm.weight"), C, 0, 1, nbh, one);
            else /* OLMo 2, Gemma: post_attention_layernorm normalises the attention's output */
                P->ln_pa = add_param(&r, NAME("post_attention_layernorm.weight"), C, 0, 1, nbh, one);
            if (c->norm_style == PREFOPT_NORM_SANDWICH)
                P->ln2_w = add_param(&r, NAME("pre_feedforward_layernorm.weight"), C, 0, 1, nbh, one);
            if (c->norm_style != PREFOPT_NORM_PRE)
                P->ln_pf = add_param(&r, NAME("post_feedforward_layernorm.weight"), C, 0, 1, nbh, one);
            P->wfc = add_param(&r, NAME("mlp.gate_proj.weight"), F, C, nbh, nbf, INIT_NORMAL);
            P->wup = add_param(&r, NAME("mlp.up_proj.weight"), F, C, nbh, nbf, INIT_NORMAL);
            P->wdown = add_param(&r, NAME("mlp.down_proj.weight"), C, F, nbf, nbh, INIT_NORMAL_RESID);
        }
#undef NAME
#undef NAME2
    }
    m->layer_first[c->num_layers] = m->nparams;
    if (gpt2) {
        m->lnf_w = add_param(&r, "ln_f.weight", C, 0, 1, nbh, INIT_ONE);
        m->lnf_b = add_param(&r, "ln_f.bias", C, 0, 1, nbh, INIT_ZERO);
    } else {
        m->lnf_w = add_param(&r, "norm.weight", C, 0, 1, nbh, one);
    }
    m->head = m->wte;
    if (!c->tie_word_embeddings)
        m->head = add_param(&r, "lm_head.weight", V, C, nbh, nbv, INIT_NORMAL);
    /* LoRA adapters after every base tensor: their pieces are the flat buffers' tail, the only part trained */
    m->first_lora = m->nparams;
    if (m->lora.r <= 0)
        return;
    r.trained = 1;
    for (int l = 0; l < c->num_layers; l++) {
        layer_params *P = &m->layers[l];
        m->lora_first[l] = m->nparams;
        prefopt_param *w[PREFOPT_LORA_NKIND] = {P->wq, P->wk, P->wv, P->wo, P->wfc, P->wup, P->wdown};
        for (int k = 0; k < PREFOPT_LORA_NKIND; k++) {
            if (!(m->lora.targets & (1u << k)) || !w[k])
                continue;
            const prefopt_param *W = w[k];
            const int in = (int)W->shape[1], out = (int)W->shape[0], rk = m->lora.r;
            size_t stem = strlen(W->name) - strlen(".weight"); /* "h.0.attn.q_proj" */
            snprintf(n, sizeof n, "%.*s.lora_AT", (int)stem, W->name);
            P->lora_at[k] = add_param(&r, n, in, rk, rk, W->value->mb, INIT_KAIMING_A);
            snprintf(n, sizeof n, "%.*s.lora_B", (int)stem, W->name);
            P->lora_b[k] = add_param(&r, n, out, rk, rk, W->value->nb, INIT_ZERO);
        }
    }
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
    if (c->num_layers > PREFOPT_MAX_LAYERS)
        return prefopt_err_set(err, "model config: %d layers, at most %d", c->num_layers, PREFOPT_MAX_LAYERS), -1;
    if (c->arch == PREFOPT_ARCH_GPT2 && (c->qk_norm || c->norm_style || c->norm_unit_offset || c->mlp_act ||
                                         c->rope_dim || c->sliding_window || c->fused_qkv || c->embed_scale ||
                                         c->attn_scale || c->attn_softcap || c->final_softcap))
        return prefopt_err_set(err, "model config: gpt2 has none of the Llama family's variants"), -1;
    if (c->rope_dim && (c->rope_dim < 2 || c->rope_dim % 2 || c->rope_dim > c->head_dim))
        return prefopt_err_set(err, "model config: rope_dim %d must be even and in [2, head_dim %d]", c->rope_dim,
                               c->head_dim),
               -1;
    if (c->sliding_window < 0 || c->attn_softcap < 0 || c->final_softcap < 0 || c->attn_scale < 0 ||
        c->embed_scale < 0 || c->rope_local_theta < 0 || c->rope_linear_factor < 0)
        return prefopt_err_set(err, "model config: negative sliding_window, soft-cap, scale or RoPE setting"), -1;
    if ((unsigned)c->qk_norm > 2 || (unsigned)c->norm_style > 2 || (unsigned)c->mlp_act > 1)
        return prefopt_err_set(err, "model config: unknown qk_norm %d, norm_style %d or mlp_act %d", c->qk_norm,
                               c->norm_style, c->mlp_act),
               -1;
    if (!(c->norm_eps > 0))
        return prefopt_err_set(err, "model config: norm eps must be > 0 (%g)", (double)c->norm_eps), -1;
    return 0;
}

prefopt_model *prefopt_model_create(const prefopt_model_config *cfg, const prefopt_grid *g,
                                    const prefopt_model_options *opt, prefopt_err *err)
{
    return prefopt_model_create_lora(cfg, g, opt, NULL, err);
}

prefopt_model *prefopt_model_create_lora(const prefopt_model_config *cfg, const prefopt_grid *g,
                                         const prefopt_model_options *opt, const prefopt_lora_config *lora,
                                         prefopt_err *err)
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
    if (lora)
        m->lora = *lora;
    if (m->lora.r < 0 || (m->lora.r > 0 && (!m->lora.targets || !(m->lora.alpha > 0) ||
                                            !(m->lora.dropout >= 0 && m->lora.dropout < 1)))) {
        prefopt_err_set(err, "model: LoRA needs r >= 0, alpha > 0, 0 <= dropout < 1 and targets (r %d, alpha %g, "
                             "dropout %g)", m->lora.r, (double)m->lora.alpha, (double)m->lora.dropout);
        free(m);
        return NULL;
    }
    m->lora_on = 1;
    int cap = 8 + (20 + 2 * PREFOPT_LORA_NKIND) * cfg->num_layers;
    m->params = prefopt_xcalloc(cap, sizeof *m->params, "parameter table");
    m->values = prefopt_xcalloc(cap, sizeof *m->values, "parameter dmats");
    m->grads = prefopt_xcalloc(cap, sizeof *m->grads, "gradient dmats");
    m->offset = prefopt_xcalloc(cap, sizeof *m->offset, "parameter offsets");
    m->vscr_offset = prefopt_xcalloc(cap, sizeof *m->vscr_offset, "row-vector offsets");
    m->layers = prefopt_xcalloc(cfg->num_layers, sizeof *m->layers, "layer table");
    m->layer_first = prefopt_xcalloc((size_t)cfg->num_layers + 1, sizeof *m->layer_first, "layer table");
    m->ready_at = prefopt_xcalloc((size_t)cfg->num_layers + 2, sizeof *m->ready_at, "layer table");
    m->lora_first = prefopt_xcalloc((size_t)cfg->num_layers + 1, sizeof *m->lora_first, "layer table");
    int *kind = prefopt_xcalloc(cap, sizeof *kind, "init kinds");
    build_registry(m, kind, cap);
    /* Each piece starts on a 64-byte boundary of the flat buffers. The pieces lie in reverse registry order
     * (head, final norm, last layer, ..., first layer, embeddings): the order in which backward finishes them, so
     * the data-parallel gradient buckets are contiguous and each can be reduced as soon as backward has passed it
     * (Megatron's layout). The row-vector scratch follows the same order, so one layer's part is contiguous. */
    size_t off = 0, voff = 0;
    /* The trained pieces come first (with LoRA: the adapters, the last layer's first; without: everything), then
     * the frozen base: the gradient buffer, the optimizer and the data-parallel buckets cover [0, train_count). */
    for (int pass = 1; pass >= 0; pass--) {
        for (int i = m->nparams - 1; i >= 0; i--) {
            if (prefopt_model_param_trained(m, i) != pass)
                continue;
            m->offset[i] = off;
            off += (prefopt_dmat_local_size(&m->values[i]) + 15) & ~(size_t)15;
            m->vscr_offset[i] = voff;
            if (m->values[i].rep_rows && m->params[i].grad)
                voff += prefopt_dmat_local_size(&m->values[i]);
        }
        if (pass)
            m->train_count = off;
    }
    m->flat_count = off;
    /* ready_at[0]: after the head and the final norm; ready_at[L - l]: after layer l; ready_at[L + 1]: all trained.
     * Without LoRA the boundary after layer l is where the piece registered just before layer l starts; with LoRA,
     * where the adapter registered just before layer l's adapters starts (nothing is final after the head). */
    const int L = cfg->num_layers;
    for (int l = L; l >= 0; l--) {
        if (m->lora.r <= 0)
            m->ready_at[L - l] = m->offset[m->layer_first[l] - 1];
        else
            m->ready_at[L - l] = l == L ? 0
                                 : m->lora_first[l] > m->first_lora ? m->offset[m->lora_first[l] - 1]
                                                                     : m->train_count;
    }
    m->ready_at[L + 1] = m->train_count;
    m->vscr_count = voff;
    m->param_data = prefopt_xcalloc(off + 16, sizeof(float), "parameters");
    if (m->opt.with_grads) { /* with LoRA the gradient buffer holds the adapters only */
        m->grad_data = prefopt_xcalloc(m->train_count + 16, sizeof(float), "gradients");
        m->vscr = prefopt_xcalloc(voff + 1, sizeof(float), "row-vector gradient scratch");
    }
    if (m->opt.bf16) {
        m->half_data = prefopt_xcalloc(off + 16, sizeof(uint16_t), "bf16 weight copies");
        m->half_stale = 1;
    }
    for (int i = 0; i < m->nparams; i++) {
        m->values[i].data = m->param_data + m->offset[i];
        if (m->opt.bf16 && m->params[i].ndim == 2)
            m->values[i].half = m->half_data + m->offset[i];
        if (m->params[i].grad)
            m->grads[i].data = m->grad_data + m->offset[i];
    }
    m->init_kind = kind;
    return m;
}

void prefopt_model_free(prefopt_model *m)
{
    if (!m)
        return;
    pf_free_activations(m);
    free(m->param_data);
    free(m->half_data);
    free(m->grad_data);
    free(m->vscr);
    free(m->params);
    free(m->values);
    free(m->grads);
    free(m->offset);
    free(m->vscr_offset);
    free(m->init_kind);
    free(m->layers);
    free(m->layer_first);
    free(m->ready_at);
    free(m->lora_first);
    free(m);
}

const prefopt_model_config *prefopt_model_get_config(const prefopt_model *m) { return &m->cfg; }
const prefopt_grid *prefopt_model_get_grid(const prefopt_model *m) { return m->g; }
int prefopt_model_param_count(const prefopt_model *m) { return m->nparams; }
/* the accessors that hand out writable weights mark a bf16 model's copies stale (remade at the next forward) */
prefopt_param *prefopt_model_param_at(prefopt_model *m, int i)
{
    m->half_stale = 1;
    return i >= 0 && i < m->nparams ? &m->params[i] : NULL;
}

prefopt_param *prefopt_model_param_by_name(prefopt_model *m, const char *name)
{
    m->half_stale = 1;
    for (int i = 0; i < m->nparams; i++)
        if (!strcmp(m->params[i].name, name))
            return &m->params[i];
    return NULL;
}

float *prefopt_model_param_data(prefopt_model *m, size_t *count)
{
    m->half_stale = 1;
    if (m->bf16_only) { /* no flat fp32 buffer any more */
        if (count)
            *count = 0;
        return NULL;
    }
    if (count)
        *count = m->flat_count;
    return m->param_data;
}

float *prefopt_model_grad_data(prefopt_model *m, size_t *count)
{
    if (count)
        *count = m->grad_data ? m->train_count : 0;
    return m->grad_data;
}

float *prefopt_model_train_data(prefopt_model *m, size_t *count)
{
    if (count)
        *count = m->train_count;
    return m->param_data; /* the trained pieces come first */
}

int prefopt_model_param_trained(const prefopt_model *m, int i)
{
    return i >= 0 && i < m->nparams && (m->lora.r > 0 ? i >= m->first_lora : 1);
}

int prefopt_model_param_is_lora(const prefopt_model *m, int i) { return i >= m->first_lora && i < m->nparams; }
const prefopt_lora_config *prefopt_model_lora(const prefopt_model *m) { return &m->lora; }
void prefopt_model_set_lora_enabled(prefopt_model *m, int on) { m->lora_on = on != 0; }

void prefopt_model_set_lora_train(prefopt_model *m, int on, uint64_t seed)
{
    m->lora_train = on != 0;
    m->lora_seed = seed;
    m->lora_fwd = 0;
}

/* ---- init ------------------------------------------------------------------------------------------------ */

static uint64_t splitmix64(uint64_t x)
{
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

static double uniform_at(uint64_t seed, int tensor, uint64_t idx)
{
    uint64_t h = splitmix64(splitmix64(seed ^ ((uint64_t)(tensor + 1) << 40) ^ 0x4C6F5241ull) ^ idx);
    return ((h >> 11) + 0.5) * 0x1.0p-53;
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
    if (m->bf16_only)
        prefopt_die("prefopt_model_init_random: the model keeps bf16 weights only");
    m->half_stale = 1;
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
                case INIT_KAIMING_A: /* A^T is r x in: fan_in is its column count */
                    v = (float)((2.0 * uniform_at(seed, i, idx) - 1.0) / sqrt((double)a->n));
                    break;
                default: break;
                }
                *pf_at(a, il, jl) = v;
            }
    }
}

void prefopt_model_init_lora(prefopt_model *m, uint64_t seed)
{
    for (int i = m->first_lora; i < m->nparams; i++) {
        prefopt_dmat *a = &m->values[i];
        for (int jl = 0; jl < a->nloc; jl++)
            for (int il = 0; il < a->mloc; il++) {
                uint64_t idx = (uint64_t)prefopt_dmat_col_l2g(a, jl) * a->m + prefopt_dmat_row_l2g(a, il);
                *pf_at(a, il, jl) = m->init_kind[i] == INIT_KAIMING_A
                                        ? (float)((2.0 * uniform_at(seed, i, idx) - 1.0) / sqrt((double)a->n))
                                        : 0.0f;
            }
    }
}

void prefopt_model_zero_grad(prefopt_model *m)
{
    if (m->grad_data)
        memset(m->grad_data, 0, m->train_count * sizeof(float));
}

void prefopt_model_copy_weights(prefopt_model *dst, const prefopt_model *src)
{
    if (dst->flat_count != src->flat_count)
        prefopt_die("prefopt_model_copy_weights: models differ in layout (%zu vs %zu floats)", dst->flat_count,
                    src->flat_count);
    if (dst->bf16_only) { /* round the source's masters into the copies; vectors as they are */
        for (int i = 0; i < src->nparams; i++) {
            size_t n = prefopt_dmat_local_size(&src->values[i]);
            if (src->params[i].ndim == 2)
                prefopt_bf16_from_f32(dst->half_data + dst->offset[i], src->values[i].data, n);
            else
                memcpy(dst->values[i].data, src->values[i].data, n * sizeof(float));
        }
        return;
    }
    memcpy(dst->param_data, src->param_data, src->flat_count * sizeof(float));
    dst->half_stale = 1;
}

void prefopt_model_mix_weights(prefopt_model *dst, const prefopt_model *src, float alpha)
{
    if (dst->flat_count != src->flat_count)
        prefopt_die("prefopt_model_mix_weights: models differ in layout (%zu vs %zu floats)", dst->flat_count,
                    src->flat_count);
    if (dst->bf16_only)
        prefopt_die("prefopt_model_mix_weights: the target keeps bf16 weights only (TR-DPO mixing needs fp32)");
    dst->half_stale = 1;
    for (size_t e = 0; e < src->flat_count; e++)
        dst->param_data[e] = (1.0f - alpha) * dst->param_data[e] + alpha * src->param_data[e];
}

/* ---- bf16 copies ------------------------------------------------------------------------------------------ */

void prefopt_model_weights_changed(prefopt_model *m)
{
    m->half_stale = 1;
    pf_bf16_sync(m);
}

size_t prefopt_model_weight_bytes(const prefopt_model *m)
{
    size_t b = 0;
    for (int i = 0; i < m->nparams; i++) {
        size_t n = prefopt_dmat_local_size(&m->values[i]);
        b += (m->values[i].data ? 4 * n : 0) + (m->values[i].half ? 2 * n : 0);
    }
    return b;
}
int prefopt_model_is_bf16(const prefopt_model *m) { return m->opt.bf16; }

void prefopt_model_keep_bf16_only(prefopt_model *m)
{
    if (!m->opt.bf16 || m->bf16_only)
        return;
    if (m->opt.with_grads)
        prefopt_die("prefopt_model_keep_bf16_only: a model with gradients keeps its fp32 masters");
    m->half_stale = 1;
    pf_bf16_sync(m);
    size_t nvec = 0;
    for (int i = 0; i < m->nparams; i++)
        if (m->params[i].ndim == 1)
            nvec += (prefopt_dmat_local_size(&m->values[i]) + 15) & ~(size_t)15;
    float *vec = prefopt_xcalloc(nvec + 16, sizeof(float), "vector parameters");
    for (size_t i = 0, at = 0; i < (size_t)m->nparams; i++) {
        size_t n = prefopt_dmat_local_size(&m->values[i]);
        if (m->params[i].ndim == 1) {
            memcpy(vec + at, m->values[i].data, n * sizeof(float));
            m->values[i].data = vec + at;
            at += (n + 15) & ~(size_t)15;
        } else {
            m->values[i].data = NULL;
        }
    }
    free(m->param_data);
    m->param_data = vec;
    m->bf16_only = 1;
}
