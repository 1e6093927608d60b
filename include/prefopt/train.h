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
#include "prefopt/precision.h"
#include "prefopt/lora.h"
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
    int data_prefetch;        /* --data-prefetch: read the next step's batch in a thread while this step runs */
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
    prefopt_precision_params prec;
    int gradient_accumulation_steps; /* 0: batch-size and micro-batch-size decide; > 0: TRL's rule (see below) */
    int allow_config_change;  /* resume even when options that change the math differ from the checkpoint's */
    const char *tokenizer;    /* from scratch: tokenizer.json (or its directory) giving the vocabulary */
    prefopt_lora_params lora; /* --lora-*: adapters on a frozen base (lora.h) */
} prefopt_train_params;

/* The options of `prefopt train` pointing into p (defaults included); returns the count or -1. */
int prefopt_train_options(prefopt_opt *out, int max, prefopt_train_params *p);

/* Checks every option's range (intervals, sizes, epochs), that the paths config.ini records hold no control
 * character, and that no input is a file of the run directory that training replaces. No MPI; fills err. */
int prefopt_train_check_params(const prefopt_train_params *p, prefopt_err *err);

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

/* The global batch and one replica's micro-batch. With --gradient-accumulation-steps G > 0 the batch is TRL's,
 * micro x G x dp (micro = --micro-batch-size, TRL's per_device_train_batch_size; when it is not given it is
 * batch-size / (G dp)), and a --batch-size given as well must agree; p->batch_size and p->micro_batch_size then
 * hold the values used (config.ini records them). Without G: batch-size over dp replicas, micro-batch-size or
 * batch-size / dp per forward. Returns -1 with a one-line error naming the options. */
int prefopt_train_batch_layout(prefopt_train_params *p, int dp, int *micro, prefopt_err *err);

/* A from-scratch model's tokenizer (--tokenizer: tokenizer.json or its directory): the record the model file keeps
 * (tokenizer.json, the side files beside it, the identity) and the vocabulary size (added tokens included). */
int prefopt_train_tokenizer(const char *path, prefopt_tokenizer_record *rec, int *vocab, prefopt_err *err);

/* The INI text of the options that apply to this run (config.ini and every checkpoint): objective options the
 * objective reads, the architecture only from scratch, held-out options only with --eval-data, ... (malloc'd). */
char *prefopt_train_config_text(const prefopt_train_params *p, const prefopt_objective *obj, const prefopt_opt *opts,
                                int nopts);
/* The options that change the math (all but layout, memory, logging, checkpoint cadence and held-out data) whose
 * values differ between two such texts: returns their count, lists them in out as "key OLD -> NEW, ..." and, when
 * json (a cJSON object) is given, adds {"key": {"from": OLD, "to": NEW}} to it ((unset) / null: absent). */
struct cJSON;
int prefopt_train_config_diff(const char *old_text, const char *new_text, char *out, size_t outlen,
                              struct cJSON *json);

/* A model given by run directory: path may be RUN (its model.h5, else its latest checkpoint), RUN/model.h5 or
 * RUN/checkpoints/step-N.h5; model receives the file to read, ini RUN/config.ini when that exists ("" otherwise:
 * a model file outside a run directory). Returns -1 with err for a directory that is no run directory. */
int prefopt_run_dir_model(const char *path, char *model, size_t mlen, char *ini, size_t ilen, prefopt_err *err);
/* Sets each option of opts that the INI file names, take(name) accepts and the user did not give
 * (prefopt_opts_given); lists them in taken as "name value, ...". Returns the count, or -1 with err. */
int prefopt_run_config_adopt(const char *ini_path, const prefopt_opt *opts, int nopts, int (*take)(const char *name),
                             char *taken, size_t takenlen, prefopt_err *err);
/* One value of an INI file (such as config.ini) into out; 0, or -1 when the key is absent or the file unreadable. */
int prefopt_run_config_value(const char *ini_path, const char *key, char *out, size_t len);
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

/* The optimizer's ranges (weight decay, norm counting) from the model's parameter registry: the trained
 * parameters, with offsets into prefopt_model_train_data. */
prefopt_param_range *prefopt_param_ranges(prefopt_model *m, int *n);

/* The peak GEMM throughput (FLOP/s) MFU counts against, of this rank with its threads, measured now while every
 * rank of comm runs the same: the fastest of 7 products of 1024^3 after a warm-up; in an fp32 run the faster of
 * BLIS and oneDNN sgemm (whichever the engine uses), in a bf16 run oneDNN's bf16 matmul. Collective (a barrier
 * first). */
double prefopt_sgemm_rate(MPI_Comm comm);
/* The mean over the ranks of comm of prefopt_sgemm_rate: the per-rank peak that MFU is reported against. */
double prefopt_measure_sgemm_peak(MPI_Comm comm);

#endif
