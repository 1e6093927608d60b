/* LoRA on the engine's linear layers (PEFT's LoraLayer): y = x W + b + s (dropout(x) A^T) B^T, s = alpha / r.
 * The dmat AT (r x in, PEFT's A [r][in] transposed) has its input dealt over process columns like the activation
 * x, the dmat B (r x out, PEFT's B [out][r]) its output like W, and r is one block. So on a 1 x P grid every
 * product below takes one of dmat_gemm.c's one-row paths with an r-wide collective: U = x AT^T is a local GEMM
 * over my features and a reduce-scatter of tokens x r, and dU = s dy B^T likewise; y += s U B, dB += s U^T dy,
 * dAT += dU^T x and dx += dU AT all-gather the tokens x r matrix U or dU. 2-D grids go through psgemm_. The
 * base model's own products are untouched (model.c calls these right after them). */
#include "model_internal.h"

#include <ctype.h>
#include <string.h>

/* ---- targets ----------------------------------------------------------------------------------------------- */

static const char *const llama_names[PREFOPT_LORA_NKIND] = {"q_proj",    "k_proj",  "v_proj",   "o_proj",
                                                            "gate_proj", "up_proj", "down_proj"};

const char *prefopt_lora_kind_name(unsigned kind, prefopt_arch arch)
{
    static const char *const gpt2_names[PREFOPT_LORA_NKIND] = {"q_proj", "k_proj", "v_proj", "c_proj",
                                                               "c_fc",   "",       "c_proj"};
    for (int k = 0; k < PREFOPT_LORA_NKIND; k++)
        if (kind == 1u << k)
            return arch == PREFOPT_ARCH_GPT2 ? gpt2_names[k] : llama_names[k];
    return "";
}

int prefopt_lora_parse_targets(const char *list, prefopt_arch arch, unsigned *targets, prefopt_err *err)
{
    const int gpt2 = arch == PREFOPT_ARCH_GPT2;
    unsigned t = 0;
    const char *p = list ? list : "";
    while (*p) {
        while (*p == ',' || isspace((unsigned char)*p))
            p++;
        size_t n = strcspn(p, ", \t");
        if (!n)
            break;
        char w[64];
        if (n >= sizeof w)
            return prefopt_err_set(err, "--lora-targets: '%.*s...' is not a module name", 32, p), -1;
        memcpy(w, p, n);
        w[n] = '\0';
        p += n;
        unsigned bit = 0;
        if (!strcmp(w, "all-linear"))
            bit = gpt2 ? (PREFOPT_LORA_Q | PREFOPT_LORA_K | PREFOPT_LORA_V | PREFOPT_LORA_O | PREFOPT_LORA_FC |
                          PREFOPT_LORA_DOWN)
                       : (1u << PREFOPT_LORA_NKIND) - 1;
        else if (gpt2 && !strcmp(w, "c_attn"))
            bit = PREFOPT_LORA_Q | PREFOPT_LORA_K | PREFOPT_LORA_V;
        else if (gpt2 && !strcmp(w, "c_fc"))
            bit = PREFOPT_LORA_FC;
        else if (gpt2 && !strcmp(w, "c_proj")) /* PEFT matches the suffix: attn.c_proj and mlp.c_proj */
            bit = PREFOPT_LORA_O | PREFOPT_LORA_DOWN;
        else
            for (int k = 0; k < PREFOPT_LORA_NKIND; k++)
                if (!strcmp(w, llama_names[k]))
                    bit = gpt2 && k == PF_LUP ? PREFOPT_LORA_FC : 1u << k; /* GPT-2's one MLP input is c_fc */
        if (!bit)
            return prefopt_err_set(err,
                                   "--lora-targets: unknown module '%s' for %s (q_proj, k_proj, v_proj, o_proj, "
                                   "gate_proj, up_proj, down_proj%s, all-linear)",
                                   w, gpt2 ? "gpt2" : "llama", gpt2 ? ", c_attn, c_fc, c_proj" : ""),
                   -1;
        t |= bit;
    }
    if (!t)
        return prefopt_err_set(err, "--lora-targets: no module named"), -1;
    *targets = t;
    return 0;
}

/* ---- dropout ------------------------------------------------------------------------------------------------ */

static uint64_t mix64(uint64_t x)
{
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

static int dropout_active(const prefopt_model *m)
{
    return m->lora.dropout > 0 && m->lora_train && m->opt.with_grads && !m->decoding;
}

/* out := mask .* in / (1 - p) (in and out with x's layout), the mask a function of global indices only (and of
 * the replica, so replicas draw independent masks). */
static void drop(const prefopt_model *m, int l, int k, prefopt_dmat *out, const prefopt_dmat *in)
{
    const double p = m->lora.dropout;
    const float keep = (float)(1.0 / (1.0 - p));
    const uint64_t thr = (uint64_t)(p * 18446744073709551616.0);
    const uint64_t key = mix64(mix64(m->lora_seed ^ 0x6C6F7261ull) ^ (m->lora_fwd << 20) ^
                               ((uint64_t)m->g->dp_rank << 8) ^ (uint64_t)(l * PREFOPT_LORA_NKIND + k));
#pragma omp parallel for schedule(static)
    for (int jl = 0; jl < in->nloc; jl++) {
        const uint64_t c = (uint64_t)prefopt_dmat_col_l2g(in, jl);
        const float *src = pf_at(in, 0, jl);
        float *dst = pf_at(out, 0, jl);
        for (int il = 0; il < in->mloc; il++) {
            uint64_t h = mix64(key ^ mix64(((uint64_t)prefopt_dmat_row_l2g(in, il) << 24) ^ c));
            dst[il] = h >= thr ? src[il] * keep : 0.0f;
        }
    }
}

/* ---- forward and backward ------------------------------------------------------------------------------------ */

void pf_lora_forward(prefopt_model *m, int l, int k, prefopt_dmat *y, const prefopt_dmat *x, prefopt_dmat *u)
{
    const layer_params *P = &m->layers[l];
    const prefopt_param *at = P->lora_at[k], *b = P->lora_b[k];
    if (!at || !m->lora_on)
        return;
    const float s = m->lora.alpha / (float)m->lora.r;
    prefopt_dmat xd = *x;
    if (dropout_active(m)) {
        xd.data = m->lxd.data;
        drop(m, l, k, &xd, x);
    }
    prefopt_dmat_gemm('N', 'T', 1.0f, &xd, at->value, 0.0f, u); /* U = x A^T: tokens x r */
    prefopt_dmat_gemm('N', 'N', s, u, b->value, 1.0f, y);       /* y += s U B^T */
}

void pf_lora_backward(prefopt_model *m, int l, int k, prefopt_dmat *dx, const prefopt_dmat *dy,
                      const prefopt_dmat *x, const prefopt_dmat *u)
{
    const layer_params *P = &m->layers[l];
    const prefopt_param *at = P->lora_at[k], *b = P->lora_b[k];
    if (!at)
        return;
    const float s = m->lora.alpha / (float)m->lora.r;
    const int dropping = dropout_active(m);
    prefopt_dmat *du = &m->ldu;
    prefopt_dmat_gemm('N', 'T', s, dy, b->value, 0.0f, du);  /* dU = s dy B */
    prefopt_dmat_gemm('T', 'N', s, u, dy, 1.0f, b->grad);    /* dB^T += s U^T dy */
    prefopt_dmat xd = *x;
    if (dropping) { /* the forward's mask, drawn again */
        xd.data = m->lxd.data;
        drop(m, l, k, &xd, x);
    }
    prefopt_dmat_gemm('T', 'N', 1.0f, du, &xd, 1.0f, at->grad); /* dA += dU^T dropout(x) */
    if (!dx)
        return;
    if (!dropping) {
        prefopt_dmat_gemm('N', 'N', 1.0f, du, at->value, 1.0f, dx); /* dx += dU A */
        return;
    }
    prefopt_dmat xg = *x;
    xg.data = m->lxg.data;
    prefopt_dmat_gemm('N', 'N', 1.0f, du, at->value, 0.0f, &xg);
    drop(m, l, k, &xg, &xg); /* the mask again, scaled: the dropout's own backward */
    size_t n = prefopt_dmat_local_size(dx);
#pragma omp parallel for schedule(static)
    for (size_t e = 0; e < n; e++)
        dx->data[e] += xg.data[e];
}

/* ---- merge ---------------------------------------------------------------------------------------------------- */

void prefopt_model_merge_lora(prefopt_model *m)
{
    const float s = m->lora.r > 0 ? m->lora.alpha / (float)m->lora.r : 0.0f;
    for (int l = 0; m->lora.r > 0 && l < m->cfg.num_layers; l++) {
        layer_params *P = &m->layers[l];
        prefopt_param *w[PREFOPT_LORA_NKIND] = {P->wq, P->wk, P->wv, P->wo, P->wfc, P->wup, P->wdown};
        for (int k = 0; k < PREFOPT_LORA_NKIND; k++)
            if (P->lora_at[k]) /* W (in x out) += s AT^T B, i.e. PyTorch's W += s B A */
                prefopt_dmat_gemm('T', 'N', s, P->lora_at[k]->value, P->lora_b[k]->value, 1.0f, w[k]->value);
    }
}
