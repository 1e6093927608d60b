/* prefopt: AdamW over flat parameter buffers, learning-rate schedules and global-norm gradient clipping.
 *
 * The buffers are the model's flat local buffers (prefopt_model_param_data / prefopt_model_grad_data); the
 * optimizer only needs to know which ranges of them get weight decay and which count in the gradient norm,
 * given as a list of ranges (the trainer builds it from the parameter registry). Everything is elementwise or
 * reduced in a fixed order, so a step is bit-for-bit reproducible whatever the number of OpenMP threads. */
#ifndef PREFOPT_OPTIM_H
#define PREFOPT_OPTIM_H

#include <mpi.h>
#include <stddef.h>

#include "prefopt/common.h"
#include "prefopt/opts.h"

/* A contiguous piece of the flat buffer. */
typedef struct {
    size_t offset, count;
    int weight_decay; /* 1: AdamW's decoupled decay applies (matrices, embeddings); 0: biases and norm weights */
    int in_norm;      /* 1: this rank counts it in the global gradient norm. 0 for this rank's copy of a vector
                       * replicated over the tensor-parallel group when another rank already counts it */
} prefopt_param_range;

/* Hyper-parameters (PyTorch AdamW names and defaults; lr is set per step by the schedule). */
typedef struct {
    double beta1;        /* 0.9 */
    double beta2;        /* 0.999 */
    double eps;          /* 1e-8 */
    double weight_decay; /* 0.0 (HF TrainingArguments default) */
} prefopt_adamw_config;

/* The state. m and v have the layout of the flat parameter buffer: hand them to the checkpoint code
 * (prefopt_ckpt_save/load) as they are, and restore `step` (optimizer steps taken) with them. */
typedef struct {
    prefopt_adamw_config cfg;
    size_t n;
    float *m, *v;  /* first and second moments [nmom], zero at start */
    size_t nmom;   /* n, or the shard's element count after prefopt_adamw_set_shard */
    long step;     /* steps taken; the bias correction of the next step uses step + 1 */
    int nranges;
    prefopt_param_range *ranges; /* sorted, covering [0, n) (gaps filled with weight_decay 0) */
    int npieces;   /* what a step updates: ranges, or their intersections with the shard's segments */
    prefopt_param_range *pieces;
    size_t *piece_mom; /* [npieces] each piece's offset in m and v */
} prefopt_adamw;

/* Validates cfg and the ranges (inside [0, n), not overlapping; order free) and allocates zero moments.
 * Elements outside every range get no weight decay. */
int prefopt_adamw_init(prefopt_adamw *opt, const prefopt_adamw_config *cfg, size_t n,
                       const prefopt_param_range *ranges, int nranges, prefopt_err *err);
void prefopt_adamw_free(prefopt_adamw *opt);
/* The distributed optimizer (ZeRO stage 1): this rank updates only the nseg segments [off, off + cnt) of the
 * flat buffers (increasing, not overlapping) and keeps moments for them alone, laid out segment after segment
 * (m and v are reallocated, zero, with nmom = the segments' total). Steps then read and write params and grads
 * only inside the segments. */
void prefopt_adamw_set_shard(prefopt_adamw *opt, const size_t *off, const size_t *cnt, int nseg);
/* Sum of squares, as prefopt_sumsq, over the in_norm ranges' intersection with the shard's segments. */
double prefopt_adamw_shard_sumsq(const prefopt_adamw *opt, const float *x);

/* One step, as torch.optim.AdamW (decoupled decay, bias correction):
 *   g = grad_scale * grad                           (grad_scale: the clipping coefficient, 1 for none)
 *   p = p * (1 - lr * wd)                           (only where weight_decay is set)
 *   m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;  t = step + 1
 *   p = p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
 * then step = t. */
void prefopt_adamw_step(prefopt_adamw *opt, float *params, const float *grads, double lr, double grad_scale);

/* ---- schedules ----------------------------------------------------------------------------------------------- */

typedef enum { PREFOPT_SCHED_CONSTANT = 0, PREFOPT_SCHED_LINEAR, PREFOPT_SCHED_COSINE } prefopt_sched_kind;

typedef struct {
    prefopt_sched_kind kind;
    double lr;           /* peak learning rate */
    long warmup_steps;   /* linear warmup from 0 */
    long total_steps;    /* optimizer steps of the run (linear and cosine decay over total - warmup) */
    double min_lr_ratio; /* cosine only: floor as a fraction of lr (HF cosine_with_min_lr; 0 = plain cosine) */
} prefopt_schedule;

/* "constant", "linear", "cosine" (HF lr_scheduler_type names; "constant_with_warmup" and
 * "cosine_with_min_lr" are accepted as aliases). Then checks lr >= 0, 0 <= warmup, total >= 0,
 * min_lr_ratio in [0, 1]. */
int prefopt_schedule_init(prefopt_schedule *s, const char *kind, double lr, long warmup_steps, long total_steps,
                          double min_lr_ratio, prefopt_err *err);

/* The learning rate of the optimizer step that follows `step` completed steps (step = 0 for the first one), as
 * HF's get_{constant,linear,cosine,cosine_with_min_lr}_schedule_with_warmup give it: with warmup W and total T,
 *   step < W:  lr * step / max(1, W)
 *   constant:  lr
 *   linear:    lr * max(0, (T - step) / max(1, T - W))
 *   cosine:    lr * max(0, r + (1 - r) * 0.5 * (1 + cos(pi * (step - W) / max(1, T - W))))   (r = min_lr_ratio)
 * (so with warmup the very first step has lr 0, exactly as in HF). */
double prefopt_schedule_lr(const prefopt_schedule *s, long step);

/* HF TrainingArguments.get_warmup_steps: ceil(total * ratio). */
long prefopt_warmup_steps(long total_steps, double warmup_ratio);

/* ---- gradient norm and clipping -------------------------------------------------------------------------------- */

/* Sum of squares, in double, over the ranges with in_norm set (fixed-order blocked reduction: deterministic). */
double prefopt_sumsq(const float *x, const prefopt_param_range *ranges, int nranges);

/* sqrt of the sum of local_sumsq over comm. After the data-parallel all-reduce every replica holds the same
 * gradient, so pass the tensor-parallel group's communicator (the grid's). Collective. */
double prefopt_global_norm(double local_sumsq, MPI_Comm comm);

/* torch.nn.utils.clip_grad_norm_'s factor: min(1, max_norm / (norm + 1e-6)); 1 when max_norm <= 0 (no
 * clipping). Pass it as grad_scale to prefopt_adamw_step. */
double prefopt_clip_coef(double norm, double max_norm);

/* ---- options --------------------------------------------------------------------------------------------------- */

typedef struct {
    double lr;              /* 1e-6 (TRL DPOConfig) */
    const char *lr_scheduler; /* "linear" (HF) */
    long warmup_steps;      /* 0 */
    double warmup_ratio;    /* 0: used when warmup_steps is 0 */
    double min_lr_ratio;    /* 0 */
    double adam_beta1, adam_beta2, adam_eps, weight_decay; /* 0.9, 0.999, 1e-8, 0 */
    double max_grad_norm;   /* 1.0; 0 disables clipping */
} prefopt_optim_params;

/* Option-table entries ("lr", "lr-scheduler", "warmup-steps", "warmup-ratio", "min-lr-ratio", "adam-beta1",
 * "adam-beta2", "adam-eps", "weight-decay", "max-grad-norm") pointing into p. Returns the count, -1 if max is
 * too small. */
int prefopt_optim_options(prefopt_opt *out, int max, prefopt_optim_params *p);
void prefopt_optim_params_default(prefopt_optim_params *p);

#endif
