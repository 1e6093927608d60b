/* prefopt internal (io/hf): a LoRA checkpoint opened for export (lora_peft.c), used by export.c's merge. */
#ifndef PREFOPT_HF_LORA_H
#define PREFOPT_HF_LORA_H

#include "ckpt_io.h"

#define PF_LV_KIND 2 /* q, k, v are kinds 0..2 (model.h's PREFOPT_LORA_* bit order) */

typedef struct {
    hid_t f;
    char path[4096], base[4096];
    prefopt_model_config cfg;
    prefopt_lora_config lora;
    uint64_t base_sum;
} hf_lora;

/* 0: opened; 1: the file is no LoRA checkpoint (closed, not an error); -1: error */
int hf_lora_open(const char *ckpt, hf_lora *L, prefopt_err *err);
void hf_lora_close(hf_lora *L);
/* w ([out][in] row-major, the logical tensor weight_name) += (alpha / r) B A when an adapter targets it; returns
 * the number of adapters added (0: not targeted), -1 on error */
int hf_lora_merge(hf_lora *L, const char *weight_name, float *w, prefopt_err *err);
/* verifies the base file's weights against the checkpoint's base_checksum */
int hf_lora_check_base(hf_lora *L, hid_t base, prefopt_err *err);

#endif
