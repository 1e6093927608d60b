/* prefopt train: options (command line and INI job file) to the training loop in src/train/train.c. */
#include "prefopt/trace_export.h"
#include "prefopt/train.h"

#include <stdio.h>

int prefopt_cmd_train(int argc, char **argv)
{
    static prefopt_train_params p;
    static prefopt_opt opts[128];
    static prefopt_trace_params tp;
    int n = prefopt_train_options(opts, 128, &p), k = n < 0 ? -1 : prefopt_trace_options(opts + n, 128 - n, &tp, 1);
    n = k < 0 ? -1 : n + k;
    if (n < 0)
        prefopt_die("train: option table overflow");
    char msg[1024];
    int rc = prefopt_opts_parse(
        "train",
        "Train a policy with SFT or a DPO-family objective (--loss), tensor-parallel over a grid-rows x grid-cols "
        "process grid and data-parallel over --dp replicas. Writes RUN_DIR/metrics.jsonl, RUN_DIR/checkpoints/ and "
        "RUN_DIR/model.h5; exits 99 after a checkpoint on SIGTERM/SIGUSR1.",
        opts, n, argc, argv, msg, sizeof msg);
    if (rc == PREFOPT_OPTS_EXIT)
        return 0;
    if (rc == PREFOPT_OPTS_ERROR) {
        prefopt_err err = {0};
        prefopt_err_set(&err, "%s", msg);
        prefopt_exit_error(&err, PREFOPT_EXIT_USAGE);
    }
    prefopt_err err = {0};
    if (prefopt_trace_begin(&tp, MPI_COMM_WORLD, &err))
        prefopt_exit_error(&err, PREFOPT_EXIT_USAGE);
    rc = prefopt_train_run(&p, opts, n);
    prefopt_trace_finish();
    return rc;
}
