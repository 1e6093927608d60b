/* prefopt eval: options (command line and INI job file) to the evaluation driver in src/train/eval.c. */
#include "prefopt/files.h"
#include "prefopt/agree.h"
#include "prefopt/eval.h"
#include "prefopt/trace_export.h"

#include "prefopt/train.h"

#include <stdio.h>
#include <string.h>

/* the names of the objective's options: those a run directory's config.ini supplies by default */
static int objective_key(const char *name)
{
    static prefopt_objective_params scratch;
    static prefopt_opt t[64];
    static int n = -1;
    if (n < 0)
        n = prefopt_objective_options(t, 64, &scratch);
    for (int i = 0; i < n; i++)
        if (!strcmp(t[i].name, name))
            return 1;
    return 0;
}

int prefopt_cmd_eval(int argc, char **argv)
{
    static prefopt_eval_params q;
    prefopt_eval_params *p = &q;
    static prefopt_opt opts[64];
    const prefopt_opt base[] = {
        {"model", PREFOPT_OPT_STRING, &p->model_path, "",
         "model file, checkpoint or run directory (required); in a run directory, the objective options not given "
         "here come from its config.ini"},
        {"ref", PREFOPT_OPT_STRING, &p->ref_path, "", "reference model file (else the dataset's stored reference, if any)"},
        {"data", PREFOPT_OPT_STRING, &p->data_path, "", "dataset (HDF5 from prefopt pack) (required)"},
        {"out", PREFOPT_OPT_STRING, &p->out_path, "", "per-example JSONL output (summary in OUT.summary.json)"},
        {"store-ref", PREFOPT_OPT_FLAG, &p->store_ref, "0",
         "write the model's log-probs into the dataset as precomputed reference log-probs"},
        {"batch-size", PREFOPT_OPT_INT, &p->batch_size, "16", "examples per forward on one replica"},
        {"grid-rows", PREFOPT_OPT_INT, &p->grid_rows, "1", "process rows of each tensor-parallel grid"},
        {"grid-cols", PREFOPT_OPT_INT, &p->grid_cols, "1", "process columns of each tensor-parallel grid"},
        {"dp", PREFOPT_OPT_INT, &p->dp, "0", "data-parallel replicas (0: ranks / (rows*cols))"},
        PREFOPT_PRECISION_OPTIONS(&p->prec),
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
    if (rc == PREFOPT_OPTS_OK && *p->out_path) {
        char summary[4200];
        snprintf(summary, sizeof summary, "%s.summary.json", p->out_path);
        const char *names[] = {"--model", "--ref", "--data", "--out", "OUT.summary.json"};
        const char *paths[] = {p->model_path, p->ref_path, p->data_path, p->out_path, summary};
        if (prefopt_check_outputs_distinct(names, paths, 3, 5, &err)) {
            snprintf(msg, sizeof msg, "%s", err.msg), rc = PREFOPT_OPTS_ERROR;
            prefopt_err_clear(&err);
        }
    }
    if (rc == PREFOPT_OPTS_ERROR) {
        prefopt_err_set(&err, "%s", msg);
        prefopt_exit_error(&err, PREFOPT_EXIT_USAGE);
    }
    /* a run directory (or a model file / checkpoint in one): its model, and the objective of its config.ini for
     * every objective option not given here; the reference of the run (its --ref-model, else its --init) */
    static char model[4200], ini[4200], taken[1024], run_ref[4200];
    if (prefopt_run_dir_model(p->model_path, model, sizeof model, ini, sizeof ini, &err))
        prefopt_exit_error(&err, PREFOPT_EXIT_ERROR);
    p->model_path = model;
    if (*ini) {
        if (prefopt_run_config_adopt(ini, opts, nopts, objective_key, taken, sizeof taken, &err) < 0)
            prefopt_exit_error(&err, PREFOPT_EXIT_ERROR);
        p->run_config = ini;
        p->run_config_taken = taken;
        if (!prefopt_opts_given(&p->ref_path) &&
            (!prefopt_run_config_value(ini, "ref-model", run_ref, sizeof run_ref) ||
             !prefopt_run_config_value(ini, "init", run_ref, sizeof run_ref)))
            p->run_ref = run_ref;
    }
    if (prefopt_trace_begin(&tp, MPI_COMM_WORLD, &err))
        prefopt_exit_error(&err, PREFOPT_EXIT_USAGE);
    int erc = prefopt_eval_run(p);
    prefopt_trace_finish();
    return erc;
}
