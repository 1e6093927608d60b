/* libFuzzer harness: Hugging Face config.json reading (io/hf/config.c, hf.h).
 * Input: the bytes of a config.json -> prefopt_hf_config_read.
 * Checked: no crash or sanitizer report (UBSan catches integer overflow in derived sizes); failures fill a
 * one-line message naming config.json; an accepted config has positive, consistent sizes, its parameter table
 * builds with non-negative shapes, and writing it back (prefopt_hf_config_write) and reading that gives the same
 * config. */
#include "fuzz_common.h"
#include "prefopt/hf.h"

static int same(const prefopt_model_config *a, const prefopt_model_config *b)
{
    int ids = (a->bos_id < 0 ? -1 : a->bos_id) == (b->bos_id < 0 ? -1 : b->bos_id) &&
              (a->eos_id < 0 ? -1 : a->eos_id) == (b->eos_id < 0 ? -1 : b->eos_id) &&
              (a->pad_id < 0 ? -1 : a->pad_id) == (b->pad_id < 0 ? -1 : b->pad_id);
    return ids && a->arch == b->arch && a->vocab_size == b->vocab_size && a->hidden_size == b->hidden_size &&
           a->num_layers == b->num_layers && a->num_heads == b->num_heads && a->num_kv_heads == b->num_kv_heads &&
           a->head_dim == b->head_dim && a->intermediate_size == b->intermediate_size &&
           a->max_position == b->max_position && a->norm_eps == b->norm_eps &&
           (a->arch == PREFOPT_ARCH_GPT2 || a->rope_theta == b->rope_theta) && a->qkv_bias == b->qkv_bias &&
           a->tie_word_embeddings == b->tie_word_embeddings && !strcmp(a->hf_model_type, b->hf_model_type) &&
           /* issue 20's variants */
           a->qk_norm == b->qk_norm && a->norm_style == b->norm_style && a->norm_unit_offset == b->norm_unit_offset &&
           a->mlp_act == b->mlp_act && a->rope_dim == b->rope_dim && a->sliding_window == b->sliding_window &&
           a->fused_qkv == b->fused_qkv && a->embed_scale == b->embed_scale && a->attn_scale == b->attn_scale &&
           a->attn_softcap == b->attn_softcap && a->final_softcap == b->final_softcap &&
           a->rope_local_theta == b->rope_local_theta && a->rope_linear_factor == b->rope_linear_factor &&
           a->rope_llama3 == b->rope_llama3 && !memcmp(a->layer_flags, b->layer_flags, sizeof a->layer_flags);
}

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
    const char *path = fuzz_tmp_path("config.json"), *back = fuzz_tmp_path("back/config.json");
    fuzz_write_file(path, data, size);
    prefopt_model_config cfg;
    prefopt_err err = {0};
    int rc = prefopt_hf_config_read(path, &cfg, &err);
    fuzz_check_err(rc, &err);
    if (rc) {
        if (!strstr(err.msg, "config.json")) {
            fprintf(stderr, "fuzz_hf_config: the message does not name the file: %s\n", err.msg);
            abort();
        }
        return 0;
    }
    if (cfg.vocab_size <= 0 || cfg.hidden_size <= 0 || cfg.num_layers <= 0 || cfg.num_heads <= 0 ||
        cfg.num_kv_heads <= 0 || cfg.num_heads % cfg.num_kv_heads || cfg.head_dim <= 0 ||
        cfg.intermediate_size <= 0 || cfg.max_position <= 0) {
        fprintf(stderr, "fuzz_hf_config: accepted inconsistent sizes\n");
        abort();
    }
    if (cfg.num_layers <= 64) { /* the table grows with the layers: bounded to keep executions fast */
        prefopt_tensor_spec *specs = NULL;
        int n = prefopt_model_tensor_specs(&cfg, &specs);
        for (int i = 0; i < n; i++)
            if (specs[i].shape[0] <= 0 || (specs[i].ndim == 2 && specs[i].shape[1] <= 0)) {
                fprintf(stderr, "fuzz_hf_config: tensor %s has shape [%lld, %lld]\n", specs[i].name,
                        (long long)specs[i].shape[0], (long long)specs[i].shape[1]);
                abort();
            }
        free(specs);
    }
    char dir[600];
    snprintf(dir, sizeof dir, "%s", back);
    *strrchr(dir, '/') = '\0';
    mkdir(dir, 0700);
    if (prefopt_hf_config_write(back, &cfg, &err)) {
        fprintf(stderr, "fuzz_hf_config: cannot write back: %s\n", err.msg);
        abort();
    }
    prefopt_model_config again;
    if (prefopt_hf_config_read(back, &again, &err) || !same(&cfg, &again)) {
        fprintf(stderr, "fuzz_hf_config: the written config.json does not read back the same (%s)\n",
                err.set ? err.msg : "values differ");
        abort();
    }
    return 0;
}
