/* `prefopt train`'s LoRA options (lora.h). */
#include "prefopt/lora.h"

#include "prefopt/hf.h"

#include <string.h>

int prefopt_lora_options(prefopt_opt *o, int max, prefopt_lora_params *p)
{
    const prefopt_opt base[] = {
        {"lora-r", PREFOPT_OPT_INT, &p->r, "0",
         "LoRA rank: train low-rank adapters on a frozen base (0: full fine-tuning)"},
        {"lora-alpha", PREFOPT_OPT_DOUBLE, &p->alpha, "8", "LoRA alpha: the adapters' output is scaled by alpha / r"},
        {"lora-dropout", PREFOPT_OPT_DOUBLE, &p->dropout, "0", "dropout on the adapters' input while training"},
        {"lora-targets", PREFOPT_OPT_STRING, &p->targets, "",
         "modules with adapters, comma-separated PEFT names: q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,"
         "down_proj, all-linear; GPT-2 also c_attn, c_fc, c_proj (empty: PEFT's default, q_proj,v_proj / c_attn)"},
        {"lora-adapter", PREFOPT_OPT_STRING, &p->adapter, "",
         "PEFT adapter directory (adapter_config.json, adapter_model.safetensors) to start from, e.g. SFT -> DPO"},
    };
    int n = (int)(sizeof base / sizeof base[0]);
    if (n > max)
        return -1;
    memcpy(o, base, sizeof base);
    return n;
}

int prefopt_lora_resolve(const prefopt_lora_params *p, prefopt_arch arch, prefopt_lora_config *out, prefopt_err *err)
{
    memset(out, 0, sizeof *out);
    if (p->r < 0)
        return prefopt_err_set(err, "--lora-r %d: must be >= 0", p->r), -1;
    if (p->adapter && *p->adapter) { /* the adapter's own config; the options may only agree with it */
        if (prefopt_lora_peft_config(p->adapter, arch, out, err))
            return -1;
        unsigned t = 0;
        if (p->r > 0 && p->r != out->r)
            return prefopt_err_set(err, "--lora-r %d, but the adapter %s has r %d", p->r, p->adapter, out->r), -1;
        if (p->targets && *p->targets && (prefopt_lora_parse_targets(p->targets, arch, &t, err) || t != out->targets))
            return err->set ? -1
                            : (prefopt_err_set(err, "--lora-targets %s differ from the adapter %s's target_modules",
                                               p->targets, p->adapter),
                               -1);
        if (!(p->dropout >= 0 && p->dropout < 1))
            return prefopt_err_set(err, "--lora-dropout %g: must be in [0, 1)", p->dropout), -1;
        out->dropout = (float)p->dropout;
        return 0;
    }
    if (p->r == 0)
        return 0;
    if (!(p->alpha > 0))
        return prefopt_err_set(err, "--lora-alpha %g: must be > 0", p->alpha), -1;
    if (!(p->dropout >= 0 && p->dropout < 1))
        return prefopt_err_set(err, "--lora-dropout %g: must be in [0, 1)", p->dropout), -1;
    const char *t = p->targets && *p->targets ? p->targets : arch == PREFOPT_ARCH_GPT2 ? "c_attn" : "q_proj,v_proj";
    if (prefopt_lora_parse_targets(t, arch, &out->targets, err))
        return -1;
    out->r = p->r;
    out->alpha = (float)p->alpha;
    out->dropout = (float)p->dropout;
    return 0;
}
