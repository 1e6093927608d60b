/* Checks of `prefopt train`'s options before anything runs (issue 22): every number in its range (an interval of
 * 0 divided by zero), paths that config.ini can carry, outputs that do not overwrite inputs. */
#include "prefopt/files.h"
#include "prefopt/train.h"

#include <math.h>
#include <stdio.h>

#define NEED(cond, ...)                                                                                        \
    do {                                                                                                       \
        if (!(cond)) {                                                                                         \
            prefopt_err_set(err, __VA_ARGS__);                                                                 \
            return 1;                                                                                          \
        }                                                                                                      \
    } while (0)

int prefopt_train_check_params(const prefopt_train_params *p, prefopt_err *err)
{
    NEED(p->batch_size >= 1, "--batch-size %d: must be >= 1 (examples per optimizer step, all replicas)",
         p->batch_size);
    NEED(p->micro_batch_size >= 0, "--micro-batch-size %d: must be >= 0 (0: batch-size/dp)", p->micro_batch_size);
    NEED(p->eval_batch_size >= 0, "--eval-batch-size %d: must be >= 0 (0: the micro-batch)", p->eval_batch_size);
    NEED(p->pad_multiple >= 1, "--pad-multiple %d: must be >= 1", p->pad_multiple);
    NEED(p->bucket_window >= 0, "--bucket-window %d: must be >= 0 (0: off)", p->bucket_window);
    NEED(p->max_steps >= 0, "--max-steps %ld: must be >= 0 (0: from --epochs)", p->max_steps);
    /* --epochs 0 is a run of no step that saves the initial weights (an SFT reference) */
    NEED(p->max_steps > 0 || (isfinite(p->epochs) && p->epochs >= 0 && p->epochs <= 1e6),
         "--epochs %g: must be between 0 and 1e6 when --max-steps is 0", p->epochs);
    NEED(p->log_interval >= 1, "--log-interval %d: must be >= 1 (a progress line every N steps)", p->log_interval);
    NEED(p->eval_interval >= 0, "--eval-interval %d: must be >= 0 (0: evaluate at the end)", p->eval_interval);
    NEED(p->save_interval >= 0, "--save-interval %d: must be >= 0 (0: checkpoint at the end only)",
         p->save_interval);
    NEED(p->keep_last >= 1, "--keep-last %d: must be >= 1", p->keep_last);
    NEED(p->max_nonfinite >= 1, "--max-nonfinite %d: must be >= 1", p->max_nonfinite);
    NEED(p->logits_budget_mib >= 0, "--logits-budget-mib %d: must be >= 0 (0: the default)", p->logits_budget_mib);
    NEED(p->completion_logits == 0 || p->completion_logits == 1, "--completion-logits %d: must be 0 or 1",
         p->completion_logits);
    NEED(p->peak_gflops >= 0, "--peak-gflops %g: must be >= 0 (0: measured)", p->peak_gflops);
    NEED(p->arch.max_position >= 1, "--max-position %d: must be >= 1", p->arch.max_position);
    NEED(p->arch.norm_eps >= 0 && p->arch.rope_theta > 0, "--norm-eps %g --rope-theta %g: need norm-eps >= 0 and "
         "rope-theta > 0", p->arch.norm_eps, p->arch.rope_theta);

    /* paths written into config.ini and read back by a later run: one line each */
    const char *names[] = {"--run-dir", "--data", "--eval-data", "--init", "--ref-model", "--resume"};
    const char *paths[] = {p->run_dir, p->data, p->eval_data, p->init, p->ref_model, p->resume};
    for (int i = 0; i < 6; i++)
        if (prefopt_check_path_chars(names[i], paths[i], err))
            return 1;
    NEED(*p->run_dir, "--run-dir must not be empty");

    /* the run directory's files must not be an input: RUN_DIR/model.h5 is replaced at the end, metrics.jsonl and
     * config.ini at the start */
    static const char *const outs[] = {"model.h5", "metrics.jsonl", "config.ini"};
    for (int o = 0; o < 3; o++) {
        char op[4200], on[64];
        snprintf(op, sizeof op, "%s/%s", p->run_dir, outs[o]);
        snprintf(on, sizeof on, "RUN_DIR/%s", outs[o]);
        for (int i = 1; i < 5; i++)
            if (*paths[i] && prefopt_same_file(paths[i], op) && !(o == 0 && (i == 3 || i == 4))) {
                /* (continuing from RUN_DIR/model.h5 with --init is fine: it is read before it is replaced) */
                prefopt_err_set(err, "%s '%s' is the same file as %s '%s' (an output must not overwrite an input)", on,
                                op, names[i], paths[i]);
                return 1;
            }
    }
    return 0;
}
