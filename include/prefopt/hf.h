/* prefopt: Hugging Face interop. safetensors files (reader for F32/F16/BF16, streaming F32 writer),
 * config.json <-> prefopt_model_config, and the import/export of whole model directories.
 *
 * The HF <-> prefopt tensor mapping (prefopt names are those of model.h):
 *   GPT-2 (GPT2LMHeadModel; an optional "transformer." prefix is accepted on import):
 *     wte.weight -> wte, wpe.weight -> wpe, ln_f.* -> ln_f.*, h.L.ln_1/ln_2.* -> same names,
 *     h.L.attn.c_attn.weight [C][3C] (Conv1D, [in][out]) -> transposed to [3C][C], rows split into
 *       h.L.attn.q_proj.weight / k_proj / v_proj [C][C]; c_attn.bias [3C] -> q/k/v_proj.bias,
 *     h.L.attn.c_proj, h.L.mlp.c_fc, h.L.mlp.c_proj (Conv1D) -> transposed to [out][in], same names,
 *     lm_head.weight (tied) ignored; the buffers h.L.attn.bias / h.L.attn.masked_bias ignored.
 *   Llama / Mistral / Qwen2 (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM):
 *     model.embed_tokens.weight -> embed_tokens, model.norm.weight -> norm.weight,
 *     model.layers.L.<rest> -> layers.L.<rest> (same layout), lm_head.weight -> lm_head.weight unless tied,
 *     model.layers.L.self_attn.rotary_emb.inv_freq ignored.
 */
#ifndef PREFOPT_HF_H
#define PREFOPT_HF_H

#include "prefopt/model.h"

/* ---- safetensors reading ---------------------------------------------------------------------------------- */

typedef enum { PREFOPT_ST_F32 = 0, PREFOPT_ST_F16 = 1, PREFOPT_ST_BF16 = 2 } prefopt_st_dtype;

typedef struct {
    char name[160];
    prefopt_st_dtype dtype;
    int ndim;
    int64_t shape[4];
    uint64_t begin, end; /* absolute byte offsets in the file */
    int file;            /* index into the set's files */
} prefopt_st_tensor;

typedef struct {
    int nfiles;
    char **paths;        /* full paths */
    char **labels;       /* file names as written in messages ("model-00001-of-00002.safetensors") */
    int ntensors;
    prefopt_st_tensor *t;
} prefopt_st_set;

/* Opens one .safetensors file, or every shard listed by a model.safetensors.index.json: headers are parsed and
 * validated (dtype, shape, offsets inside the file, size = product of shape * dtype size); no data is read. */
int prefopt_st_open_file(const char *path, prefopt_st_set **out, prefopt_err *err);
/* DIR/model.safetensors, else DIR/model.safetensors.index.json. */
int prefopt_st_open_dir(const char *dir, prefopt_st_set **out, prefopt_err *err);
void prefopt_st_free(prefopt_st_set *s);
const prefopt_st_tensor *prefopt_st_find(const prefopt_st_set *s, const char *name);
int64_t prefopt_st_numel(const prefopt_st_tensor *t);
/* Reads one tensor converted to fp32 (row-major, its own shape) into out[numel]. */
int prefopt_st_read_f32(const prefopt_st_set *s, const prefopt_st_tensor *t, float *out, prefopt_err *err);

/* ---- safetensors writing (F32 or BF16; tensors streamed one at a time in the order declared) --------------- */

typedef struct prefopt_st_writer prefopt_st_writer;
/* Declares every tensor up front (the header comes first in the file), then put each in the declared order. */
prefopt_st_writer *prefopt_st_writer_open(const char *path, int n, const char *const *names, const int *ndims,
                                          const int64_t (*shapes)[2], prefopt_err *err);
/* The same with every tensor in dtype (PREFOPT_ST_F32 or PREFOPT_ST_BF16: put rounds to nearest even). */
prefopt_st_writer *prefopt_st_writer_open_dtype(const char *path, int n, const char *const *names, const int *ndims,
                                                const int64_t (*shapes)[2], prefopt_st_dtype dtype, prefopt_err *err);
int prefopt_st_writer_put(prefopt_st_writer *w, const char *name, const float *data, prefopt_err *err);
/* Checks every tensor was written, fsyncs and closes; frees w in every case. */
int prefopt_st_writer_close(prefopt_st_writer *w, prefopt_err *err);

/* ---- config.json ------------------------------------------------------------------------------------------ */

/* Parses DIR/config.json (path given) for model_type gpt2, llama, mistral or qwen2. Unsupported architectures,
 * hidden_act other than silu/gelu_new, rope_scaling not null, sliding windows in use, missing keys: an error
 * naming the file and the key. */
int prefopt_hf_config_read(const char *path, prefopt_model_config *cfg, prefopt_err *err);
/* Writes config.json that transformers loads as the same architecture, torch_dtype float32. */
int prefopt_hf_config_write(const char *path, const prefopt_model_config *cfg, prefopt_err *err);

/* ---- the parameter table of model.h, computed from a config (no model needed) ------------------------------ */

typedef struct {
    char name[96];
    int ndim;
    int64_t shape[2];
} prefopt_tensor_spec;

/* Fills a malloc'd array with every parameter of the config, in model.h's order; returns the count. */
int prefopt_model_tensor_specs(const prefopt_model_config *cfg, prefopt_tensor_spec **out);

/* ---- whole directories ------------------------------------------------------------------------------------ */

/* Converts DIR (config.json, model.safetensors or its sharded index, tokenizer.json if present) to a prefopt
 * model file. Collective over comm: tensors are split over the ranks, each read, converted and written
 * independently one at a time (memory: two tensors per rank). Errors agree on all ranks. */
int prefopt_hf_import(const char *dir, const char *out_path, MPI_Comm comm, prefopt_err *err);

/* Writes DIR/config.json, DIR/model.safetensors (fp32) and DIR/tokenizer.json (if the file records one) from a
 * prefopt model file or checkpoint (weights only: optimizer state is ignored). Serial; memory: about four
 * tensors. */
int prefopt_hf_export(const char *model_path, const char *dir, prefopt_err *err);
/* The same with the weights in dtype: "fp32" (or "float32"), "bf16" (or "bfloat16": round to nearest even), or ""
 * for the model's imported torch_dtype (bfloat16 -> bf16; anything else or unknown -> fp32). Checkpoints and model
 * files keep fp32 whatever is exported. config.json's torch_dtype names what was written. */
int prefopt_hf_export_dtype(const char *model_path, const char *dir, const char *dtype, prefopt_err *err);

/* ---- LoRA adapters (PEFT) --------------------------------------------------------------------------------- */

/* A LoRA checkpoint -> DIR/adapter_config.json (peft_type LORA, r, lora_alpha, target_modules,
 * base_model_name_or_path, task_type CAUSAL_LM) and DIR/adapter_model.safetensors (base_model.model.<module>.
 * lora_A.weight [r][in], .lora_B.weight [out][r], fp32). prefopt_hf_export does this for a LoRA checkpoint.
 * Serial. */
int prefopt_hf_export_peft(const char *ckpt, const char *dir, prefopt_err *err);
/* A LoRA checkpoint -> a full Hugging Face directory of its base (the checkpoint's base_model, its checksum
 * verified) with W + (alpha / r) B A in every adapted weight (summed in double, rounded once); every other
 * tensor is the base's, bit for bit. Serial. */
int prefopt_hf_export_merged(const char *ckpt, const char *dir, const char *dtype, prefopt_err *err);
/* DIR/adapter_config.json -> a LoRA config for arch (r, alpha, targets; dropout 0). Errors name the file and
 * field; adapters prefopt cannot represent (rslora, DoRA, trained biases, modules of different scales) are
 * refused. Local. */
int prefopt_lora_peft_config(const char *dir, prefopt_arch arch, prefopt_lora_config *out, prefopt_err *err);
/* Loads a PEFT adapter directory into m's adapters (m made with the same r, scale and targets). Every rank reads
 * the (small) files and keeps its pieces. Errors name the file and tensor. */
int prefopt_lora_adapter_load(prefopt_model *m, const char *dir, prefopt_err *err);

#endif
