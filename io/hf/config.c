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
    if (!strcmp(type, "gpt2")) {
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
    } else if (!strcmp(type, "llama") || !strcmp(type, "mistral") || !strcmp(type, "qwen2")) {
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
        if (!rc && get_bool(root, "attention_bias", 0)) { /* HF then also gives o_proj a bias, which prefopt lacks */
            prefopt_err_set(err, "%s: key 'attention_bias' = true is not supported (it adds an o_proj bias)", file);
            rc = 1;
        }
        cfg->tie_word_embeddings = get_bool(root, "tie_word_embeddings", 0);
        const cJSON *act = cJSON_GetObjectItemCaseSensitive(root, "hidden_act");
        if (!rc && cJSON_IsString(act) && strcmp(act->valuestring, "silu")) {
            prefopt_err_set(err, "%s: key 'hidden_act' is '%s'; only silu is supported", file, act->valuestring);
            rc = 1;
        }
        const cJSON *rs = cJSON_GetObjectItemCaseSensitive(root, "rope_scaling");
        if (!rc && rs && !cJSON_IsNull(rs)) {
            prefopt_err_set(err, "%s: key 'rope_scaling' is set; RoPE scaling is not supported (only null)", file);
            rc = 1;
        }
        if (!rc && get_bool(root, "mlp_bias", 0)) {
            prefopt_err_set(err, "%s: key 'mlp_bias' = true is not supported", file);
            rc = 1;
        }
        /* a sliding window narrower than the context would change attention; accept it only when unused */
        int window = 0, use_sw = !strcmp(type, "mistral");
        if (!strcmp(type, "qwen2"))
            use_sw = get_bool(root, "use_sliding_window", 0);
        if (!rc && use_sw && !get_int(root, file, "sliding_window", &window, 0, err) && window > 0 &&
            window < cfg->max_position) {
            prefopt_err_set(err, "%s: key 'sliding_window' = %d is below max_position_embeddings %d; sliding-window "
                            "attention is not supported", file, window, cfg->max_position);
            rc = 1;
        }
    } else {
        prefopt_err_set(err, "%s: model_type '%s' is not supported (gpt2, llama, mistral, qwen2 are)", file, type);
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
                cfg->intermediate_size <= 0 || cfg->max_position <= 0)) {
        prefopt_err_set(err, "%s: inconsistent sizes (vocab %d, hidden %d, layers %d, heads %d/%d kv, head_dim %d, "
                        "intermediate %d, positions %d)", file, cfg->vocab_size, cfg->hidden_size, cfg->num_layers,
                        cfg->num_heads, cfg->num_kv_heads, cfg->head_dim, cfg->intermediate_size, cfg->max_position);
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
        const char *archname = !strcmp(type, "mistral") ? "MistralForCausalLM"
                               : !strcmp(type, "qwen2") ? "Qwen2ForCausalLM"
                                                        : "LlamaForCausalLM";
        cJSON *a = cJSON_AddArrayToObject(root, "architectures");
        cJSON_AddItemToArray(a, cJSON_CreateString(archname));
        cJSON_AddStringToObject(root, "model_type", type);
        cJSON_AddStringToObject(root, "hidden_act", "silu");
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
        cJSON_AddNullToObject(root, "rope_scaling");
        cJSON_AddBoolToObject(root, "tie_word_embeddings", cfg->tie_word_embeddings);
        cJSON_AddNumberToObject(root, "attention_dropout", 0.0);
        cJSON_AddNumberToObject(root, "initializer_range", 0.02);
        if (!strcmp(type, "llama")) {
            cJSON_AddFalseToObject(root, "attention_bias");
            cJSON_AddFalseToObject(root, "mlp_bias");
        }
        if (!strcmp(type, "mistral"))
            cJSON_AddNullToObject(root, "sliding_window");
        if (!strcmp(type, "qwen2"))
            cJSON_AddFalseToObject(root, "use_sliding_window");
    }
    add_id(root, "bos_token_id", cfg->bos_id);
    add_id(root, "eos_token_id", cfg->eos_id);
    if (cfg->pad_id >= 0)
        cJSON_AddNumberToObject(root, "pad_token_id", cfg->pad_id);
    cJSON_AddStringToObject(root, "torch_dtype", cfg->torch_dtype[0] ? cfg->torch_dtype : "float32");
    cJSON_AddStringToObject(root, "transformers_version", "4.40.0");
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
        for (int l = 0; l < c->num_layers; l++) {
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
            spec(&v, &n, &cap, 1, C, 0, "layers.%d.post_attention_layernorm.weight", l);
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
