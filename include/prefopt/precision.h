/* prefopt: the arithmetic of a run (src/train/precision.c): fp32, or bf16 mixed precision (fp32 master weights,
 * gradients and AdamW; bf16 weight copies and GEMM inputs with fp32 accumulation), and the local fp32 GEMM
 * backend. Shared by train, eval, generate and bench, which append the two options to their tables. */
#ifndef PREFOPT_PRECISION_H
#define PREFOPT_PRECISION_H

#include "prefopt/grid.h"
#include "prefopt/opts.h"

typedef struct {
    const char *precision;    /* "fp32", "bf16" or "auto" */
    const char *gemm_backend; /* "blis", "onednn" or "auto" */
} prefopt_precision_params;

#define PREFOPT_PRECISION_OPTIONS(pp)                                                                              \
    {"precision", PREFOPT_OPT_STRING, &(pp)->precision, "auto",                                                    \
     "fp32, bf16 (mixed: fp32 masters, bf16 GEMM inputs, fp32 accumulation) or auto (bf16 when the CPU has "       \
     "AMX-BF16 or AVX512-BF16)"},                                                                                  \
    {"gemm-backend", PREFOPT_OPT_STRING, &(pp)->gemm_backend, "blis",                                              \
     "local fp32 GEMM of the engine: blis, onednn, or auto (the faster on the engine's shapes, timed at start-up; " \
     "bit-identical reruns need a fixed choice)"}

/* Collective over g->world. Resolves auto (cpuid; the GEMM rates averaged over the ranks so every rank chooses
 * alike), sets the local GEMM backend. Returns 1 for bf16, 0 for fp32, -1 with err set (on every rank: bf16 asked
 * for on a CPU without bf16 instructions, naming the missing feature; an unknown value). */
int prefopt_precision_setup(const prefopt_precision_params *p, const prefopt_grid *g, prefopt_err *err);
/* After setup: the chosen precision and a description for the banner ("precision bf16 (avx512_bf16) | local GEMM
 * fp32 blis, bf16 oneDNN matmul"). */
int prefopt_precision_is_bf16(void);
const char *prefopt_precision_describe(void);

#endif
