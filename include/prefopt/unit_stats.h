/* prefopt: per-unit log-prob sums, the one type the model (which computes them) and the objectives (which turn them
 * into losses) share. A unit is one sequence's completion: a DPO pair has two (chosen, rejected), an SFT or KTO
 * example one. Kept in the base layer so that the objectives need nothing of the model, the grid or MPI. */
#ifndef PREFOPT_UNIT_STATS_H
#define PREFOPT_UNIT_STATS_H

/* Per-unit sums, identical on every rank of the TP group after prefopt_model_forward (model.h). */
typedef struct {
    double *logp_completion;  /* [nunits] sum of log p over completion tokens */
    double *logp_all;         /* [nunits] sum over every predicted token of the unit (prompt included) */
    double *n_completion;     /* [nunits] counts */
    double *n_all;
    double *logits_sum;       /* [nunits] sum over completion tokens of mean_v(logit) (TRL's logits/ metrics) */
    double *argmax_hits;      /* [nunits] completion tokens whose argmax logit equals the target */
} prefopt_unit_stats;

#endif
