/* prefopt: the transformer (GPT-2 and the Llama family), tensor-parallel over one grid.
 *
 * Parameters. Every parameter is a named logical tensor with the Hugging Face meaning and the PyTorch
 * layout ([out][in] row-major for linear weights, which is the column-major in x out matrix of dmat.h).
 * Q, K and V are separate tensors (GPT-2's fused c_attn is split on import) so that the heads of a
 * key/value group sit on one process column with no reordering. Names (L = layer index):
 *
 *   GPT-2 (arch "gpt2"):                          Llama/Mistral/Qwen2 (arch "llama"):
 *   wte                    [V][C]                 embed_tokens                      [V][C]
 *   wpe                    [P][C]                 layers.L.input_layernorm.weight   [C]
 *   h.L.ln_1.weight/.bias  [C]                    layers.L.self_attn.q_proj.weight  [H*D][C] (+ .bias if qkv_bias)
 *   h.L.attn.q_proj.weight [C][C] (+ .bias [C])   layers.L.self_attn.k_proj.weight  [KV*D][C] (+ .bias)
 *   h.L.attn.k_proj.weight [C][C] (+ .bias)       layers.L.self_attn.v_proj.weight  [KV*D][C] (+ .bias)
 *   h.L.attn.v_proj.weight [C][C] (+ .bias)       layers.L.self_attn.o_proj.weight  [C][H*D]
 *   h.L.attn.c_proj.weight [C][C] (+ .bias)       layers.L.post_attention_layernorm.weight [C]
 *   h.L.ln_2.weight/.bias  [C]                    layers.L.mlp.gate_proj.weight     [F][C]
 *   h.L.mlp.c_fc.weight    [4C][C] (+ .bias)      layers.L.mlp.up_proj.weight       [F][C]
 *   h.L.mlp.c_proj.weight  [C][4C] (+ .bias)      layers.L.mlp.down_proj.weight     [C][F]
 *   ln_f.weight/.bias      [C]                    norm.weight                       [C]
 *   (head tied to wte)                            lm_head.weight [V][C] unless tie_word_embeddings
 *
 * Note GPT-2's HF Conv1D stores [in][out]; import/export transpose so the table above holds for both.
 *
 * Distribution (src/model/). Weights are (in x out) dmats with the input dimension over
 * process rows and the output over process columns; blocks: hidden block_hidden, MLP block_ffn, vocab
 * block_vocab, Q (H/KV)*D (one KV group's query heads), K/V D. Activations are (tokens x features) with mb = T,
 * so row r of a batch lives whole on process row r % nprow and its features are split over process columns with
 * the same blocks: query group j and KV head j sit on one process column, and attention is local. Norm
 * statistics are all-reduced over grid->row; the LM head is vocab-parallel (max and sum of exponentials
 * all-reduced over grid->row); per-unit sums over grid->col. Embedding lookups all-reduce an nrows*T x C buffer
 * over the TP group (forward and backward): simple, and small next to the matmuls.
 */
#ifndef PREFOPT_MODEL_H
#define PREFOPT_MODEL_H

#include "prefopt/dmat.h"
#include "prefopt/unit_stats.h"

typedef enum { PREFOPT_ARCH_GPT2 = 0, PREFOPT_ARCH_LLAMA = 1 } prefopt_arch;

typedef struct {
    prefopt_arch arch;
    int vocab_size;        /* V */
    int hidden_size;       /* C */
    int num_layers;        /* L */
    int num_heads;         /* H */
    int num_kv_heads;      /* KV (== H for GPT-2) */
    int head_dim;          /* D (C / H unless the config says otherwise) */
    int intermediate_size; /* F (4C for GPT-2) */
    int max_position;      /* P: n_positions (GPT-2) or max_position_embeddings (Llama) */
    float norm_eps;        /* layer_norm_epsilon (1e-5) / rms_norm_eps */
    float rope_theta;      /* Llama only */
    int qkv_bias;          /* GPT-2: 1; Llama: 0; Qwen2: 1 */
    int tie_word_embeddings;
    int bos_id, eos_id, pad_id; /* -1 when absent */
    char hf_model_type[32]; /* "gpt2", "llama", "mistral", "qwen2": written back on export */
    /* HF rope_scaling {"rope_type": "llama3", factor, low_freq_factor, high_freq_factor,
     * original_max_position_embeddings} (Llama 3.1/3.2); rope_llama3 = 0: no scaling (all zero by default) */
    int rope_llama3;
    float rope_factor, rope_low_freq_factor, rope_high_freq_factor;
    int rope_original_max_position;
} prefopt_model_config;

/* A batch on one TP group. Rows are sequences padded to length T. Several branches of one row may share a
 * prefix: a DPO pair is packed as [prompt | chosen | rejected] so the prompt is computed once. Per token:
 *   seg:    -1 padding; 0 shared prefix; b >= 1 branch b. Token i attends to j iff j <= i (in the row) and
 *           seg[j] == 0 or seg[j] == seg[i]; padding attends to nothing and is attended by nothing.
 *   pos:    position id (the rejected branch restarts after the prompt, so positions match a separate pass).
 *   parent: index in the row of the token whose output predicts this token (-1: not predicted).
 *   unit:   the result slot this token's log-prob is added to (-1: none). Shared prompt tokens count in the
 *           first branch's unit only.
 *   completion: 1 if the token is a completion token (counted in the completion sums), else 0.
 * Every rank of the TP group holds the whole batch (it is small: token ids only). */
typedef struct {
    int nrows, T, nunits;
    const int32_t *tokens;     /* [nrows*T] */
    const int32_t *pos;        /* [nrows*T] */
    const int8_t *seg;         /* [nrows*T] */
    const int32_t *parent;     /* [nrows*T] */
    const int32_t *unit;       /* [nrows*T] */
    const uint8_t *completion; /* [nrows*T] */
} prefopt_batch;

/* One named logical parameter tensor (see the table at the top). */
typedef struct {
    char name[96];
    int ndim;              /* 1 (biases, norm weights) or 2 */
    int64_t shape[2];      /* logical PyTorch shape: [out][in] for 2-D, [n] in shape[0] for 1-D */
    prefopt_dmat *value;   /* 2-D: the (in x out) column-major dmat; 1-D: a rep_rows row vector */
    prefopt_dmat *grad;    /* same distribution; NULL in a model made without gradients (the reference) */
    int weight_decay;      /* AdamW decay applies: 1 for matrices (embeddings included), 0 for biases and norms */
} prefopt_param;

typedef struct prefopt_model prefopt_model;

/* Options of a model instance (not of the architecture). */
typedef struct {
    int with_grads;            /* 0 for the frozen reference: no gradient buffers, no activations kept */
    int activation_checkpoint; /* keep only layer inputs; recompute each layer in backward */
    /* Block sizes of the hidden, MLP-intermediate and vocab dimensions; 0 takes the defaults (64, 256, 1024).
     * They need not match between runs (checkpoints hold logical tensors) but must match between models whose
     * weights are copied (policy and reference). Tests use small ones so tiny models still split. */
    int block_hidden, block_ffn, block_vocab;
} prefopt_model_options;

/* Collective over the grid. All local pieces of all parameters live in one contiguous buffer (and the
 * gradients in a second buffer with the identical layout), so optimizers and all-reduces work on flat
 * arrays. Weights are zero after creation. */
prefopt_model *prefopt_model_create(const prefopt_model_config *cfg, const prefopt_grid *g,
                                    const prefopt_model_options *opt, prefopt_err *err);
void prefopt_model_free(prefopt_model *m);
const prefopt_model_config *prefopt_model_get_config(const prefopt_model *m);
const prefopt_grid *prefopt_model_get_grid(const prefopt_model *m);

int prefopt_model_param_count(const prefopt_model *m);
prefopt_param *prefopt_model_param_at(prefopt_model *m, int i);
prefopt_param *prefopt_model_param_by_name(prefopt_model *m, const char *name);
float *prefopt_model_param_data(prefopt_model *m, size_t *count);  /* the flat local parameter buffer */
float *prefopt_model_grad_data(prefopt_model *m, size_t *count);   /* the flat local gradient buffer */

/* GPT-2-style init (normal(0, 0.02), residual projections scaled by 1/sqrt(2L), norms 1, biases 0) from a
 * seed; the values of a logical tensor do not depend on the grid. */
void prefopt_model_init_random(prefopt_model *m, uint64_t seed);

/* Forward over a batch; fills the per-unit sums (arrays of batch->nunits, allocated by the caller) on every
 * rank of the TP group. With gradients enabled, keeps what backward needs. Returns non-zero (err filled, the
 * same on every rank of the grid) on bad input, e.g. a token id >= vocab_size. */
int prefopt_model_forward(prefopt_model *m, const prefopt_batch *b, prefopt_unit_stats *out, prefopt_err *err);

/* Forward for generation and evaluation: for each row r, the full-vocabulary logits at row position last[r]
 * (logits: nrows x vocab_size, row-major, identical on every rank of the TP group). Only those rows' logits are
 * formed and gathered. Each call recomputes the whole batch (a generation loop built on it costs O(T^2) per
 * token; prefopt_model_decode_step below is the cached way). Invalidates the activations of
 * the last forward (call prefopt_model_forward again before backward). Returns non-zero (err filled, the same
 * on every rank) on a bad batch or a last[r] outside its row or on padding. */
int prefopt_model_logits_at(prefopt_model *m, const prefopt_batch *b, const int32_t *last, float *logits,
                            prefopt_err *err);

/* Incremental decoding with a key/value cache (generation). decode_begin sizes and empties the cache for nrows
 * sequences of at most max_len tokens (<= max_position). decode_step appends n[r] tokens to row r, read from
 * tokens[r*width .. r*width + n[r] - 1] (0 <= n[r] <= width; a prompt of any length is one step, then one token
 * per step), at positions following the row's cached tokens, and returns in logits (nrows x vocab_size,
 * row-major, every rank of the TP group) each row's logits after its last new token (zeros when n[r] = 0).
 * Collective over the grid. Invalidates the activations of the last forward. Returns non-zero (err filled, the
 * same on every rank) on a bad token or a full cache. */
int prefopt_model_decode_begin(prefopt_model *m, int nrows, int max_len, prefopt_err *err);
int prefopt_model_decode_step(prefopt_model *m, const int32_t *tokens, const int32_t *n, int width, float *logits,
                              prefopt_err *err);

/* Backward of sum_u (d_completion[u] * logp_completion[u] + d_all[u] * logp_all[u]) for the batch of the last
 * forward; ACCUMULATES into the gradient buffer (zero it with prefopt_model_zero_grad). Gradients of rep_rows
 * vectors are summed over process rows here. Does not reduce over data-parallel replicas. */
void prefopt_model_backward(prefopt_model *m, const float *d_completion, const float *d_all);
void prefopt_model_zero_grad(prefopt_model *m);

/* Sums gradients over the data-parallel replicas (bucketed MPI_Allreduce on the flat gradient buffer, after
 * backward). The trainer uses gradsync.h instead (overlapped buckets, ZeRO-1, bf16); this stays as the plain
 * reference path. */
void prefopt_model_allreduce_grads(prefopt_model *m);

/* Backward finishes the flat gradient buffer from its start: the pieces lie in reverse layer order (head, final
 * norm, last layer, ..., first layer, embeddings), and the row-vector gradients of each part are summed over the
 * process rows as soon as the part is done. The boundaries at which readiness advances, increasing: out[0] after
 * the head and final norm, out[k] after layer L - k, out[L + 1] = the whole buffer. Returns L + 2 (the count;
 * out may be NULL). */
int prefopt_model_grad_boundaries(const prefopt_model *m, size_t *out);
/* During backward, fn(ctx, ready) is called with ready = the flat offset below which every gradient of this
 * backward is final (each boundary once, in increasing order, and repeated between the layer's halves so that a
 * caller can poll its communication). NULL: none. */
typedef void (*prefopt_grad_ready_fn)(void *ctx, size_t ready);
void prefopt_model_set_grad_ready_hook(prefopt_model *m, prefopt_grad_ready_fn fn, void *ctx);
/* Before forward reads the weights of a part, fn(ctx, lo) is called: every weight at flat offset >= lo must then
 * be in place (embeddings first, the head and final norm last, lo = 0), so that a caller can gather weights while
 * forward runs (the distributed optimizer). NULL: none. */
typedef void (*prefopt_param_need_fn)(void *ctx, size_t lo);
void prefopt_model_set_param_need_hook(prefopt_model *m, prefopt_param_need_fn fn, void *ctx);
/* The LM head runs over chunks of batch rows whose local logits fit this many bytes (0: the default, 1 GiB);
 * when the batch needs several chunks, backward recomputes each chunk's logits (one more head GEMM) instead of
 * keeping nrows*T x vocab logits. Takes effect at the next forward. */
void prefopt_model_set_logits_budget(prefopt_model *m, size_t bytes);
/* on: the LM head forms logits only at the positions that predict completion tokens (TRL's use_logits_to_keep,
 * per row), skipping the prompt's: logp_completion and the metrics are unchanged, logp_all becomes NaN, and a
 * backward with any non-zero d_all stops. For objectives that read completion log-probs only (DPO and most of
 * its family; not ORPO or SFT on prompt tokens). Off by default; takes effect at the next forward. */
void prefopt_model_set_completion_logits_only(prefopt_model *m, int on);
/* Floats per all-reduce bucket (0: the default, 8M = 32 MB). */
void prefopt_model_set_grad_bucket(prefopt_model *m, size_t floats);

/* dst := src (same config and grid), e.g. the reference from the policy; and dst := (1-a) dst + a src for TR-DPO. */
void prefopt_model_copy_weights(prefopt_model *dst, const prefopt_model *src);
void prefopt_model_mix_weights(prefopt_model *dst, const prefopt_model *src, float alpha);

/* FLOPs of one forward over a batch (matmuls and attention; 2 per multiply-add), for throughput figures: the LM
 * head's as computed, i.e. only the kept positions with prefopt_model_set_completion_logits_only. */
double prefopt_model_forward_flops(const prefopt_model *m, const prefopt_batch *b);

#endif
