/* prefopt: the training driver's library part, shared by `prefopt train`, `prefopt eval` and `prefopt bench`:
 * building the policy and reference on a grid, one micro-batch's log-probs, and the optimizer step loop.
 *
 * A run directory holds: config.ini (the effective options), metrics.jsonl (one JSON object per step, eval rows
 * with the "eval/" prefix, skipped steps), checkpoints/ (step-*.h5 and latest) and model.h5 (the final policy,
 * weights only). */
#ifndef PREFOPT_TRAIN_H
#define PREFOPT_TRAIN_H

#include "prefopt/checkpoint.h"
#include "prefopt/dataset.h"
#include "prefopt/grid.h"
#include "prefopt/lora.h"
#include "prefopt/model.h"
#include "prefopt/objectives.h"
#include "prefopt/optim.h"

/* Model architecture options for a model trained from scratch (ignored with --init). */
typedef struct {
    const char *arch;   /* "gpt2" | "llama" */
    int n_layer, n_embd, n_head, n_kv_head, n_inner, max_position;
    double norm_eps, rope_theta;
} prefopt_arch_params;

typedef struct {
    /* data and model */
    const char *data, *eval_data, *init, *ref_model, *run_dir, *resume;
    prefopt_arch_params arch;
    /* layout */
    int grid_rows, grid_cols, dp;
    /* batches */
    int batch_size, micro_batch_size, pad_multiple, bucket_window;
    long max_steps;
    double epochs;
    long seed;
    /* objective and optimizer */
    prefopt_objective_params obj;
    prefopt_optim_params optim;
    int activation_checkpoint, use_precomputed_ref;
    double peak_gflops;       /* per rank for MFU; 0: measured at start-up */
    int logits_budget_mib;    /* LM-head logits per chunk; 0: the engine's default */
    int completion_logits;    /* LM head at completion positions only when the objective allows (default 1) */
    const char *memory_limit; /* per rank, "0": only what the system limits say (see memcheck.h) */
    /* run control */
    int log_interval, eval_interval, save_interval, keep_last, max_nonfinite;
    int eval_batch_size;
    prefopt_lora_params lora; /* --lora-*: adapters on a frozen base (lora.h) */
} prefopt_train_params;

/* The options of `prefopt train` pointing into p (defaults included); returns the count or -1. */
int prefopt_train_options(prefopt_opt *out, int max, prefopt_train_params *p);

/* Runs `prefopt train` with parsed parameters on MPI_COMM_WORLD; returns the process exit code
 * (PREFOPT_EXIT_OK, PREFOPT_EXIT_REQUEUE after a stop signal and a checkpoint). Errors exit through
 * prefopt_exit_error on every rank. opts/nopts: the option table, written to RUN_DIR/config.ini. */
int prefopt_train_run(prefopt_train_params *p, const prefopt_opt *opts, int nopts);

/* ---- pieces shared with eval and bench ------------------------------------------------------------------- */

/* Per-unit statistics arrays for n units (one allocation; free with prefopt_unit_stats_free). */
void prefopt_unit_stats_alloc(prefopt_unit_stats *s, int n);
void prefopt_unit_stats_free(prefopt_unit_stats *s);
/* n_completion and n_all per unit from the batch layout alone (no forward needed). */
void prefopt_unit_counts(prefopt_unit_stats *s, const prefopt_batch *b);

/* The model config of a from-scratch model from the arch options and the dataset's vocabulary. */
int prefopt_arch_config(prefopt_model_config *cfg, const prefopt_arch_params *a, const prefopt_ds_info *ds,
                        prefopt_err *err);

/* The optimizer's ranges (weight decay, norm counting) from the model's parameter registry: the trained
 * parameters, with offsets into prefopt_model_train_data. */
prefopt_param_range *prefopt_param_ranges(prefopt_model *m, int *n);

/* sgemm throughput (FLOP/s) of this rank with its BLIS threads, measured now while every rank of comm runs the
 * same: the fastest of 7 products of 1024^3 after a warm-up. Collective (a barrier first). */
double prefopt_sgemm_rate(MPI_Comm comm);
/* The mean over the ranks of comm of prefopt_sgemm_rate: the per-rank peak that MFU is reported against. */
double prefopt_measure_sgemm_peak(MPI_Comm comm);

#endif
