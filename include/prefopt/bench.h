/* prefopt: the benchmark driver behind `prefopt bench` (src/train/bench.c): timed DPO steps on random weights and
 * tokens, the way `prefopt train` runs them, with tokens/s, GFLOP/s, MFU against the sgemm rate measured in the
 * same run, per-phase times over ranks, memory and one JSON line (perf/README.md). */
#ifndef PREFOPT_BENCH_H
#define PREFOPT_BENCH_H

#include "prefopt/precision.h"
#include "prefopt/train.h"

typedef struct {
    const char *shape, *arch, *loss, *pcontrol, *folded, *json;
    int n_layer, n_embd, n_head, n_kv_head, n_inner, vocab, max_position;
    int pairs, prompt_len, chosen_len, rejected_len, steps, warmup;
    int grid_rows, grid_cols, dp, activation_checkpoint, folded_per_rank, table, logits_budget_mib, completion_logits;
    double beta, lr;
    long seed;
    prefopt_precision_params prec;
    prefopt_dp_params dpsync; /* --overlap-grad-reduce, --zero-stage, --grad-reduce-dtype, --grad-bucket-mib */
    int lora_r;               /* > 0: LoRA DPO (adapters on a frozen base, the reference = the base) */
    double lora_alpha;
    const char *lora_targets;
} prefopt_bench_params;

/* Runs on MPI_COMM_WORLD; returns the exit code. Errors exit through prefopt_exit_error on every rank. */
int prefopt_bench_run(const prefopt_bench_params *p);

#endif
