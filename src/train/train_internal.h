/* Private to the training loop's files: train.c (the step loop, evaluation), train_setup.c (set-up and
 * tear-down), train_state.c (metrics lines, the run's config record, checkpoints and resume). */
#ifndef PREFOPT_TRAIN_INTERNAL_H
#define PREFOPT_TRAIN_INTERNAL_H

#include "prefopt/train.h"

#include "prefopt/banner.h"
#include "prefopt/memcheck.h"
#include "prefopt/metrics.h"
#include "prefopt/regions.h"
#include "prefopt/runctl.h"
#include "prefopt/trace.h"

#include <cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <dirent.h>
#include <sys/resource.h>
#include <unistd.h>

/* ---- the trainer state --------------------------------------------------------------------------------- */

typedef struct {
    prefopt_train_params *p;
    prefopt_grid g;
    prefopt_model *policy, *ref;
    prefopt_objective obj;
    prefopt_adamw adam;
    prefopt_dp_sync dps; /* data-parallel gradient reduction and the (sharded) optimizer step */
    prefopt_schedule sched;
    prefopt_dataset *ds, *eval_ds;
    prefopt_ds_loader *loader;
    prefopt_ds_prefetch *pf; /* --data-prefetch: the next step read ahead; NULL when off or not started */
    prefopt_tokenizer_record tok;
    int micro, eval_micro;
    int live_ref;          /* the reference runs as a model (else: precomputed log-probs or none) */
    int lora_ref;          /* LoRA: that model is the policy with its adapters off (t->ref is NULL) */
    prefopt_lora_config lora; /* r == 0: full fine-tuning */
    long step, total_steps;
    double peak;           /* measured sgemm GFLOP/s per rank */
    char *config_text;     /* the options that apply (config.ini, checkpoints) */
    char *resumed_config;  /* the resumed checkpoint's, NULL when not resumed or saved without one */
    char resumed_from[4200];
    char ckpt_dir[4096], metrics_path[4096];
} trainer;

#define FAIL_IF(t, cond, err)                                                                                   \
    do {                                                                                                       \
        if (prefopt_agree((t)->g.world, (err)) || (cond)) {                                                    \
            prefopt_ds_prefetch_wait((t)->pf); /* out of HDF5 before MPI_Finalize and exit close files */     \
            prefopt_exit_error((err), PREFOPT_EXIT_ERROR);                                                     \
        }                                                                                                      \
    } while (0)

/* train_state.c */
void train_log_line(trainer *t, cJSON *o);
void train_save_checkpoint(trainer *t);
int train_try_resume(trainer *t);
void train_record_config(trainer *t);
void train_trim_metrics(trainer *t);
/* train_setup.c */
prefopt_ds_loader *train_make_loader(trainer *t, prefopt_dataset *ds, int global, int micro, int shuffle,
                                     int drop_last);
void train_setup(trainer *t, const prefopt_opt *opts, int nopts);
void train_report_startup(trainer *t);
void train_teardown(trainer *t);

#endif
