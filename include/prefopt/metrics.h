/* prefopt: per-step training metrics with the key names and aggregation of TRL (objectives.md, section B).
 *
 * One accumulator holds, for every metric, a sum and a count over one optimizer step. Micro-batches add into
 * it (the objectives do, see objectives.h), prefopt_metrics_reduce sums it over the data-parallel ranks,
 * and the value of a metric is then sum/count: a global mean over pairs, examples or tokens, the same on every
 * rank whatever the split into micro-batches and ranks. `loss` is the exception: every micro-batch loss is
 * already normalised by the global size of the step (objectives.h), so its value is the plain sum. */
#ifndef PREFOPT_METRICS_H
#define PREFOPT_METRICS_H

#include "prefopt/common.h"

typedef enum {
    PREFOPT_M_LOSS = 0,            /* "loss" */
    PREFOPT_M_REWARDS_CHOSEN,      /* "rewards/chosen": beta*(pi_c - ref_c), mean over pairs */
    PREFOPT_M_REWARDS_REJECTED,    /* "rewards/rejected" */
    PREFOPT_M_REWARDS_ACCURACIES,  /* "rewards/accuracies": [reward_c > reward_r], ties count as 0 */
    PREFOPT_M_REWARDS_MARGINS,     /* "rewards/margins"; for KTO derived as chosen - rejected when both exist */
    PREFOPT_M_LOGPS_CHOSEN,        /* "logps/chosen": summed completion log-probs (length-averaged for ORPO/SimPO) */
    PREFOPT_M_LOGPS_REJECTED,      /* "logps/rejected" */
    PREFOPT_M_LOGITS_CHOSEN,       /* "logits/chosen": token-weighted mean over vocab-mean logits */
    PREFOPT_M_LOGITS_REJECTED,     /* "logits/rejected" */
    PREFOPT_M_NLL_LOSS,            /* "nll_loss": the sft term's NLL in its reduction (or ORPO's prompt+chosen NLL) */
    PREFOPT_M_LOG_ODDS_RATIO,      /* "log_odds_ratio" (ORPO): mean of log sigma(log_odds) */
    PREFOPT_M_LOG_ODDS_CHOSEN,     /* "log_odds_chosen" (ORPO): mean of log_odds */
    PREFOPT_M_KL,                  /* "kl" (KTO): the clamped KL estimate used by the loss */
    PREFOPT_M_MEAN_TOKEN_ACCURACY, /* "mean_token_accuracy": argmax hits over chosen (SFT: all) completion tokens */
    PREFOPT_M_NUM_TOKENS,          /* "num_tokens": a sum the trainer adds itself (the objectives do not) */
    PREFOPT_M_COUNT
} prefopt_metric;

typedef struct {
    double sum[PREFOPT_M_COUNT];
    double count[PREFOPT_M_COUNT];
    int kto; /* rewards/margins is derived (chosen - rejected) and logged only when both classes occurred */
} prefopt_metrics;

/* The TRL key, e.g. "rewards/chosen". */
const char *prefopt_metric_name(prefopt_metric k);

void prefopt_metrics_reset(prefopt_metrics *m);
void prefopt_metrics_add(prefopt_metrics *m, prefopt_metric k, double sum, double count);

/* In-place sum of sums and counts through sum (common.h). Pass the reduction over the data-parallel
 * communicator (one rank per tensor-parallel group): the ranks of one TP group hold identical unit statistics
 * and must not be counted twice. */
void prefopt_metrics_reduce(prefopt_metrics *m, const prefopt_reduction *sum);

/* Adds every sum and count of src into dst (for averaging over a logging interval of steps, do it yourself on
 * finalised values: TRL averages per-step values, not pooled sums). */
void prefopt_metrics_merge(prefopt_metrics *dst, const prefopt_metrics *src);

/* 1 if the metric has a value this step (count > 0; for loss and num_tokens: added at least once). */
int prefopt_metrics_has(const prefopt_metrics *m, prefopt_metric k);
/* The finalised value (see the top of this file); NAN when absent. */
double prefopt_metrics_value(const prefopt_metrics *m, prefopt_metric k);

/* Writes every present metric into the cJSON object `obj` (a cJSON *, typed void * so this header does not
 * pull in cJSON) as prefix + key: prefix "" for training, "eval_" for evaluation (the HF Trainer's prefix,
 * e.g. "eval_rewards/chosen"). Returns 0, or -1 when cJSON runs out of memory. */
int prefopt_metrics_to_json(void *obj, const prefopt_metrics *m, const char *prefix);

/* The present metrics as one compact JSON object string (malloc'ed; free() it), with `step` added as "step"
 * when step >= 0. NULL on allocation failure. */
char *prefopt_metrics_json_string(const prefopt_metrics *m, const char *prefix, long step);

#endif
