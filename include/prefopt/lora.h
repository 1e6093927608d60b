/* prefopt: LoRA fine-tuning options of `prefopt train` (the adapters themselves are in model.h, their files in
 * checkpoint.h and hf.h). With --lora-r R > 0 the model's base weights are frozen and only the adapters of the
 * --lora-targets linears are trained: the optimizer state, gradients and the data-parallel all-reduce cover the
 * adapters alone, and the reference of the DPO family is the same model with its adapters off (TRL/PEFT's
 * disable_adapter()), so no second model is held. */
#ifndef PREFOPT_LORA_H
#define PREFOPT_LORA_H

#include "prefopt/model.h"
#include "prefopt/opts.h"

typedef struct {
    int r;               /* --lora-r: 0 = full fine-tuning */
    double alpha;        /* --lora-alpha (PEFT default 8) */
    double dropout;      /* --lora-dropout (PEFT default 0) */
    const char *targets; /* --lora-targets: "" = PEFT's default for the architecture (q_proj,v_proj; GPT-2 c_attn) */
    const char *adapter; /* --lora-adapter DIR: start from a PEFT adapter directory instead of PEFT's init */
} prefopt_lora_params;

/* Option-table entries pointing into p; returns the count or -1 when max is too small. */
int prefopt_lora_options(prefopt_opt *out, int max, prefopt_lora_params *p);

/* The model's LoRA config from the options and the architecture; r == 0 gives a zero config. With --lora-adapter
 * the adapter's adapter_config.json gives r, alpha and the targets (--lora-r and --lora-targets, when given, must
 * agree with it). Errors name the option or the file. */
int prefopt_lora_resolve(const prefopt_lora_params *p, prefopt_arch arch, prefopt_lora_config *out, prefopt_err *err);

#endif
