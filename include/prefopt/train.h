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
#include "prefopt/gradsync.h"
#include "prefopt/grid.h"
#include "prefopt/model.h"
#include "prefopt/objectives.h"
#include "prefopt/optim.h"

typedef struct {
    int overlap;              /* --overlap-grad-reduce: 1, 0, or -1 (default): on when dp > 1 */
    int zero_stage;           /* --zero-stage 0 | 1 */
    const char *reduce_dtype; /* --grad-reduce-dtype fp32 | bf16 */
    double bucket_mib;        /* --grad-bucket-mib: MiB of fp32 gradients per bucket (at layer boundaries) */
} prefopt_dp_params;

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
    prefopt_dp_params dpsync; /* data-parallel reduction and the distributed optimizer */
    int activation_checkpoint, use_precomputed_ref;
    double peak_gflops;       /* per rank for MFU; 0: measured at start-up */
    int logits_budget_mib;    /* LM-head logits per chunk; 0: the engine's default */
    int completion_logits;    /* LM head at completion positions only when the objective allows (default 1) */
    const char *memory_limit; /* per rank, "0": only what the system limits say (see memcheck.h) */
    /* run control */
    int log_interval, eval_interval, save_interval, keep_last, max_nonfinite;
    int eval_batch_size;
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

/* ---- the data-parallel step (src/train/dpsync.c over src/dist/gradsync.c) ---------------------------------- */


/* Option-table entries for p ("overlap-grad-reduce", "zero-stage", "grad-reduce-dtype", "grad-bucket-mib"). */
int prefopt_dp_options(prefopt_opt *out, int max, prefopt_dp_params *p);

/* The gradient reduction and optimizer of one policy on one grid. */
typedef struct {
    prefopt_gradsync *gs;
    prefopt_model *m;
    prefopt_adamw *adam;
    const prefopt_grid *g;
    int zero, overlap, bf16;
} prefopt_dp_sync;

/* Checks p (err names the option), creates the buckets from the model's boundaries, hooks them to backward and,
 * with --zero-stage 1 over dp > 1, shards adam (its moments become this replica's shard). Collective over g->dp;
 * the error is the same on every rank. */
int prefopt_dp_sync_init(prefopt_dp_sync *s, const prefopt_dp_params *p, prefopt_model *m, prefopt_adamw *adam,
                         const prefopt_grid *g, prefopt_err *err);
void prefopt_dp_sync_free(prefopt_dp_sync *s);
/* Before the step's last backward on this replica (overlap: buckets start as backward passes them). */
void prefopt_dp_sync_begin(prefopt_dp_sync *s);
/* After every backward of the step: the rest of the reduction; returns the global gradient norm (over the shards
 * with zero 1). Collective over the world. */
double prefopt_dp_sync_grads(prefopt_dp_sync *s, const prefopt_param_range *ranges, int nranges);
/* AdamW on this replica's part and (zero 1) the updated weights all-gathered; with overlap the gather runs
 * during the next forward (the policy's param-need hook), so call prefopt_dp_sync_weights_ready before reading
 * the policy's weights any other way (checkpoints, TR-DPO's mix, saving the model). */
void prefopt_dp_sync_step(prefopt_dp_sync *s, double lr, double grad_scale);
void prefopt_dp_sync_weights_ready(prefopt_dp_sync *s);
/* The AdamW moments as whole flat buffers for a checkpoint: with zero 1 gathered into m_full/v_full (n floats
 * each, collective over dp) and returned there; otherwise adam's own buffers. */
void prefopt_dp_sync_full_moments(prefopt_dp_sync *s, float *m_full, float *v_full, float **m, float **v);
/* After a checkpoint loaded whole moments into m_full/v_full: this replica's shard kept (zero 1; else nothing). */
void prefopt_dp_sync_load_moments(prefopt_dp_sync *s, const float *m_full, const float *v_full);

/* The optimizer's ranges (weight decay, norm counting) from the model's parameter registry. */
prefopt_param_range *prefopt_param_ranges(prefopt_model *m, int *n);

/* sgemm throughput (FLOP/s) of this rank with its BLIS threads, measured now while every rank of comm runs the
 * same: the fastest of 7 products of 1024^3 after a warm-up. Collective (a barrier first). */
double prefopt_sgemm_rate(MPI_Comm comm);
/* The mean over the ranks of comm of prefopt_sgemm_rate: the per-rank peak that MFU is reported against. */
double prefopt_measure_sgemm_peak(MPI_Comm comm);

#endif
