/* prefopt eval: options (command line and INI job file) to the evaluation driver in src/train/eval.c. */
#include "prefopt/agree.h"
#include "prefopt/eval.h"
#include "prefopt/trace_export.h"

#include <stdio.h>
#include <string.h>

int prefopt_cmd_eval(int argc, char **argv)
{
    static prefopt_eval_params q;
    prefopt_eval_params *p = &q;
    static prefopt_opt opts[64];
    const prefopt_opt base[] = {
        {"model", PREFOPT_OPT_STRING, &p->model_path, "", "model file or checkpoint (required)"},
        {"ref", PREFOPT_OPT_STRING, &p->ref_path, "", "reference model file (else the dataset's stored reference, if any)"},
        {"data", PREFOPT_OPT_STRING, &p->data_path, "", "dataset (HDF5 from prefopt pack) (required)"},
        {"out", PREFOPT_OPT_STRING, &p->out_path, "", "per-example JSONL output (summary in OUT.summary.json)"},
        {"store-ref", PREFOPT_OPT_FLAG, &p->store_ref, "0",
         "write the model's log-probs into the dataset as precomputed reference log-probs"},
        {"batch-size", PREFOPT_OPT_INT, &p->batch_size, "16", "examples per forward on one replica"},
        {"grid-rows", PREFOPT_OPT_INT, &p->grid_rows, "1", "process rows of each tensor-parallel grid"},
        {"grid-cols", PREFOPT_OPT_INT, &p->grid_cols, "1", "process columns of each tensor-parallel grid"},
        {"dp", PREFOPT_OPT_INT, &p->dp, "0", "data-parallel replicas (0: ranks / (rows*cols))"},
    };
    int nopts = (int)(sizeof base / sizeof base[0]);
    memcpy(opts, base, sizeof base);
    nopts += prefopt_objective_options(opts + nopts, 64 - nopts, &p->obj);
    static prefopt_trace_params tp;
    nopts += prefopt_trace_options(opts + nopts, 64 - nopts, &tp, 1);
    char msg[1024];
    prefopt_err err = {0};
    int rc = prefopt_opts_parse("eval",
                                "Score a dataset with a model: per-example summed completion log-probs (and the "
                                "reference's), preference metrics of the objective (--loss, --beta), --store-ref.",
                                opts, nopts, argc, argv, msg, sizeof msg);
    if (rc == PREFOPT_OPTS_EXIT)
        return 0;
    if (rc == PREFOPT_OPTS_OK && (!*p->model_path || !*p->data_path || (!*p->out_path && !p->store_ref)))
        snprintf(msg, sizeof msg, "eval needs --model, --data and --out (or --store-ref)"), rc = PREFOPT_OPTS_ERROR;
    if (rc == PREFOPT_OPTS_OK && p->batch_size < 1)
        snprintf(msg, sizeof msg, "eval: --batch-size must be >= 1"), rc = PREFOPT_OPTS_ERROR;
    if (rc == PREFOPT_OPTS_ERROR) {
        prefopt_err_set(&err, "%s", msg);
        prefopt_exit_error(&err, PREFOPT_EXIT_USAGE);
    }
    if (prefopt_trace_begin(&tp, MPI_COMM_WORLD, &err))
        prefopt_exit_error(&err, PREFOPT_EXIT_USAGE);
    rc = prefopt_eval_run(p);
    prefopt_trace_finish();
    return rc;
}
