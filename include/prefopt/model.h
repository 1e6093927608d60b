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

/* the most layers a config may have (the per-layer flags below are a fixed array) */
#define PREFOPT_MAX_LAYERS 1024

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
    /* HF config.json's torch_dtype ("bfloat16", "float32", ...) as imported: the dtype export writes by default;
     * "" when unknown (a model made from scratch) */
    char torch_dtype[16];
    /* The Llama family's variants (issue 20), all zero for Llama/Mistral/Qwen2 (README "Architectures"):
     * qk_norm: RMSNorm of q and k after the projection, before RoPE: PREFOPT_QK_NORM_HEAD over each head's D
     *   features with one [D] weight (Qwen3, Gemma 3), PREFOPT_QK_NORM_FULL over the whole projection with
     *   [H*D] / [KV*D] weights (OLMo 2).
     * norm_style: PREFOPT_NORM_PRE (Llama: norm before attention and MLP), PREFOPT_NORM_POST (OLMo 2: norm of the
     *   attention and MLP outputs before the residual add), PREFOPT_NORM_SANDWICH (Gemma 2/3: both).
     * norm_unit_offset: RMSNorm weights act as (1 + w) (Gemma). embed_scale: embeddings times this (Gemma:
     *   sqrt(hidden)); 0: none. attn_scale: the score scale (Gemma: query_pre_attn_scalar^-1/2); 0: D^-1/2.
     * attn_softcap, final_softcap: cap tanh(x / cap) on the attention scores and the logits (Gemma 2); 0: none.
     * mlp_act: PREFOPT_ACT_SILU (SwiGLU) or PREFOPT_ACT_GELU_TANH (GeGLU, Gemma).
     * rope_dim: rotated features per head, pairs (i, i + rope_dim/2) (Phi-3 partial_rotary_factor); 0: D.
     * rope_local_theta: RoPE base of sliding-window layers (Gemma 3 rope_local_base_freq); 0: rope_theta.
     * rope_linear_factor: linear RoPE scaling (positions / factor) of the layers that use rope_theta; 0: none.
     * sliding_window: W; key j is visible from query i when i - W < j <= i in layers flagged SLIDING; 0: none.
     * fused_qkv: the HF checkpoint fuses qkv_proj and gate_up_proj (Phi-3): split on import, fused on export.
     * layer_flags[l]: PREFOPT_LAYER_SLIDING (windowed attention), PREFOPT_LAYER_NOROPE (no RoPE, SmolLM3). */
    int qk_norm, norm_style, norm_unit_offset, mlp_act, rope_dim, sliding_window, fused_qkv;
    float embed_scale, attn_scale, attn_softcap, final_softcap, rope_local_theta, rope_linear_factor;
    unsigned char layer_flags[PREFOPT_MAX_LAYERS];
} prefopt_model_config;

enum { PREFOPT_QK_NORM_NONE = 0, PREFOPT_QK_NORM_HEAD = 1, PREFOPT_QK_NORM_FULL = 2 };
enum { PREFOPT_NORM_PRE = 0, PREFOPT_NORM_POST = 1, PREFOPT_NORM_SANDWICH = 2 };
enum { PREFOPT_ACT_SILU = 0, PREFOPT_ACT_GELU_TANH = 1 };
enum { PREFOPT_LAYER_SLIDING = 1, PREFOPT_LAYER_NOROPE = 2 };

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

/* LoRA (Hu et al. 2021, as PEFT builds it): a targeted linear layer y = x W + b becomes
 * y = x W + b + (alpha / r) * (dropout(x) A^T) B^T, with A [r][in] and B [out][r] (PEFT's lora_A / lora_B), and
 * the base W, b and every other base tensor frozen (no gradient buffers). The adapters are parameters of the
 * model registry named "<linear>.lora_AT" (A transposed: logical [in][r]) and "<linear>.lora_B" ([out][r]) after
 * every base tensor, so their local pieces form the tail of the flat buffer (prefopt_model_train_data).
 * Distribution: A^T is (r x in) with in dealt over process columns in the blocks of the activation x it
 * multiplies, B is (r x out) with out dealt like W's output; r is one block (never split). Every product goes
 * through prefopt_dmat_gemm; on a 1 x P grid each one is an r-wide all-gather or reduce-scatter (dmat_gemm.c). */
enum {
    PREFOPT_LORA_Q = 1 << 0, PREFOPT_LORA_K = 1 << 1, PREFOPT_LORA_V = 1 << 2, PREFOPT_LORA_O = 1 << 3,
    PREFOPT_LORA_FC = 1 << 4,  /* Llama gate_proj, GPT-2 mlp.c_fc */
    PREFOPT_LORA_UP = 1 << 5,  /* Llama up_proj */
    PREFOPT_LORA_DOWN = 1 << 6 /* Llama down_proj, GPT-2 mlp.c_proj */
};
#define PREFOPT_LORA_NKIND 7
typedef struct {
    int r;           /* rank; 0: no LoRA */
    float alpha;     /* scale alpha / r */
    float dropout;   /* PEFT lora_dropout on the adapter's input, in training forwards only */
    unsigned targets; /* PREFOPT_LORA_* bits */
} prefopt_lora_config;

/* Parses a comma list of PEFT target module names into PREFOPT_LORA_* bits: q_proj k_proj v_proj o_proj
 * gate_proj up_proj down_proj (GPT-2: up_proj and gate_proj both mean mlp.c_fc, o_proj attn.c_proj, down_proj
 * mlp.c_proj), GPT-2's own c_attn (q, k, v), c_fc, c_proj (attn and mlp, as PEFT's suffix match), "all-linear".
 * An unknown or inapplicable name is an error naming it. */
int prefopt_lora_parse_targets(const char *list, prefopt_arch arch, unsigned *targets, prefopt_err *err);
/* The PEFT module suffix of a target kind bit for arch ("q_proj", "c_fc", ...; GPT-2's q/k/v give "q_proj"...,
 * the split c_attn). */
const char *prefopt_lora_kind_name(unsigned kind, prefopt_arch arch);

/* Options of a model instance (not of the architecture). */
typedef struct {
    int with_grads;            /* 0 for the frozen reference: no gradient buffers, no activations kept */
    int activation_checkpoint; /* keep only layer inputs; recompute each layer in backward */
    /* Block sizes of the hidden, MLP-intermediate and vocab dimensions; 0 takes the defaults (64, 256, 1024).
     * They need not match between runs (checkpoints hold logical tensors) but must match between models whose
     * weights are copied (policy and reference). Tests use small ones so tiny models still split. */
    int block_hidden, block_ffn, block_vocab;
    /* bf16 mixed precision (Megatron's): the fp32 weights stay the masters (gradients and AdamW are fp32); every
     * matrix also has a bf16 copy (round to nearest even) that the products and the embedding lookup read, made
     * again at the next forward after the weights changed (prefopt_model_weights_changed: once per optimizer
     * step, never per product); activations and gradients enter the products rounded to bf16 with fp32
     * accumulation and fp32 results; norms, softmax, log-softmax, log-probs and the attention stay fp32. */
    int bf16;
} prefopt_model_options;

/* Collective over the grid. All local pieces of all parameters live in one contiguous buffer (and the
 * gradients in a second buffer with the identical layout), so optimizers and all-reduces work on flat
 * arrays. Weights are zero after creation. */
prefopt_model *prefopt_model_create(const prefopt_model_config *cfg, const prefopt_grid *g,
                                    const prefopt_model_options *opt, prefopt_err *err);
/* The same with LoRA adapters (lora NULL or r == 0: none): the base is frozen (with_grads gives gradient buffers
 * and optimizer-visible parameters for the adapters only, and keeps the activations backward needs). */
prefopt_model *prefopt_model_create_lora(const prefopt_model_config *cfg, const prefopt_grid *g,
                                         const prefopt_model_options *opt, const prefopt_lora_config *lora,
                                         prefopt_err *err);
void prefopt_model_free(prefopt_model *m);
const prefopt_model_config *prefopt_model_get_config(const prefopt_model *m);
const prefopt_grid *prefopt_model_get_grid(const prefopt_model *m);

int prefopt_model_param_count(const prefopt_model *m);
prefopt_param *prefopt_model_param_at(prefopt_model *m, int i);
prefopt_param *prefopt_model_param_by_name(prefopt_model *m, const char *name);
float *prefopt_model_param_data(prefopt_model *m, size_t *count);  /* the flat local parameter buffer */
float *prefopt_model_grad_data(prefopt_model *m, size_t *count);   /* the flat local gradient buffer */

/* The trainable part of the flat parameter buffer: all of it, or with LoRA the adapters' tail. Its layout is the
 * gradient buffer's (prefopt_model_grad_data), which is what the optimizer and the all-reduce act on. */
float *prefopt_model_train_data(prefopt_model *m, size_t *count);
/* 1 when parameter i is trained (has a gradient); with LoRA only the adapters. */
int prefopt_model_param_trained(const prefopt_model *m, int i);
/* 1 when parameter i is a LoRA adapter tensor. */
int prefopt_model_param_is_lora(const prefopt_model *m, int i);
const prefopt_lora_config *prefopt_model_lora(const prefopt_model *m); /* r == 0: none */
/* LoRA adapters on (the default) or off: off, the forward is the base model's (TRL's reference with
 * disable_adapter()); a backward needs a forward with them on. */
void prefopt_model_set_lora_enabled(prefopt_model *m, int on);
/* Training mode for LoRA dropout (PEFT's module.train()): off (the default) the dropout is the identity. On,
 * it starts a mask stream: the k-th forward after this call draws the mask of (seed, k, layer, target, global
 * token row, feature, data-parallel rank), so masks do not depend on the TP grid and a resumed run that passes
 * the same seed (the trainer mixes in the step) draws the same masks; activation checkpointing redraws the
 * forward's mask in backward. */
void prefopt_model_set_lora_train(prefopt_model *m, int on, uint64_t seed);
/* PEFT's init of the adapters from a seed: A Kaiming-uniform (a = sqrt(5): U(-1/sqrt(in), 1/sqrt(in))), B zero;
 * the values do not depend on the grid. Base weights are untouched. */
void prefopt_model_init_lora(prefopt_model *m, uint64_t seed);

/* W += (alpha / r) B A for every adapter (PEFT's merge_and_unload) in the base weights, e.g. before saving a
 * plain model file. The adapters stay; a forward with them on afterwards counts them twice. Collective. */
void prefopt_model_merge_lora(prefopt_model *m);

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

/* bf16 models: the weights were written through the flat buffer or the parameter dmats (optimizer step): the bf16
 * copies are remade now (other writers: at the next forward). Loads, init, copy and mix call it themselves; prefopt_model_param_data
 * and the parameter accessors mark the weights changed too. A no-op for fp32 models. */
void prefopt_model_weights_changed(prefopt_model *m);
/* A frozen bf16 model (the reference, eval, generate) drops its fp32 matrices and keeps only their bf16 copies
 * (half the memory; vectors stay fp32). Afterwards the matrices' dmats have data NULL: the model can be a copy
 * target (prefopt_model_copy_weights rounds the source) but can no longer be loaded, saved, mixed or trained. */
void prefopt_model_keep_bf16_only(prefopt_model *m);
int prefopt_model_is_bf16(const prefopt_model *m);
/* Bytes of this rank's weights: fp32 masters and bf16 copies (a bf16-only model: copies and vectors). */
size_t prefopt_model_weight_bytes(const prefopt_model *m);

/* dst := src (same config and grid), e.g. the reference from the policy; and dst := (1-a) dst + a src for TR-DPO. */
void prefopt_model_copy_weights(prefopt_model *dst, const prefopt_model *src);
void prefopt_model_mix_weights(prefopt_model *dst, const prefopt_model *src, float alpha);

/* Floats of scratch one attention worker (one sequence and KV group, one OpenMP thread) holds at a time for rows
 * of T tokens, the larger of forward and backward: the group's head copies (8 T x head_dim in backward) and the
 * blocked kernel's score blocks (src/model/attention_blocked.h), and with bf16 the heads' bf16 operand forms
 * (counted whether or not this CPU takes the bf16 path: an estimate that holds on both); no T x T buffer. */
size_t prefopt_attention_scratch_floats(const prefopt_model_config *cfg, int64_t T, int bf16);
/* Whether a bf16 model's attention block products run in bf16 on this CPU (AVX512-BF16's dot product; else fp32
 * BLIS), for the banner. */
int prefopt_attention_bf16_kernel(void);

/* FLOPs of one forward over a batch (matmuls and attention; 2 per multiply-add), for throughput figures: the LM
 * head's as computed, i.e. only the kept positions with prefopt_model_set_completion_logits_only. */
double prefopt_model_forward_flops(const prefopt_model *m, const prefopt_batch *b);

#endif
