/* Helpers of the engine tests (see test_model_util.h). */
#include "test_model_util.h"

#include <math.h>
#include <string.h>

void tm_config(prefopt_model_config *c, prefopt_arch arch)
{
    memset(c, 0, sizeof *c);
    c->arch = arch;
    c->vocab_size = 37;
    c->hidden_size = 16;
    c->num_layers = 2;
    c->num_heads = 4;
    c->head_dim = 4;
    c->norm_eps = 1e-5f;
    c->bos_id = c->eos_id = c->pad_id = -1;
    if (arch == PREFOPT_ARCH_GPT2) {
        c->num_kv_heads = 4;
        c->intermediate_size = 64;
        c->max_position = 32;
        c->qkv_bias = 1;
        c->tie_word_embeddings = 1;
        strcpy(c->hf_model_type, "gpt2");
    } else { /* Qwen2-like: GQA, QKV bias, untied head: every optional Llama-family piece is on */
        c->num_kv_heads = 2;
        c->intermediate_size = 24;
        c->max_position = 64;
        c->rope_theta = 10000.0f;
        c->qkv_bias = 1;
        c->tie_word_embeddings = 0;
        strcpy(c->hf_model_type, "qwen2");
    }
}

prefopt_model_options tm_options(int with_grads, int checkpoint)
{
    /* small blocks so that C = 16, F and V = 37 are really split over 2 process columns */
    return (prefopt_model_options){.with_grads = with_grads, .activation_checkpoint = checkpoint,
                                   .block_hidden = 4, .block_ffn = 8, .block_vocab = 8};
}

void tb_init(test_batch *b, int nrows, int T)
{
    memset(b, 0, sizeof *b);
    b->nrows = nrows;
    b->T = T;
    for (int t = 0; t < nrows * T; t++) {
        b->tokens[t] = 999;
        b->pos[t] = -5;
        b->parent[t] = -1;
        b->unit[t] = -1;
        b->seg[t] = -1;
    }
}

static void put(test_batch *b, int r, int i, int tok, int pos, int seg, int parent, int unit, int comp)
{
    int t = r * b->T + i;
    b->tokens[t] = tok;
    b->pos[t] = pos;
    b->seg[t] = (int8_t)seg;
    b->parent[t] = parent;
    b->unit[t] = parent >= 0 ? unit : -1;
    b->completion[t] = (uint8_t)comp;
}

void tb_pair(test_batch *b, int r, const int *prompt, int np, const int *chosen, int nc, const int *rejected, int nr)
{
    int uc = b->nunits++, ur = b->nunits++;
    b->pair_c[b->npairs] = uc;
    b->pair_r[b->npairs++] = ur;
    for (int i = 0; i < np; i++)
        put(b, r, i, prompt[i], i, 0, i - 1, uc, 0);
    for (int i = 0; i < nc; i++)
        put(b, r, np + i, chosen[i], np + i, 1, np + i - 1, uc, 1);
    for (int i = 0; i < nr; i++)
        put(b, r, np + nc + i, rejected[i], np + i, 2, i == 0 ? np - 1 : np + nc + i - 1, ur, 1);
}

int tb_seq(test_batch *b, int r, const int *prompt, int np, const int *completion, int nc)
{
    int u = b->nunits++;
    for (int i = 0; i < np; i++)
        put(b, r, i, prompt[i], i, 0, i - 1, u, 0);
    for (int i = 0; i < nc; i++)
        put(b, r, np + i, completion[i], np + i, 1, np + i - 1, u, 1);
    return u;
}

prefopt_batch tb_view(const test_batch *b)
{
    return (prefopt_batch){b->nrows, b->T, b->nunits, b->tokens, b->pos, b->seg, b->parent, b->unit, b->completion};
}

void tb_standard(test_batch *b)
{
    static const int p0[] = {3, 17, 5, 30}, c0[] = {8, 36, 2}, r0[] = {11, 0, 25, 7};
    static const int p1[] = {1, 9, 22}, c1[] = {14, 14, 33, 6, 19, 4};
    static const int p2[] = {28, 3, 12, 35, 10}, c2[] = {21, 5, 16, 9}, r2[] = {2, 31};
    tb_init(b, 3, 12);
    tb_pair(b, 0, p0, 4, c0, 3, r0, 4);
    tb_seq(b, 1, p1, 3, c1, 6);
    tb_pair(b, 2, p2, 5, c2, 4, r2, 2);
}

prefopt_unit_stats tm_stats_view(tm_stats *s)
{
    return (prefopt_unit_stats){s->c, s->a, s->nc, s->na, s->ls, s->hits};
}

double tm_loss(const test_batch *b, const tm_stats *s, float *d_completion, float *d_all)
{
    const double beta = 2.0;
    double loss = 0;
    if (d_completion)
        for (int u = 0; u < b->nunits; u++)
            d_completion[u] = d_all[u] = 0;
    for (int k = 0; k < b->npairs; k++) {
        double z = beta * (s->c[b->pair_c[k]] - s->c[b->pair_r[k]]);
        loss += log1p(exp(-z)); /* -log sigmoid(z) */
        double dz = -1.0 / (1.0 + exp(z));
        if (d_completion) {
            d_completion[b->pair_c[k]] += (float)(beta * dz);
            d_completion[b->pair_r[k]] -= (float)(beta * dz);
        }
    }
    for (int u = 0; u < b->nunits; u++) {
        if (s->nc[u] > 0) {
            loss += -0.3 * s->c[u] / s->nc[u];
            if (d_completion)
                d_completion[u] += (float)(-0.3 / s->nc[u]);
        }
        if (s->na[u] > 0) {
            loss += -0.05 * s->a[u] / s->na[u];
            if (d_all)
                d_all[u] += (float)(-0.05 / s->na[u]);
        }
    }
    return loss;
}

size_t tm_total_elems(prefopt_model *m)
{
    size_t n = 0;
    for (int i = 0; i < prefopt_model_param_count(m); i++) {
        prefopt_param *p = prefopt_model_param_at(m, i);
        n += (size_t)p->value->m * p->value->n;
    }
    return n;
}

size_t tm_gather_all(prefopt_model *m, int grads, float *out)
{
    size_t n = 0;
    for (int i = 0; i < prefopt_model_param_count(m); i++) {
        prefopt_param *p = prefopt_model_param_at(m, i);
        prefopt_dmat_gather(grads ? p->grad : p->value, out + n);
        n += (size_t)p->value->m * p->value->n;
    }
    return n;
}
