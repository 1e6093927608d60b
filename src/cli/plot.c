/* prefopt plot RUN_DIR: loss, reward accuracy/margins and learning rate from metrics.jsonl to PNG files, drawn
 * by gnuplot. Train and eval/ rows are separate series; rows of other kinds are ignored. */
#define _GNU_SOURCE
#include "prefopt/opts.h"
#include "prefopt/runctl.h"

#include <cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct {
    const char *key; /* metrics.jsonl key */
    const char *title;
} series;

/* Columns of the data file gnuplot reads: step, then one column per series ("NaN" when absent). */
static const series columns[] = {
    {"loss", "train loss"},
    {"eval/loss", "eval loss"},
    {"rewards/accuracies", "train reward accuracy"},
    {"eval/rewards/accuracies", "eval reward accuracy"},
    {"rewards/margins", "train reward margin"},
    {"eval/rewards/margins", "eval reward margin"},
    {"learning_rate", "learning rate"},
    {"logps/chosen", "train logps/chosen"},
    {"logps/rejected", "train logps/rejected"},
};
#define NCOLS ((int)(sizeof columns / sizeof columns[0]))

static int write_data(const char *metrics, const char *datafile, int *present, prefopt_err *err)
{
    FILE *in = fopen(metrics, "r");
    if (!in) {
        prefopt_err_set(err, "%s: cannot open: no metrics to plot", metrics);
        return -1;
    }
    FILE *out = fopen(datafile, "w");
    if (!out) {
        fclose(in);
        prefopt_err_set(err, "%s: cannot create", datafile);
        return -1;
    }
    char *line = NULL;
    size_t cap = 0;
    long lineno = 0, rows = 0;
    while (getline(&line, &cap, in) > 0) {
        lineno++;
        cJSON *o = cJSON_Parse(line);
        if (!o) {
            /* A run killed mid-line leaves a partial last line; anything else is a corrupt file. */
            if (feof(in) || fgetc(in) == EOF)
                break;
            prefopt_err_set(err, "%s:%ld: not a JSON object", metrics, lineno);
            cJSON_free(line);
            fclose(in);
            fclose(out);
            return -1;
        }
        const cJSON *step = cJSON_GetObjectItemCaseSensitive(o, "step");
        if (cJSON_IsNumber(step)) {
            fprintf(out, "%.17g", step->valuedouble);
            for (int c = 0; c < NCOLS; c++) {
                const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, columns[c].key);
                if (cJSON_IsNumber(v)) {
                    fprintf(out, " %.9g", v->valuedouble);
                    present[c] = 1;
                } else
                    fprintf(out, " NaN");
            }
            fputc('\n', out);
            rows++;
        }
        cJSON_Delete(o);
    }
    free(line);
    fclose(in);
    if (fclose(out) || rows == 0) {
        prefopt_err_set(err, "%s: no rows with a \"step\" field", metrics);
        return -1;
    }
    return 0;
}

static void plot_panel(FILE *gp, const char *png, const char *title, const char *ylabel, const int *present, int from,
                       int to, const char *datafile)
{
    int any = 0;
    for (int c = from; c <= to; c++)
        any |= present[c];
    if (!any)
        return;
    fprintf(gp, "set output '%s'\nset title '%s'\nset ylabel '%s'\nplot ", png, title, ylabel);
    int first = 1;
    for (int c = from; c <= to; c++) {
        if (!present[c])
            continue;
        /* eval rows are sparse: draw points joined over the rows where they exist */
        fprintf(gp, "%s'%s' using 1:%d with linespoints pt 7 ps 0.4 title '%s'", first ? "" : ", ", datafile, c + 2,
                columns[c].title);
        first = 0;
    }
    fprintf(gp, "\n");
}

int prefopt_cmd_plot(int argc, char **argv)
{
    const char *run_dir = NULL, *out_dir = NULL;
    const prefopt_opt opts[] = {
        {"run-dir", PREFOPT_OPT_STRING, &run_dir, "", "run directory holding metrics.jsonl (required)"},
        {"out", PREFOPT_OPT_STRING, &out_dir, "", "where to write the PNG files (default: the run directory)"},
    };
    /* `prefopt plot RUN_DIR` is the documented short form */
    char *args[64];
    int n = 0;
    for (int i = 0; i < argc && n < 62; i++) {
        if (i == 1 && argv[i][0] != '-') {
            args[n++] = "--run-dir";
        }
        args[n++] = argv[i];
    }
    char msg[1024];
    prefopt_err err = {0};
    int rc = prefopt_opts_parse("plot", "Draw loss, reward accuracy/margins, log-probs and learning rate of a run "
                                        "(RUN_DIR/metrics.jsonl) to PNG with gnuplot: prefopt plot RUN_DIR.",
                                opts, 2, n, args, msg, sizeof msg);
    if (rc == PREFOPT_OPTS_EXIT)
        return 0;
    if (rc == PREFOPT_OPTS_ERROR || !*run_dir) {
        prefopt_err_set(&err, "%s", rc == PREFOPT_OPTS_ERROR ? msg : "plot needs a run directory: prefopt plot RUN_DIR");
        prefopt_exit_error(&err, PREFOPT_EXIT_USAGE);
    }
    if (prefopt_world_rank() != 0)
        return 0;
    if (!*out_dir)
        out_dir = run_dir;
    if (prefopt_mkdirs(out_dir, &err))
        prefopt_exit_error(&err, PREFOPT_EXIT_ERROR);

    char metrics[4096], datafile[4096];
    snprintf(metrics, sizeof metrics, "%s/metrics.jsonl", run_dir);
    snprintf(datafile, sizeof datafile, "%s/.plot-data.%d", out_dir, (int)getpid());
    int present[NCOLS] = {0};
    if (write_data(metrics, datafile, present, &err))
        prefopt_exit_error(&err, PREFOPT_EXIT_ERROR);

    FILE *gp = popen("gnuplot", "w");
    if (!gp) {
        unlink(datafile);
        prefopt_err_set(&err, "cannot start gnuplot (apt-get install gnuplot-nox)");
        prefopt_exit_error(&err, PREFOPT_EXIT_ERROR);
    }
    fprintf(gp, "set terminal pngcairo size 900,540 noenhanced\nset grid\nset key outside bottom center horizontal\n"
                "set xlabel 'step'\nset datafile missing NaN\n");
    char png[4200];
    snprintf(png, sizeof png, "%s/loss.png", out_dir);
    plot_panel(gp, png, "loss", "loss", present, 0, 1, datafile);
    snprintf(png, sizeof png, "%s/rewards.png", out_dir);
    plot_panel(gp, png, "reward accuracy and margin", "", present, 2, 5, datafile);
    snprintf(png, sizeof png, "%s/logps.png", out_dir);
    plot_panel(gp, png, "summed completion log-probs (policy)", "log p", present, 7, 8, datafile);
    snprintf(png, sizeof png, "%s/lr.png", out_dir);
    fprintf(gp, "set format y '%%.1e'\n");
    plot_panel(gp, png, "learning rate", "lr", present, 6, 6, datafile);
    int status = pclose(gp);
    unlink(datafile);
    if (status != 0) {
        prefopt_err_set(&err, "gnuplot failed (exit status %d) drawing %s", status, metrics);
        prefopt_exit_error(&err, PREFOPT_EXIT_ERROR);
    }
    printf("plot: wrote loss.png%s%s%s to %s\n", present[2] || present[3] ? ", rewards.png" : "",
           present[7] ? ", logps.png" : "", present[6] ? ", lr.png" : "", out_dir);
    return 0;
}
