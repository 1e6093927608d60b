/* prefopt: model files and training checkpoints (one parallel HDF5 format for both).
 *
 * File layout (HDF5, libver 1.10, contiguous float32 datasets):
 *   /                 attributes: kind ("model" | "checkpoint"), format_version (1), arch ("gpt2" | "llama"),
 *                     hf_model_type, vocab_size, hidden_size, num_layers, num_heads, num_kv_heads, head_dim,
 *                     intermediate_size, max_position, norm_eps, rope_theta, qkv_bias, tie_word_embeddings,
 *                     bos_id, eos_id, pad_id, tokenizer_identity ("byte" | "sha256:<hex>"), complete (1, last)
 *   /tokenizer.json   uint8[n]: the bytes of the tokenizer.json the model was imported with (absent: byte level)
 *   /model/<name>     the weights, logical PyTorch shapes of model.h. Per-layer tensors "P.<L>.R" are stacked
 *                     into one dataset "P.R" of shape [num_layers][...]: "h.3.attn.q_proj.weight" is
 *                     model/h.attn.q_proj.weight[3]; "wte" is model/wte. A 124M GPT-2 has 18 datasets, not 148.
 *                     Each dataset's attribute "checksum" (uint64 per layer) is verified on every load.
 *   /optim/m/<name>, /optim/v/<name>   AdamW moments, same naming (checkpoints only)
 *   /state            attributes step, sched_step, epoch, tokens_seen, cursor[8], lr, world_size; datasets
 *                     rng uint64[world_size][4] (one row per rank) and train_config (uint8: INI text)
 *
 * LoRA runs (a model with adapters, model.h): model files hold the base tensors only (train writes model.h5 with
 * the adapters merged in); checkpoints hold no /model group but
 *   /lora/<name>      the adapters "<linear>.lora_AT" [in][r] and "<linear>.lora_B" [out][r], stacked per layer
 *   /optim/m, /optim/v   the moments of the adapters only
 *   /                 attributes lora ("r=16 alpha=32 dropout=0.05 targets=0x7f"), base_model (the --init path)
 *                     and base_checksum (prefopt_model_base_checksum of the base at save time)
 * and a resume loads the base from --init, then the checkpoint, which refuses a base whose checksum differs.
 *
 * Tensors are stored whole at their logical shape, each rank reading/writing its block-cyclic pieces through
 * hyperslab selections, so a file written on one grid and DP degree loads on any other.
 *
 * Checkpoint directories: DIR/step-00000123.h5 (+ .tmp while being written), DIR/latest (the file name of the
 * newest complete checkpoint, replaced atomically). A save writes the .tmp collectively, closes it, fsyncs it,
 * renames it, fsyncs the directory, then updates latest and removes all but the newest keep_last.
 */
#ifndef PREFOPT_CHECKPOINT_H
#define PREFOPT_CHECKPOINT_H

#include "prefopt/hf.h"
#include "prefopt/model.h"

#include <stdio.h>

/* The Hugging Face files that travel with the tokenizer from import to export (and that generate reads: the chat
 * template, every eos id), stored in model files and checkpoints as byte datasets of the same names. */
enum { PREFOPT_TOK_CONFIG, PREFOPT_TOK_SPECIAL_MAP, PREFOPT_TOK_CHAT_JINJA, PREFOPT_TOK_GENERATION, PREFOPT_TOK_NSIDE };
extern const char *const prefopt_tokenizer_side_names[PREFOPT_TOK_NSIDE]; /* "tokenizer_config.json", ... */

/* The tokenizer a model file carries. json == NULL means the byte-level default. */
typedef struct {
    char *json;         /* tokenizer.json bytes (malloc'd when returned by a read; free with ..._record_free) */
    size_t len;
    char identity[80];  /* "byte" or "sha256:<hex>" (prefopt_tokenizer_identity's form) */
    char *side[PREFOPT_TOK_NSIDE]; /* the files beside tokenizer.json (NULL when absent), malloc'd */
    size_t side_len[PREFOPT_TOK_NSIDE];
} prefopt_tokenizer_record;

void prefopt_tokenizer_record_free(prefopt_tokenizer_record *t);
/* Reads a tokenizer.json file into a record and computes its identity (of tokenizer.json alone); the side files
 * beside it (tokenizer_config.json, special_tokens_map.json, chat_template.jinja, generation_config.json) come
 * along when present. */
int prefopt_tokenizer_record_load(const char *path, prefopt_tokenizer_record *t, prefopt_err *err);

/* ---- model files ----------------------------------------------------------------------------------------- */

/* Reads the config from a model file or checkpoint. Local (no MPI), any rank. Errors name the file and key. */
int prefopt_model_file_read_config(const char *path, prefopt_model_config *cfg, prefopt_err *err);
/* Reads the tokenizer record (json NULL and identity "byte" when the file has none). Local. */
int prefopt_model_file_read_tokenizer(const char *path, prefopt_tokenizer_record *tok, prefopt_err *err);
/* Both, read by rank 0 of comm alone and broadcast (one file open however many ranks start; issue 17); tok may be
 * NULL. Collective over comm; on failure every rank has the same err. */
int prefopt_model_file_read_header(const char *path, MPI_Comm comm, prefopt_model_config *cfg,
                                   prefopt_tokenizer_record *tok, prefopt_err *err);

/* Loads the weights of a model file or checkpoint (its /model group) into m, on m's grid, any grid. Collective
 * over the grid's world communicator. Fails on a config mismatch, a missing tensor, a shape mismatch or a
 * checksum mismatch, naming the tensor; the error is the same on every rank. */
int prefopt_model_file_load(prefopt_model *m, const char *path, prefopt_err *err);
/* Writes m's weights as a model file (kind "model"), atomically (path.tmp, fsync, rename). Collective over world;
 * DP replicas share the writing. tok may be NULL (byte level). */
int prefopt_model_file_save(prefopt_model *m, const char *path, const prefopt_tokenizer_record *tok, prefopt_err *err);

/* Weights-only copy of a checkpoint or model file (model group, config and tokenizer; no optimizer state), with
 * checksums verified on the way. Serial. */
int prefopt_model_file_export_weights(const char *src, const char *dst, prefopt_err *err);

/* ---- training checkpoints -------------------------------------------------------------------------------- */

/* Everything besides tensors that a resumed run needs to continue bit-identically. Identical on all ranks except
 * rng, which is per rank. */
typedef struct {
    int64_t step;          /* optimizer steps completed */
    int64_t sched_step;    /* learning-rate schedule position */
    int64_t epoch;
    int64_t tokens_seen;
    int64_t cursor[8];     /* data-loader position, trainer-defined (e.g. index in the epoch's permutation, seed) */
    double lr;             /* the last learning rate (informational; the schedule is recomputed from sched_step) */
    uint64_t rng[4];       /* this rank's generator state */
    char *train_config;    /* INI text of the training options; on load malloc'd (free it), NULL if absent */
} prefopt_train_state;

typedef struct {
    const char *dir;       /* created if missing */
    int keep_last;         /* keep this many newest checkpoints (>= 1) */
    const prefopt_tokenizer_record *tok; /* recorded in the checkpoint so export and generate need nothing else */
    const char *base_model; /* LoRA: the path of the frozen base, recorded in the checkpoint (NULL: none) */
} prefopt_ckpt_opts;

/* Collective over the model grid's world. adam_m / adam_v are the AdamW moments as flat local buffers with the
 * layout of prefopt_model_param_data (NULL: none saved). On return every rank agrees on success; on failure the
 * previous checkpoint and latest are untouched. path_out (may be NULL) receives the checkpoint's path. */
int prefopt_ckpt_save(const prefopt_ckpt_opts *o, prefopt_model *policy, const float *adam_m, const float *adam_v,
                      const prefopt_train_state *st, char *path_out, size_t path_len, prefopt_err *err);

/* The newest complete checkpoint of dir: what latest names, else the highest step-*.h5 marked complete.
 * Returns 0 and fills path, or 1 when there is none (not an error). Local. */
/* 1 when path is an HDF5 file whose root attribute "kind" is "model" or "checkpoint" (copied into kind), else 0
 * (a dataset, another file, no file). Serial; any rank. */
int prefopt_model_file_kind(const char *path, char *kind, size_t len);
/* Describes a model file or checkpoint to out: kind, config, tokenizer identity and side files, every dataset with
 * dtype, shape and checksums (each tensor and AdamW moment read back, its checksum verified), and a checkpoint's
 * state (step, schedule, data cursor, the run's training options). Serial reads on the calling rank; 0, or -1 with
 * err naming the file and what is wrong. */
int prefopt_model_file_describe(FILE *out, const char *path, prefopt_err *err);

int prefopt_ckpt_find_latest(const char *dir, char *path, size_t len);
/* The same for resuming, which must not pass over a damaged checkpoint in silence: 0 and path when one is usable
 * (note lists the newer ones skipped and why, "" if none), 1 when dir holds no checkpoint at all, 2 when it holds
 * some but none is usable (note says why for each). Local. */
int prefopt_ckpt_find_latest_checked(const char *dir, char *path, size_t len, char *note, size_t nlen);

/* A grid-independent 64-bit checksum of a model's base (non-adapter) weights: each tensor's checkpoint checksum,
 * mixed with its index and summed. Collective over the grid. */
uint64_t prefopt_model_base_checksum(prefopt_model *m);

/* The LoRA record of a checkpoint: 1 when it has none (a full fine-tuning checkpoint or a model file; not an
 * error), 0 with lora, base path and checksum filled, -1 on a malformed record (err). Local. */
int prefopt_ckpt_read_lora(const char *path, prefopt_lora_config *lora, char *base, size_t base_len,
                           uint64_t *base_checksum, prefopt_err *err);

/* Loads weights, moments (if the pointers are non-NULL; an error if the file has none) and state on any grid.
 * With LoRA (a policy with adapters): the adapters and their moments; the policy's base must already be loaded
 * and match the checkpoint's base_checksum, else one error naming both files.
 * rng is restored per rank when the world size matches the saving run, else every rank gets rank 0's. Collective. */
int prefopt_ckpt_load(const char *path, prefopt_model *policy, float *adam_m, float *adam_v, prefopt_train_state *st,
                      prefopt_err *err);

#endif
