/* prefopt: the evaluation driver behind `prefopt eval` (src/train/eval.c): summed completion log-probs of every
 * example under a model (and a reference), the objective's preference metrics over the set, and --store-ref, which
 * writes the model's log-probs into the dataset as precomputed reference log-probs. */
#ifndef PREFOPT_EVAL_H
#define PREFOPT_EVAL_H

#include "prefopt/objectives.h"
#include "prefopt/precision.h"

typedef struct {
    const char *model_path, *ref_path, *data_path, *out_path;
    int store_ref, batch_size;
    int grid_rows, grid_cols, dp; /* dp 0: ranks / (rows * cols) */
    prefopt_objective_params obj; /* for the summary metrics */
    prefopt_precision_params prec;
    const char *run_config;       /* the run directory's config.ini the objective came from, or NULL */
    const char *run_config_taken; /* the options taken from it ("loss ipo, beta 0.2") */
    const char *run_ref;          /* the run's reference (its --ref-model or --init), used when there is no other */
} prefopt_eval_params;

/* Runs on MPI_COMM_WORLD; returns the exit code. Errors exit through prefopt_exit_error on every rank. */
int prefopt_eval_run(const prefopt_eval_params *p);

#endif
