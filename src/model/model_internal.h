/* prefopt engine internals shared by the files of src/model/, which call each other only downwards: params.c
 * (registry, buffers, init) and decode.c (generation) -> model.c (batch, activations, forward/backward drivers)
 * -> layers.c (norms, linears, embeddings, elementwise), attention.c, head.c (vocab-parallel LM head). Not a public
 * header. */
#ifndef PREFOPT_MODEL_INTERNAL_H
#define PREFOPT_MODEL_INTERNAL_H

#include "prefopt/model.h"

#include <stdlib.h>

/* The parameters of one block. Llama maps gate_proj to fc and up_proj to up; absent tensors are NULL. */
typedef struct {
    prefopt_param *ln1_w, *ln1_b, *wq, *bq, *wk, *bk, *wv, *bv, *wo, *bo;
    prefopt_param *ln2_w, *ln2_b, *wfc, *bfc, *wup, *wdown, *bdown;
    /* the variants' (NULL when absent): q/k norms; the norms of the attention and MLP outputs (OLMo 2, Gemma) */
    prefopt_param *q_norm, *k_norm, *ln_pa, *ln_pf;
    prefopt_param *lora_at[PREFOPT_LORA_NKIND], *lora_b[PREFOPT_LORA_NKIND]; /* per target kind (lora.c); NULL: none */
} layer_params;

/* LoRA target kinds as indices (the bit is 1 << index) */
enum { PF_LQ, PF_LK, PF_LV, PF_LO, PF_LFC, PF_LUP, PF_LDOWN };

/* What backward needs of one block (the layer input lives in the model's residual stream array). */
typedef struct {
    prefopt_dmat n1, q, k, v, y, xmid, n2, h1, h2, a;
    float *n1_mean, *n1_rstd, *n2_mean, *n2_rstd; /* per local token */
    float *att;                                   /* softmax log-normalisers [local seq][local head][T] */
    /* variants: q, k before their norms; attention and MLP outputs before their norms; the norms' statistics
     * (per local token, or per local token and head for the per-head q/k norms) */
    prefopt_dmat qr, kr, ao, mo;
    float *qn_mean, *qn_rstd, *kn_mean, *kn_rstd, *pa_mean, *pa_rstd, *pf_mean, *pf_rstd;
    prefopt_dmat lu[PREFOPT_LORA_NKIND];          /* LoRA: U = dropout(x) A^T (tokens x r) per targeted linear */
} layer_acts;

struct prefopt_model {
    prefopt_model_config cfg;
    prefopt_model_options opt;
    const prefopt_grid *g;
    int nbh, nbf, nbv, qnb; /* block sizes: hidden, MLP, vocab, query group (H/KV * D) */
    int nparams;
    prefopt_param *params;
    prefopt_dmat *values, *grads; /* storage of the dmats the params point to */
    size_t *offset;               /* offset of each param's local piece in the flat buffers */
    int *init_kind;               /* how prefopt_model_init_random fills each param */
    float *param_data, *grad_data;
    uint16_t *half_data;          /* bf16 models: the matrices' bf16 copies (layout of param_data) */
    int half_stale;               /* the copies must be remade before the next forward */
    int bf16_only;                /* prefopt_model_keep_bf16_only: matrices in half_data only */
    size_t flat_count;
    size_t train_count;           /* the trained pieces [0, train_count) of param_data (LoRA: the adapters) */
    int first_lora;               /* index of the first adapter parameter (nparams: none) */
    int *lora_first;              /* [L] registry index of layer l's first adapter */
    /* LoRA (lora.c) */
    prefopt_lora_config lora;     /* r == 0: none */
    int lora_on;                  /* adapters enabled in forward */
    int lora_train;               /* dropout active */
    uint64_t lora_seed, lora_fwd; /* dropout mask: seed and the count of training forwards */
    prefopt_dmat ldu, lxd, lxg;   /* backward scratch: dU (tokens x r), dropped input, its gradient (widest in) */
    size_t bucket;                /* floats per data-parallel all-reduce */
    int *layer_first;             /* [L+1] registry index of layer l's first parameter; [L]: the final norm's */
    size_t *ready_at;             /* [L+2] flat offsets below which gradients are final (see grad_boundaries) */
    prefopt_grad_ready_fn ready_fn; /* called as backward finishes parts of the flat gradient buffer */
    void *ready_ctx;
    prefopt_param_need_fn need_fn; /* called before forward reads a part of the flat parameter buffer */
    void *need_ctx;
    size_t *vscr_offset;          /* rep_rows params: offset in vscr (else SIZE_MAX) */
    float *vscr;                  /* this backward's row-vector gradients, summed over grid->col at the end */
    size_t vscr_count;
    prefopt_param *wte, *wpe, *lnf_w, *lnf_b, *head;
    layer_params *layers;

    /* the batch of the last forward and the activations, sized for it */
    prefopt_batch b;
    int have_batch;
    int nloc_seq;                 /* sequences (batch rows) held by my process row */
    int ntok_loc;                 /* nloc_seq * T */
    int alloc_rows, alloc_T;
    prefopt_dmat *xs;             /* residual stream: xs[l] input of layer l, xs[L] output of the last */
    layer_acts *acts;             /* L of them, or 1 scratch when checkpointing or without gradients */
    int nacts;
    prefopt_dmat xf, logits;      /* logits: storage for head_rows rows (see model_head.c) */
    int head_rows;                /* batch rows per LM-head chunk, a multiple of nprow */
    size_t logits_budget;         /* bytes of local logits a chunk may take (0: default) */
    float *nf_mean, *nf_rstd;
    int head_kept_only;           /* logits only where a completion token is predicted (model_head.c) */
    int head_R;                   /* the head's rows per sequence in this batch: T, or the most kept positions */
    prefopt_dmat hx, hdn;         /* head_kept_only: the kept rows of xf, R per sequence, and their gradient */
    int *head_row, *head_pos;     /* [nrows][T]: a position's compact row (-1: skipped); [nrows][R]: the reverse */
    float *lse;                   /* per head row: log-sum-exp of its logits */
    float *tgt;                   /* per local token: logit of its own token at its parent's row */
    float *rope_cos, *rope_sin;   /* [2][max pos in batch + 1][rope_dim/2]: global layers', then sliding layers' */
    int rope_npos;
    /* backward scratch */
    prefopt_dmat dx, dn, dq, dk, dv, dy, dh1, dh2, da;
    prefopt_dmat dqr, dkr, dc, tmpc; /* variants: q/k before their norms; an output norm's input; a norm's output */
    float *emb_full;              /* nrows*T x C: embedding all-reduce buffer */
    /* key/value cache of incremental decoding: [L][local seq][local KV head][kv_max][D] */
    float *kv_k, *kv_v;
    int *kv_len;                  /* tokens cached per batch row (all rows, on every rank) */
    int kv_rows, kv_max, kv_nseq, kv_nkb, decoding;
    float **bufs;                 /* every activation allocation, freed together */
    int nbufs, capbufs;
};

/* model.c: the trunk (embeddings and every block, the final norm into xf) over a checked copy of the batch;
 * the activation buffers' teardown (pf_free_acts: only the batch-sized buffers; pf_free_activations: all) */
int pf_run_trunk(prefopt_model *m, const prefopt_batch *b, prefopt_err *err);
void pf_free_acts(prefopt_model *m);
void pf_free_activations(prefopt_model *m);

/* layers.c */
void pf_linear_forward(prefopt_dmat *y, const prefopt_dmat *x, const prefopt_param *w, const prefopt_param *b,
                       float beta);
void pf_linear_backward(prefopt_model *m, prefopt_dmat *dx, float beta_dx, const prefopt_dmat *dy,
                        const prefopt_dmat *x, const prefopt_param *w, const prefopt_param *b);
void pf_norm_forward(prefopt_model *m, prefopt_dmat *y, float *mean, float *rstd, const prefopt_dmat *x,
                     const prefopt_param *w, const prefopt_param *b);
void pf_norm_backward(prefopt_model *m, prefopt_dmat *dx, const prefopt_dmat *dy, const prefopt_dmat *x,
                      const float *mean, const float *rstd, const prefopt_param *w, const prefopt_param *b);
void pf_embed_forward(prefopt_model *m, prefopt_dmat *x);
void pf_embed_backward(prefopt_model *m, const prefopt_dmat *dx);
void pf_mlp_act_forward(const prefopt_model *m, prefopt_dmat *a, const prefopt_dmat *h1, const prefopt_dmat *h2);
void pf_mlp_act_backward(const prefopt_model *m, prefopt_dmat *dh1, prefopt_dmat *dh2, const prefopt_dmat *da,
                         const prefopt_dmat *h1, const prefopt_dmat *h2);
void pf_rope_tables(prefopt_model *m);
void pf_rope_apply(const prefopt_model *m, int layer, prefopt_dmat *x, int inverse);
/* RMSNorm over each head's D features with one [D] weight (Qwen3, Gemma 3 q/k norms): local to a process
 * column; the weight lives on process column 0 and is broadcast over the process row (its gradient reduced) */
void pf_head_norm_forward(prefopt_model *m, prefopt_dmat *y, float *rstd, const prefopt_dmat *x,
                          const prefopt_param *w);
void pf_head_norm_backward(prefopt_model *m, prefopt_dmat *dx, const prefopt_dmat *dy, const prefopt_dmat *x,
                           const float *rstd, const prefopt_param *w);
float *pf_vgrad(prefopt_model *m, const prefopt_param *p);

/* lora.c: after the base linear of kind k in layer l: y += s U B with U = dropout(x) A^T kept in u; backward
 * after the base's: dB += s U^T dy, dA^T += dU^T dropout(x), dx += dropout'(dU A^T) with dU = s dy B^T.
 * No-ops where layer l has no adapter of kind k (or they are switched off in forward). */
void pf_lora_forward(prefopt_model *m, int l, int k, prefopt_dmat *y, const prefopt_dmat *x, prefopt_dmat *u);
void pf_lora_backward(prefopt_model *m, int l, int k, prefopt_dmat *dx, const prefopt_dmat *dy,
                      const prefopt_dmat *x, const prefopt_dmat *u);

/* attention.c */
/* each layer's attention: score scale, tanh soft-cap (0: none), window (0: none; key j visible from query i
 * when pos_i - pos_j < window, within the branch rule) */
typedef struct {
    float scale, softcap;
    int window;
} pf_attn_params;
pf_attn_params pf_attn_params_of(const prefopt_model *m, int layer);

void pf_attention_forward(const prefopt_model *m, int layer, prefopt_dmat *y, float *att, const prefopt_dmat *q,
                          const prefopt_dmat *k, const prefopt_dmat *v);
void pf_attention_backward(const prefopt_model *m, int layer, prefopt_dmat *dq, prefopt_dmat *dk, prefopt_dmat *dv,
                           const prefopt_dmat *dy, const float *att, const prefopt_dmat *q, const prefopt_dmat *k,
                           const prefopt_dmat *v, const prefopt_dmat *y);

void pf_attention_cached(prefopt_model *m, int layer, prefopt_dmat *y, const prefopt_dmat *q, const prefopt_dmat *k,
                         const prefopt_dmat *v);

/* head.c */
void pf_head_forward(prefopt_model *m, prefopt_unit_stats *out);
void pf_head_backward(prefopt_model *m, const float *d_completion, const float *d_all);
int pf_head_rows_per_seq(const prefopt_model *m, const prefopt_batch *b);
void pf_final_softcap(const prefopt_model *m, prefopt_dmat *L);

/* layers.c: remakes the bf16 copies when stale (start of every forward) */
void pf_bf16_sync(prefopt_model *m);

/* The engine's products: bf16 inputs with fp32 accumulation in a bf16 model, fp32 (psgemm_, BLIS, oneDNN sgemm)
 * otherwise. */
static inline void pf_gemm_sub(int bf16, char ta, char tb, int mm, int n, int k, float alpha, const prefopt_dmat *A,
                               int ia, const prefopt_dmat *B, int ib, float beta, prefopt_dmat *C, int ic)
{
    if (bf16)
        prefopt_dmat_gemm_sub_bf16(ta, tb, mm, n, k, alpha, A, ia, 0, B, ib, 0, beta, C, ic, 0);
    else
        prefopt_dmat_gemm_sub(ta, tb, mm, n, k, alpha, A, ia, 0, B, ib, 0, beta, C, ic, 0);
}
static inline void pf_gemm(int bf16, char ta, char tb, float alpha, const prefopt_dmat *A, const prefopt_dmat *B,
                           float beta, prefopt_dmat *C)
{
    if (bf16)
        prefopt_dmat_gemm_bf16(ta, tb, alpha, A, B, beta, C);
    else
        prefopt_dmat_gemm(ta, tb, alpha, A, B, beta, C);
}

/* helpers */
/* Loops that reduce along a row of a column-major local piece run in parallel over blocks of PF_RB rows, each
 * thread walking all columns of its rows: every row is still summed in column order, so results do not depend
 * on the thread count. */
#define PF_RB 64
static inline int pf_seq_row(const prefopt_model *m, int s) { return s * m->g->nprow + m->g->myrow; }
static inline float *pf_at(const prefopt_dmat *a, int il, int jl) { return a->data + (size_t)jl * a->lld + il; }

#endif
