/* Hugging Face config.json <-> prefopt_model_config, and model.h's parameter table computed from a config. */
#define _GNU_SOURCE
#include "prefopt/hf.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int get_int(const cJSON *root, const char *file, const char *key, int *out, int required, prefopt_err *err)
{
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!x || cJSON_IsNull(x)) {
        if (required)
            prefopt_err_set(err, "%s: key '%s' missing", file, key);
        return required;
    }
    if (!cJSON_IsNumber(x) || x->valuedouble != floor(x->valuedouble) || fabs(x->valuedouble) > 2e9) {
        prefopt_err_set(err, "%s: key '%s' is not an integer", file, key);
        return 1;
    }
    *out = (int)x->valuedouble;
    return 0;
}

static int get_num(const cJSON *root, const char *file, const char *key, float *out, prefopt_err *err)
{
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!x || cJSON_IsNull(x))
        return 0;
    if (!cJSON_IsNumber(x) || !(fabs(x->valuedouble) <= FLT_MAX)) { /* float32 in the model and its files */
        prefopt_err_set(err, "%s: key '%s' is not a number in float32's range", file, key);
        return 1;
    }
    *out = (float)x->valuedouble;
    return 0;
}

static int get_bool(const cJSON *root, const char *key, int def)
{
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(root, key);
    return cJSON_IsBool(x) ? cJSON_IsTrue(x) : def;
}

/* bos/eos ids may be an integer or a list (Llama 3 lists several eos ids: the first is used) */
static int get_token_id(const cJSON *root, const char *file, const char *key, int *out, prefopt_err *err)
{
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(root, key);
    *out = -1;
    if (!x || cJSON_IsNull(x))
        return 0;
    if (cJSON_IsArray(x))
        x = cJSON_GetArrayItem(x, 0);
    if (!cJSON_IsNumber(x) || x->valuedouble != floor(x->valuedouble) || fabs(x->valuedouble) > 2e9) {
        prefopt_err_set(err, "%s: key '%s' is not a token id", file, key);
        return 1;
    }
    *out = (int)x->valuedouble;
    return 0;
}

/* ---- the keys of each model_type ---------------------------------------------------------------------------
 * Every key of a config.json is either read (and its value checked) by the code below, or known to leave the
 * forward pass unchanged (metadata, generation defaults, dropout: TRL's trainers disable dropout by default, and
 * prefopt has none). Anything else is refused by name and value: a config never asks for something prefopt
 * silently does not do. */
static const char *const meta_keys[] = {
    "architectures", "model_type", "torch_dtype", "dtype", "transformers_version", "_name_or_path", "use_cache",
    "initializer_range", "bos_token_id", "eos_token_id", "pad_token_id", "sep_token_id", "decoder_start_token_id",
    "tie_word_embeddings", "attention_dropout", "hidden_dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop",
    "summary_type", "summary_use_proj", "summary_activation", "summary_proj_to_labels", "summary_first_dropout",
    "task_specific_params", "id2label", "label2id", "problem_type", "return_dict", "output_hidden_states",
    "output_attentions", "torchscript", "use_bfloat16", "tokenizer_class", "prefix", "max_length", "min_length",
    "do_sample", "early_stopping", "num_beams", "temperature", "top_k", "top_p", "repetition_penalty",
    "length_penalty", "no_repeat_ngram_size", "num_return_sequences", "is_decoder", "is_encoder_decoder",
    "add_cross_attention", "finetuning_task", "cache_implementation", "pretraining_tp", "n_ctx",
    "reorder_and_upcast_attn", "layer_norm_eps", "_attn_implementation_autoset",
    /* remote-code pointers (Phi-3's hub configs carry them): transformers' own class for the type is used */
    "auto_map", NULL};

static const char *const gpt2_keys[] = {"vocab_size", "n_embd", "n_layer", "n_head", "n_positions", "n_inner",
                                        "layer_norm_epsilon", "activation_function", "scale_attn_weights",
                                        "scale_attn_by_inverse_layer_idx", NULL};
/* the Llama family's keys; each type adds its own below */
static const char *const llama_keys[] = {"vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                                         "num_key_value_heads", "head_dim", "intermediate_size",
                                         "max_position_embeddings", "rms_norm_eps", "rope_theta", "rope_scaling",
                                         "hidden_act", "attention_bias", "mlp_bias", NULL};
static const char *const sliding_keys[] = {"sliding_window", "use_sliding_window", "max_window_layers", "layer_types",
                                           NULL};
static const char *const gemma_keys[] = {"hidden_activation", "query_pre_attn_scalar", "attn_logit_softcapping",
                                         "final_logit_softcapping", "rope_local_base_freq", "sliding_window_pattern",
                                         "use_bidirectional_attention", "sliding_window_size", NULL};
static const char *const phi3_keys[] = {"partial_rotary_factor", "original_max_position_embeddings", NULL};
static const char *const smollm3_keys[] = {"no_rope_layers", "no_rope_layer_interval", NULL};

static int in_list(const char *const *l, const char *k)
{
    for (; l && *l; l++)
        if (!strcmp(*l, k))
            return 1;
    return 0;
}

/* a value in a message: compact JSON, cut at 60 bytes */
static void value_text(const cJSON *x, char *buf, size_t len)
{
    char *t = cJSON_PrintUnformatted(x);
    snprintf(buf, len, "%.60s%s", t ? t : "?", t && strlen(t) > 60 ? "..." : "");
    free(t);
}

static int refuse_unknown(const cJSON *root, const char *file, const char *type, const char *const *lists[],
                          prefopt_err *err)
{
    for (const cJSON *x = root->child; x; x = x->next) {
        int known = in_list(meta_keys, x->string);
        for (int i = 0; lists[i] && !known; i++)
            known = in_list(lists[i], x->string);
        if (!known) {
            char v[80];
            value_text(x, v, sizeof v);
            prefopt_err_set(err, "%s: key '%s' = %s is not supported for model_type '%s' (prefopt does not "
                            "implement it)", file, x->string, v, type);
            return 1;
        }
    }
    return 0;
}

/* a key that must be absent, null or false */
static int refuse_true(const cJSON *root, const char *file, const char *key, const char *why, prefopt_err *err)
{
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!x || cJSON_IsNull(x) || cJSON_IsFalse(x))
        return 0;
    char v[80];
    value_text(x, v, sizeof v);
    prefopt_err_set(err, "%s: key '%s' = %s is not supported%s", file, key, v, why);
    return 1;
}

/* rope_scaling: null, {"rope_type"|"type": "default"}, "linear" (factor) or "llama3" */
static int read_rope_scaling(const cJSON *root, const char *file, prefopt_model_config *cfg, prefopt_err *err)
{
    const cJSON *rs = cJSON_GetObjectItemCaseSensitive(root, "rope_scaling");
    if (!rs || cJSON_IsNull(rs))
        return 0;
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(rs, "rope_type");
    if (!cJSON_IsString(t))
        t = cJSON_GetObjectItemCaseSensitive(rs, "type");
    const char *type = cJSON_IsString(t) ? t->valuestring : "?";
    char v[80];
    value_text(rs, v, sizeof v);
    int rc = 0;
    if (!strcmp(type, "default"))
        return 0;
    if (!strcmp(type, "linear")) {
        rc = get_num(rs, file, "factor", &cfg->rope_linear_factor, err);
        if (!rc && !(cfg->rope_linear_factor > 0))
            rc = (prefopt_err_set(err, "%s: key 'rope_scaling' = %s: linear scaling needs a factor > 0", file, v), 1);
        return rc;
    }
    if (!strcmp(type, "llama3")) {
        cfg->rope_llama3 = 1;
        rc |= get_num(rs, file, "factor", &cfg->rope_factor, err);
        rc |= get_num(rs, file, "low_freq_factor", &cfg->rope_low_freq_factor, err);
        rc |= get_num(rs, file, "high_freq_factor", &cfg->rope_high_freq_factor, err);
        rc |= get_int(rs, file, "original_max_position_embeddings", &cfg->rope_original_max_position, 1, err);
        if (!rc && !(cfg->rope_factor > 0 && cfg->rope_low_freq_factor > 0 &&
                     cfg->rope_high_freq_factor > cfg->rope_low_freq_factor))
            rc = (prefopt_err_set(err, "%s: key 'rope_scaling' = %s: llama3 scaling needs factor > 0 and 0 < "
                                  "low_freq_factor < high_freq_factor", file, v), 1);
        return rc;
    }
    prefopt_err_set(err, "%s: key 'rope_scaling' = %s: RoPE scaling type '%s' is not supported (null, default, "
                    "linear, llama3 are)%s", file, v, type,
                    !strcmp(type, "su") || !strcmp(type, "longrope") ? "; Phi-3's long-context su/longrope is not "
                                                                       "implemented" : "");
    return 1;
}

/* which layers are sliding: layer_types when given ("sliding_attention" / "full_attention"), else the type's
 * rule (Mistral, Phi-3: all; Qwen2/3, SmolLM3: layers >= max_window_layers when use_sliding_window; Gemma 2:
 * even layers; Gemma 3: all but every sliding_window_pattern-th) */
static int read_layer_types(const cJSON *root, const char *file, const char *type, prefopt_model_config *cfg,
                            prefopt_err *err)
{
    const int L = cfg->num_layers;
    if (L <= 0 || L > PREFOPT_MAX_LAYERS)
        return 0; /* the size check below reports it */
    const cJSON *lt = cJSON_GetObjectItemCaseSensitive(root, "layer_types");
    if (lt && !cJSON_IsNull(lt)) {
        if (!cJSON_IsArray(lt) || cJSON_GetArraySize(lt) != L)
            return prefopt_err_set(err, "%s: key 'layer_types' is not a list of %d layer types", file, L), 1;
        int l = 0;
        for (const cJSON *x = lt->child; x; x = x->next, l++) {
            if (cJSON_IsString(x) && !strcmp(x->valuestring, "sliding_attention"))
                cfg->layer_flags[l] |= PREFOPT_LAYER_SLIDING;
            else if (!cJSON_IsString(x) || strcmp(x->valuestring, "full_attention")) {
                char v[80];
                value_text(x, v, sizeof v);
                return prefopt_err_set(err, "%s: key 'layer_types' entry %d = %s is not supported (sliding_attention, "
                                       "full_attention are)", file, l, v), 1;
            }
        }
        return 0;
    }
    int mwl = 0, pattern = !strcmp(type, "gemma2") ? 2 : 6;
    if (get_int(root, file, "max_window_layers", &mwl, 0, err) || get_int(root, file, "sliding_window_pattern",
                                                                           &pattern, 0, err))
        return 1;
    for (int l = 0; l < L; l++) {
        int sl;
        if (!strcmp(type, "mistral") || !strcmp(type, "phi3"))
            sl = 1;
        else if (!strncmp(type, "gemma", 5))
            sl = pattern > 0 && (l + 1) % pattern != 0;
        else
            sl = get_bool(root, "use_sliding_window", 0) && l >= mwl;
        cfg->layer_flags[l] |= sl ? PREFOPT_LAYER_SLIDING : 0;
    }
    return 0;
}

static int read_llama_family(const cJSON *root, const char *file, const char *type, prefopt_model_config *cfg,
                             prefopt_err *err)
{
    const int gemma = !strncmp(type, "gemma", 5), gemma3 = !strcmp(type, "gemma3_text");
    const int phi3 = !strcmp(type, "phi3"), olmo2 = !strcmp(type, "olmo2"), smollm3 = !strcmp(type, "smollm3");
    const char *const *lists[6] = {llama_keys, NULL, NULL, NULL, NULL, NULL};
    int nl = 1;
    if (strcmp(type, "llama") && !olmo2)
        lists[nl++] = sliding_keys;
    if (gemma)
        lists[nl++] = gemma_keys;
    if (phi3)
        lists[nl++] = phi3_keys;
    if (smollm3)
        lists[nl++] = smollm3_keys;
    if (refuse_unknown(root, file, type, lists, err))
        return 1;
    int rc = 0;
    cfg->arch = PREFOPT_ARCH_LLAMA;
    rc |= get_int(root, file, "vocab_size", &cfg->vocab_size, 1, err);
    rc |= get_int(root, file, "hidden_size", &cfg->hidden_size, 1, err);
    rc |= get_int(root, file, "num_hidden_layers", &cfg->num_layers, 1, err);
    rc |= get_int(root, file, "num_attention_heads", &cfg->num_heads, 1, err);
    rc |= get_int(root, file, "intermediate_size", &cfg->intermediate_size, 1, err);
    rc |= get_int(root, file, "max_position_embeddings", &cfg->max_position, 1, err);
    cfg->num_kv_heads = cfg->num_heads;
    rc |= get_int(root, file, "num_key_value_heads", &cfg->num_kv_heads, 0, err);
    cfg->head_dim = cfg->num_heads ? cfg->hidden_size / cfg->num_heads : 0;
    rc |= get_int(root, file, "head_dim", &cfg->head_dim, 0, err);
    cfg->norm_eps = 1e-6f;
    rc |= get_num(root, file, "rms_norm_eps", &cfg->norm_eps, err);
    cfg->rope_theta = 10000.0f;
    rc |= get_num(root, file, "rope_theta", &cfg->rope_theta, err);
    cfg->qkv_bias = !strcmp(type, "qwen2");
    cfg->tie_word_embeddings = get_bool(root, "tie_word_embeddings", gemma);
    if (rc)
        return rc;
    /* HF then also biases o_proj (Llama, Qwen3, OLMo 2, Gemma), which prefopt lacks */
    rc = refuse_true(root, file, "attention_bias", " (it adds an o_proj bias)", err) ||
         refuse_true(root, file, "mlp_bias", "", err) ||
         refuse_true(root, file, "use_bidirectional_attention", " (prefopt's attention is causal)", err);
    if (rc)
        return rc;
    const char *act_key = gemma && cJSON_GetObjectItemCaseSensitive(root, "hidden_activation") ? "hidden_activation"
                                                                                                : "hidden_act";
    const cJSON *act = cJSON_GetObjectItemCaseSensitive(root, act_key);
    const char *want = gemma ? "gelu_pytorch_tanh" : "silu";
    if (cJSON_IsString(act) && strcmp(act->valuestring, want) && !(gemma && !strcmp(act->valuestring, "gelu_tanh")))
        return prefopt_err_set(err, "%s: key '%s' is '%s'; only %s is supported for %s", file, act_key,
                               act->valuestring, want, type), 1;
    cfg->mlp_act = gemma ? PREFOPT_ACT_GELU_TANH : PREFOPT_ACT_SILU;
    if (read_rope_scaling(root, file, cfg, err))
        return 1;
    /* a sliding window: every type but Llama and OLMo 2 may set one (Qwen2/3, SmolLM3 only with
     * use_sliding_window) */
    if (cJSON_GetObjectItemCaseSensitive(root, "sliding_window")) {
        rc = get_int(root, file, "sliding_window", &cfg->sliding_window, 0, err);
        if (!rc && cfg->sliding_window < 0)
            return prefopt_err_set(err, "%s: key 'sliding_window' = %d is negative", file, cfg->sliding_window), 1;
        if (rc)
            return rc;
        if ((!strcmp(type, "qwen2") || !strcmp(type, "qwen3") || smollm3) && !get_bool(root, "use_sliding_window", 0))
            cfg->sliding_window = 0; /* unused: HF sets it to None */
    }
    if (strcmp(type, "llama") && !olmo2 && read_layer_types(root, file, type, cfg, err))
        return 1;
    /* Qwen2/3 and SmolLM3 without a window (use_sliding_window without a sliding_window, or a window of 0, with
     * or without layer_types) have no sliding layer: the flag means nothing else for them, and the writer's
     * use_sliding_window = (window > 0) reads back so. (Gemma 3 keeps its flags: they also pick the local RoPE.) */
    if ((!strcmp(type, "qwen2") || !strcmp(type, "qwen3") || smollm3) && cfg->sliding_window == 0)
        for (int l = 0; l < cfg->num_layers && l < PREFOPT_MAX_LAYERS; l++)
            cfg->layer_flags[l] &= ~PREFOPT_LAYER_SLIDING;
    int sws = cfg->sliding_window; /* Gemma 2's older name of the window: accepted when it agrees */
    if (get_int(root, file, "sliding_window_size", &sws, 0, err))
        return 1;
    if (sws != cfg->sliding_window)
        return prefopt_err_set(err, "%s: key 'sliding_window_size' = %d differs from sliding_window %d", file, sws,
                               cfg->sliding_window), 1;
    if (!strcmp(type, "qwen3") || gemma3)
        cfg->qk_norm = PREFOPT_QK_NORM_HEAD;
    if (olmo2) {
        cfg->qk_norm = PREFOPT_QK_NORM_FULL;
        cfg->norm_style = PREFOPT_NORM_POST;
    }
    if (gemma) {
        cfg->norm_style = PREFOPT_NORM_SANDWICH;
        cfg->norm_unit_offset = 1;
        cfg->embed_scale = sqrtf((float)cfg->hidden_size); /* HF: hidden_size ** 0.5 as a tensor of the dtype */
        int qs = 256;
        if (get_int(root, file, "query_pre_attn_scalar", &qs, 0, err))
            return 1;
        if (qs <= 0)
            return prefopt_err_set(err, "%s: key 'query_pre_attn_scalar' = %d must be positive", file, qs), 1;
        cfg->attn_scale = 1.0f / sqrtf((float)qs);
        if (!gemma3) { /* Gemma 2's defaults: 50 and 30; null turns them off */
            cfg->attn_softcap = 50.0f;
            cfg->final_softcap = 30.0f;
        }
        const cJSON *a = cJSON_GetObjectItemCaseSensitive(root, "attn_logit_softcapping");
        const cJSON *f = cJSON_GetObjectItemCaseSensitive(root, "final_logit_softcapping");
        if (cJSON_IsNull(a))
            cfg->attn_softcap = 0;
        if (cJSON_IsNull(f))
            cfg->final_softcap = 0;
        if (get_num(root, file, "attn_logit_softcapping", &cfg->attn_softcap, err) ||
            get_num(root, file, "final_logit_softcapping", &cfg->final_softcap, err))
            return 1;
        if (cfg->attn_softcap < 0 || cfg->final_softcap < 0)
            return prefopt_err_set(err, "%s: a soft-capping value is negative", file), 1;
        if (gemma3) {
            cfg->rope_local_theta = 10000.0f;
            if (get_num(root, file, "rope_local_base_freq", &cfg->rope_local_theta, err))
                return 1;
        }
    }
    if (phi3) {
        float prf = 1.0f;
        if (get_num(root, file, "partial_rotary_factor", &prf, err) ||
            get_int(root, file, "original_max_position_embeddings", &cfg->rope_original_max_position, 0, err))
            return 1;
        int rd = (int)((double)cfg->head_dim * prf); /* HF: int(head_dim * partial_rotary_factor) */
        if (!(prf > 0 && prf <= 1) || rd < 2 || rd % 2)
            return prefopt_err_set(err, "%s: key 'partial_rotary_factor' = %g gives %d rotary features of %d; an "
                                   "even number >= 2 is needed", file, (double)prf, rd, cfg->head_dim), 1;
        cfg->rope_dim = rd == cfg->head_dim ? 0 : rd;
        cfg->fused_qkv = 1;
    }
    if (smollm3 && cfg->num_layers > 0 && cfg->num_layers <= PREFOPT_MAX_LAYERS) {
        const cJSON *nr = cJSON_GetObjectItemCaseSensitive(root, "no_rope_layers");
        int interval = 4;
        if (get_int(root, file, "no_rope_layer_interval", &interval, 0, err))
            return 1;
        if (nr && !cJSON_IsNull(nr)) { /* 1: the layer uses RoPE, 0: it does not */
            if (!cJSON_IsArray(nr) || cJSON_GetArraySize(nr) != cfg->num_layers)
                return prefopt_err_set(err, "%s: key 'no_rope_layers' is not a list of %d flags", file,
                                       cfg->num_layers), 1;
            int l = 0;
            for (const cJSON *x = nr->child; x; x = x->next, l++) {
                if (!cJSON_IsNumber(x) || (x->valuedouble != 0 && x->valuedouble != 1))
                    return prefopt_err_set(err, "%s: key 'no_rope_layers' entry %d is not 0 or 1", file, l), 1;
                cfg->layer_flags[l] |= x->valuedouble == 0 ? PREFOPT_LAYER_NOROPE : 0;
            }
        } else if (interval > 0) {
            for (int l = 0; l < cfg->num_layers; l++)
                cfg->layer_flags[l] |= (l + 1) % interval == 0 ? PREFOPT_LAYER_NOROPE : 0;
        }
    }
    return 0;
}

int prefopt_hf_config_read(const char *path, prefopt_model_config *cfg, prefopt_err *err)
{
    const char *file = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
    FILE *f = fopen(path, "rb");
    if (!f) {
        prefopt_err_set(err, "%s: cannot open: %s", path, strerror(errno));
        return 1;
    }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *txt = prefopt_xmalloc((size_t)n + 1, "config.json");
    size_t got = fread(txt, 1, (size_t)n, f);
    fclose(f);
    txt[got] = '\0';
    cJSON *root = cJSON_Parse(txt);
    free(txt);
    if (!cJSON_IsObject(root)) {
        prefopt_err_set(err, "%s: not a JSON object", file);
        cJSON_Delete(root);
        return 1;
    }
    memset(cfg, 0, sizeof *cfg);
    int rc = 0;
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(root, "model_type");
    if (!cJSON_IsString(mt)) {
        prefopt_err_set(err, "%s: key 'model_type' missing", file);
        rc = 1;
        goto out;
    }
    const char *type = mt->valuestring;
    static const char *const family[] = {"llama", "mistral", "qwen2", "qwen3", "olmo2", "gemma2", "gemma3_text",
                                         "phi3", "smollm3", NULL};
    if (!strcmp(type, "gpt2")) {
        const char *const *lists[2] = {gpt2_keys, NULL};
        if (refuse_unknown(root, file, type, lists, err)) {
            rc = 1;
            goto out;
        }
        cfg->arch = PREFOPT_ARCH_GPT2;
        rc |= get_int(root, file, "vocab_size", &cfg->vocab_size, 1, err);
        rc |= get_int(root, file, "n_embd", &cfg->hidden_size, 1, err);
        rc |= get_int(root, file, "n_layer", &cfg->num_layers, 1, err);
        rc |= get_int(root, file, "n_head", &cfg->num_heads, 1, err);
        rc |= get_int(root, file, "n_positions", &cfg->max_position, 1, err);
        cfg->intermediate_size = cfg->hidden_size <= INT32_MAX / 4 ? 4 * cfg->hidden_size : 0; /* 0: inconsistent */
        rc |= get_int(root, file, "n_inner", &cfg->intermediate_size, 0, err);
        cfg->norm_eps = 1e-5f;
        rc |= get_num(root, file, "layer_norm_epsilon", &cfg->norm_eps, err);
        cfg->num_kv_heads = cfg->num_heads;
        cfg->qkv_bias = 1;
        cfg->tie_word_embeddings = 1;
        const cJSON *act = cJSON_GetObjectItemCaseSensitive(root, "activation_function");
        if (!rc && cJSON_IsString(act) && strcmp(act->valuestring, "gelu_new") && strcmp(act->valuestring, "gelu_pytorch_tanh")) {
            prefopt_err_set(err, "%s: key 'activation_function' is '%s'; only gelu_new is supported", file,
                            act->valuestring);
            rc = 1;
        }
        if (!rc && !get_bool(root, "tie_word_embeddings", 1)) {
            prefopt_err_set(err, "%s: key 'tie_word_embeddings' = false is not supported for gpt2 (the head is wte)",
                            file);
            rc = 1;
        }
        if (!rc && get_bool(root, "scale_attn_by_inverse_layer_idx", 0)) {
            prefopt_err_set(err, "%s: key 'scale_attn_by_inverse_layer_idx' = true is not supported", file);
            rc = 1;
        }
        if (!rc && !get_bool(root, "scale_attn_weights", 1)) {
            prefopt_err_set(err, "%s: key 'scale_attn_weights' = false is not supported", file);
            rc = 1;
        }
    } else if (in_list(family, type)) {
        rc = read_llama_family(root, file, type, cfg, err);
    } else {
        prefopt_err_set(err, "%s: model_type '%s' is not supported (gpt2, llama, mistral, qwen2, qwen3, olmo2, "
                        "gemma2, gemma3_text, phi3, smollm3 are)", file, type);
        rc = 1;
        goto out;
    }
    if (cfg->arch == PREFOPT_ARCH_GPT2)
        cfg->head_dim = cfg->num_heads ? cfg->hidden_size / cfg->num_heads : 0;
    snprintf(cfg->hf_model_type, sizeof cfg->hf_model_type, "%s", type);
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(root, "torch_dtype"); /* "dtype" in transformers >= 4.56 */
    if (!cJSON_IsString(dt))
        dt = cJSON_GetObjectItemCaseSensitive(root, "dtype");
    if (cJSON_IsString(dt) && strlen(dt->valuestring) < sizeof cfg->torch_dtype)
        snprintf(cfg->torch_dtype, sizeof cfg->torch_dtype, "%s", dt->valuestring);
    rc |= get_token_id(root, file, "bos_token_id", &cfg->bos_id, err);
    rc |= get_token_id(root, file, "eos_token_id", &cfg->eos_id, err);
    rc |= get_token_id(root, file, "pad_token_id", &cfg->pad_id, err);
    if (!rc && (cfg->vocab_size <= 0 || cfg->hidden_size <= 0 || cfg->num_layers <= 0 || cfg->num_heads <= 0 ||
                cfg->num_kv_heads <= 0 || cfg->num_heads % cfg->num_kv_heads || cfg->head_dim <= 0 ||
                cfg->intermediate_size <= 0 || cfg->max_position <= 0 || cfg->num_layers > PREFOPT_MAX_LAYERS)) {
        prefopt_err_set(err, "%s: inconsistent sizes (vocab %d, hidden %d, layers %d (at most %d), heads %d/%d kv, "
                        "head_dim %d, intermediate %d, positions %d)", file, cfg->vocab_size, cfg->hidden_size,
                        cfg->num_layers, PREFOPT_MAX_LAYERS, cfg->num_heads, cfg->num_kv_heads, cfg->head_dim,
                        cfg->intermediate_size, cfg->max_position);
        rc = 1;
    }
    if (!rc && cfg->arch == PREFOPT_ARCH_GPT2 && cfg->hidden_size % cfg->num_heads) {
        prefopt_err_set(err, "%s: n_embd %d is not a multiple of n_head %d", file, cfg->hidden_size, cfg->num_heads);
        rc = 1;
    }
out:
    cJSON_Delete(root);
    return rc;
}

/* the shortest decimal that reads back as the same float: 1e-05, not 9.9999997473787516e-06 */
static double short_float(float f)
{
    char buf[32];
    for (int p = 1; p <= 9; p++) {
        snprintf(buf, sizeof buf, "%.*g", p, (double)f);
        if ((float)strtod(buf, NULL) == f)
            return strtod(buf, NULL);
    }
    return (double)f;
}

static void add_id(cJSON *root, const char *key, int id)
{
    if (id >= 0)
        cJSON_AddNumberToObject(root, key, id);
    else
        cJSON_AddNullToObject(root, key);
}

int prefopt_hf_config_write(const char *path, const prefopt_model_config *cfg, prefopt_err *err)
{
    cJSON *root = cJSON_CreateObject();
    const char *type = cfg->hf_model_type[0] ? cfg->hf_model_type : (cfg->arch == PREFOPT_ARCH_GPT2 ? "gpt2" : "llama");
    if (cfg->arch == PREFOPT_ARCH_GPT2) {
        cJSON *a = cJSON_AddArrayToObject(root, "architectures");
        cJSON_AddItemToArray(a, cJSON_CreateString("GPT2LMHeadModel"));
        cJSON_AddStringToObject(root, "model_type", "gpt2");
        cJSON_AddStringToObject(root, "activation_function", "gelu_new");
        cJSON_AddNumberToObject(root, "vocab_size", cfg->vocab_size);
        cJSON_AddNumberToObject(root, "n_embd", cfg->hidden_size);
        cJSON_AddNumberToObject(root, "n_layer", cfg->num_layers);
        cJSON_AddNumberToObject(root, "n_head", cfg->num_heads);
        cJSON_AddNumberToObject(root, "n_positions", cfg->max_position);
        cJSON_AddNumberToObject(root, "n_ctx", cfg->max_position);
        if (cfg->intermediate_size != 4 * cfg->hidden_size)
            cJSON_AddNumberToObject(root, "n_inner", cfg->intermediate_size);
        else
            cJSON_AddNullToObject(root, "n_inner");
        cJSON_AddNumberToObject(root, "layer_norm_epsilon", short_float(cfg->norm_eps));
        cJSON_AddNumberToObject(root, "attn_pdrop", 0.0);
        cJSON_AddNumberToObject(root, "embd_pdrop", 0.0);
        cJSON_AddNumberToObject(root, "resid_pdrop", 0.0);
        cJSON_AddNumberToObject(root, "initializer_range", 0.02);
        cJSON_AddTrueToObject(root, "scale_attn_weights");
        cJSON_AddTrueToObject(root, "tie_word_embeddings");
    } else {
        /* q/k/v biases exist in transformers' Llama family only as Qwen2 (Llama's attention_bias also biases o_proj) */
        if (cfg->qkv_bias)
            type = "qwen2";
        static const char *const names[][2] = {
            {"mistral", "MistralForCausalLM"}, {"qwen2", "Qwen2ForCausalLM"},   {"qwen3", "Qwen3ForCausalLM"},
            {"olmo2", "Olmo2ForCausalLM"},     {"gemma2", "Gemma2ForCausalLM"}, {"gemma3_text", "Gemma3ForCausalLM"},
            {"phi3", "Phi3ForCausalLM"},       {"smollm3", "SmolLM3ForCausalLM"}};
        const char *archname = "LlamaForCausalLM";
        for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
            if (!strcmp(type, names[i][0]))
                archname = names[i][1];
        const int gemma = !strncmp(type, "gemma", 5), phi3 = !strcmp(type, "phi3");
        const int qwen = !strcmp(type, "qwen2") || !strcmp(type, "qwen3") || !strcmp(type, "smollm3");
        const int L = cfg->num_layers > 0 && cfg->num_layers <= PREFOPT_MAX_LAYERS ? cfg->num_layers : 0;
        cJSON *a = cJSON_AddArrayToObject(root, "architectures");
        cJSON_AddItemToArray(a, cJSON_CreateString(archname));
        cJSON_AddStringToObject(root, "model_type", type);
        cJSON_AddStringToObject(root, "hidden_act", gemma ? "gelu_pytorch_tanh" : "silu");
        if (gemma)
            cJSON_AddStringToObject(root, "hidden_activation", "gelu_pytorch_tanh");
        cJSON_AddNumberToObject(root, "vocab_size", cfg->vocab_size);
        cJSON_AddNumberToObject(root, "hidden_size", cfg->hidden_size);
        cJSON_AddNumberToObject(root, "num_hidden_layers", cfg->num_layers);
        cJSON_AddNumberToObject(root, "num_attention_heads", cfg->num_heads);
        cJSON_AddNumberToObject(root, "num_key_value_heads", cfg->num_kv_heads);
        cJSON_AddNumberToObject(root, "head_dim", cfg->head_dim);
        cJSON_AddNumberToObject(root, "intermediate_size", cfg->intermediate_size);
        cJSON_AddNumberToObject(root, "max_position_embeddings", cfg->max_position);
        cJSON_AddNumberToObject(root, "rms_norm_eps", short_float(cfg->norm_eps));
        cJSON_AddNumberToObject(root, "rope_theta", short_float(cfg->rope_theta));
        if (cfg->rope_linear_factor > 0) {
            cJSON *rs = cJSON_AddObjectToObject(root, "rope_scaling");
            cJSON_AddStringToObject(rs, "rope_type", "linear");
            cJSON_AddNumberToObject(rs, "factor", short_float(cfg->rope_linear_factor));
        } else if (cfg->rope_llama3) {
            cJSON *rs = cJSON_AddObjectToObject(root, "rope_scaling");
            cJSON_AddStringToObject(rs, "rope_type", "llama3");
            cJSON_AddNumberToObject(rs, "factor", short_float(cfg->rope_factor));
            cJSON_AddNumberToObject(rs, "low_freq_factor", short_float(cfg->rope_low_freq_factor));
            cJSON_AddNumberToObject(rs, "high_freq_factor", short_float(cfg->rope_high_freq_factor));
            cJSON_AddNumberToObject(rs, "original_max_position_embeddings", cfg->rope_original_max_position);
        } else {
            cJSON_AddNullToObject(root, "rope_scaling");
        }
        cJSON_AddBoolToObject(root, "tie_word_embeddings", cfg->tie_word_embeddings);
        cJSON_AddNumberToObject(root, "attention_dropout", 0.0);
        cJSON_AddNumberToObject(root, "initializer_range", 0.02);
        if (!phi3 && strcmp(type, "mistral") && strcmp(type, "qwen2"))
            cJSON_AddFalseToObject(root, "attention_bias");
        if (!strcmp(type, "llama") || !strcmp(type, "smollm3"))
            cJSON_AddFalseToObject(root, "mlp_bias");
        /* the window, and which layers use it */
        if (strcmp(type, "llama") && strcmp(type, "olmo2")) {
            if (cfg->sliding_window > 0)
                cJSON_AddNumberToObject(root, "sliding_window", cfg->sliding_window);
            else
                cJSON_AddNullToObject(root, "sliding_window");
        }
        int first_sliding = L, first_full = L;
        for (int l = L - 1; l >= 0; l--) {
            if (cfg->layer_flags[l] & PREFOPT_LAYER_SLIDING)
                first_sliding = l;
            else
                first_full = l;
        }
        if (qwen) {
            cJSON_AddBoolToObject(root, "use_sliding_window", cfg->sliding_window > 0);
            cJSON_AddNumberToObject(root, "max_window_layers", cfg->sliding_window > 0 ? first_sliding : L);
        }
        if (gemma || (qwen && strcmp(type, "qwen2"))) {
            cJSON *lt = cJSON_AddArrayToObject(root, "layer_types");
            for (int l = 0; l < L; l++)
                cJSON_AddItemToArray(lt, cJSON_CreateString(cfg->layer_flags[l] & PREFOPT_LAYER_SLIDING
                                                                ? "sliding_attention"
                                                                : "full_attention"));
        }
        if (gemma) {
            const double qa = cfg->attn_scale;
            cJSON_AddNumberToObject(root, "query_pre_attn_scalar", qa > 0 ? round(1.0 / (qa * qa)) : 256);
            if (cfg->attn_softcap > 0)
                cJSON_AddNumberToObject(root, "attn_logit_softcapping", short_float(cfg->attn_softcap));
            else
                cJSON_AddNullToObject(root, "attn_logit_softcapping");
            if (cfg->final_softcap > 0)
                cJSON_AddNumberToObject(root, "final_logit_softcapping", short_float(cfg->final_softcap));
            else
                cJSON_AddNullToObject(root, "final_logit_softcapping");
        }
        if (!strcmp(type, "gemma3_text")) {
            cJSON_AddNumberToObject(root, "rope_local_base_freq", short_float(cfg->rope_local_theta));
            /* the pattern, when the layers follow one: sliding but every P-th */
            int P = first_full + 1, follows = first_full < L;
            for (int l = 0; l < L && follows; l++)
                follows = !!(cfg->layer_flags[l] & PREFOPT_LAYER_SLIDING) == ((l + 1) % P != 0);
            if (follows)
                cJSON_AddNumberToObject(root, "sliding_window_pattern", P);
        }
        if (phi3) {
            int R = cfg->rope_dim ? cfg->rope_dim : cfg->head_dim;
            cJSON_AddNumberToObject(root, "partial_rotary_factor", short_float((float)R / (float)cfg->head_dim));
            if (cfg->rope_original_max_position > 0)
                cJSON_AddNumberToObject(root, "original_max_position_embeddings", cfg->rope_original_max_position);
            cJSON_AddNumberToObject(root, "resid_pdrop", 0.0); /* prefopt trains without dropout */
            cJSON_AddNumberToObject(root, "embd_pdrop", 0.0);
        }
        if (!strcmp(type, "smollm3")) {
            cJSON *nr = cJSON_AddArrayToObject(root, "no_rope_layers");
            for (int l = 0; l < L; l++)
                cJSON_AddItemToArray(nr, cJSON_CreateNumber(cfg->layer_flags[l] & PREFOPT_LAYER_NOROPE ? 0 : 1));
        }
    }
    add_id(root, "bos_token_id", cfg->bos_id);
    add_id(root, "eos_token_id", cfg->eos_id);
    if (cfg->pad_id >= 0)
        cJSON_AddNumberToObject(root, "pad_token_id", cfg->pad_id);
    cJSON_AddStringToObject(root, "torch_dtype", cfg->torch_dtype[0] ? cfg->torch_dtype : "float32");
    /* the first release with every model_type written here (SmolLM3: 4.53) */
    cJSON_AddStringToObject(root, "transformers_version", "4.53.0");
    char *txt = cJSON_Print(root);
    cJSON_Delete(root);
    FILE *f = fopen(path, "wb");
    int rc = 0;
    if (!f || fputs(txt, f) < 0 || fputc('\n', f) == EOF) {
        prefopt_err_set(err, "%s: cannot write: %s", path, strerror(errno));
        rc = 1;
    }
    if (f && fclose(f) && !rc) {
        prefopt_err_set(err, "%s: cannot write: %s", path, strerror(errno));
        rc = 1;
    }
    free(txt);
    return rc;
}

static void spec(prefopt_tensor_spec **v, int *n, int *cap, int ndim, int64_t s0, int64_t s1, const char *fmt, int l)
{
    if (*n == *cap) {
        *cap = *cap ? 2 * *cap : 64;
        *v = realloc(*v, sizeof **v * (size_t)*cap);
    }
    prefopt_tensor_spec *t = &(*v)[(*n)++];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, fmt, l);
    t->ndim = ndim;
    t->shape[0] = s0;
    t->shape[1] = ndim == 2 ? s1 : 0;
}

int prefopt_model_tensor_specs(const prefopt_model_config *c, prefopt_tensor_spec **out)
{
    prefopt_tensor_spec *v = NULL;
    int n = 0, cap = 0;
    int64_t V = c->vocab_size, C = c->hidden_size, F = c->intermediate_size, P = c->max_position;
    if (c->arch == PREFOPT_ARCH_GPT2) {
        spec(&v, &n, &cap, 2, V, C, "wte", 0);
        spec(&v, &n, &cap, 2, P, C, "wpe", 0);
        for (int l = 0; l < c->num_layers; l++) {
            spec(&v, &n, &cap, 1, C, 0, "h.%d.ln_1.weight", l);
            spec(&v, &n, &cap, 1, C, 0, "h.%d.ln_1.bias", l);
            spec(&v, &n, &cap, 2, C, C, "h.%d.attn.q_proj.weight", l);
            spec(&v, &n, &cap, 1, C, 0, "h.%d.attn.q_proj.bias", l);
            spec(&v, &n, &cap, 2, C, C, "h.%d.attn.k_proj.weight", l);
            spec(&v, &n, &cap, 1, C, 0, "h.%d.attn.k_proj.bias", l);
            spec(&v, &n, &cap, 2, C, C, "h.%d.attn.v_proj.weight", l);
            spec(&v, &n, &cap, 1, C, 0, "h.%d.attn.v_proj.bias", l);
            spec(&v, &n, &cap, 2, C, C, "h.%d.attn.c_proj.weight", l);
            spec(&v, &n, &cap, 1, C, 0, "h.%d.attn.c_proj.bias", l);
            spec(&v, &n, &cap, 1, C, 0, "h.%d.ln_2.weight", l);
            spec(&v, &n, &cap, 1, C, 0, "h.%d.ln_2.bias", l);
            spec(&v, &n, &cap, 2, F, C, "h.%d.mlp.c_fc.weight", l);
            spec(&v, &n, &cap, 1, F, 0, "h.%d.mlp.c_fc.bias", l);
            spec(&v, &n, &cap, 2, C, F, "h.%d.mlp.c_proj.weight", l);
            spec(&v, &n, &cap, 1, C, 0, "h.%d.mlp.c_proj.bias", l);
        }
        spec(&v, &n, &cap, 1, C, 0, "ln_f.weight", 0);
        spec(&v, &n, &cap, 1, C, 0, "ln_f.bias", 0);
    } else {
        int64_t QD = (int64_t)c->num_heads * c->head_dim, KD = (int64_t)c->num_kv_heads * c->head_dim;
        spec(&v, &n, &cap, 2, V, C, "embed_tokens", 0);
        const int64_t D = c->head_dim;
        for (int l = 0; l < c->num_layers; l++) { /* the order of src/model/params.c's registry */
            if (c->norm_style != PREFOPT_NORM_POST)
                spec(&v, &n, &cap, 1, C, 0, "layers.%d.input_layernorm.weight", l);
            spec(&v, &n, &cap, 2, QD, C, "layers.%d.self_attn.q_proj.weight", l);
            if (c->qkv_bias)
                spec(&v, &n, &cap, 1, QD, 0, "layers.%d.self_attn.q_proj.bias", l);
            spec(&v, &n, &cap, 2, KD, C, "layers.%d.self_attn.k_proj.weight", l);
            if (c->qkv_bias)
                spec(&v, &n, &cap, 1, KD, 0, "layers.%d.self_attn.k_proj.bias", l);
            spec(&v, &n, &cap, 2, KD, C, "layers.%d.self_attn.v_proj.weight", l);
            if (c->qkv_bias)
                spec(&v, &n, &cap, 1, KD, 0, "layers.%d.self_attn.v_proj.bias", l);
            spec(&v, &n, &cap, 2, C, QD, "layers.%d.self_attn.o_proj.weight", l);
            if (c->qk_norm) {
                int full = c->qk_norm == PREFOPT_QK_NORM_FULL;
                spec(&v, &n, &cap, 1, full ? QD : D, 0, "layers.%d.self_attn.q_norm.weight", l);
                spec(&v, &n, &cap, 1, full ? KD : D, 0, "layers.%d.self_attn.k_norm.weight", l);
            }
            spec(&v, &n, &cap, 1, C, 0, "layers.%d.post_attention_layernorm.weight", l);
            if (c->norm_style == PREFOPT_NORM_SANDWICH)
                spec(&v, &n, &cap, 1, C, 0, "layers.%d.pre_feedforward_layernorm.weight", l);
            if (c->norm_style != PREFOPT_NORM_PRE)
                spec(&v, &n, &cap, 1, C, 0, "layers.%d.post_feedforward_layernorm.weight", l);
            spec(&v, &n, &cap, 2, F, C, "layers.%d.mlp.gate_proj.weight", l);
            spec(&v, &n, &cap, 2, F, C, "layers.%d.mlp.up_proj.weight", l);
            spec(&v, &n, &cap, 2, C, F, "layers.%d.mlp.down_proj.weight", l);
        }
        spec(&v, &n, &cap, 1, C, 0, "norm.weight", 0);
        if (!c->tie_word_embeddings)
            spec(&v, &n, &cap, 2, V, C, "lm_head.weight", 0);
    }
    *out = v;
    return n;
}
