/* prefopt plot RUN_DIR [RUN_DIR...]: the metrics of metrics.jsonl as PNG panels drawn by gnuplot -- loss, reward
 * accuracy and margin, rewards of chosen vs rejected, log-probs, grad_norm, NLL, KL, token accuracy, learning
 * rate -- with the train rows and the eval/ rows as separate series, and several runs overlaid (one colour per run
 * and series). The gnuplot script is kept as OUT/plot.gp with the data inline (datablocks), so it can be edited and
 * rerun; every file is written under a temporary name and renamed when complete. Rows of other kinds (skipped
 * steps, config changes) have no such numbers and are left out. */
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

/* Columns of each run's data block: step, then one column per series ("NaN" when a row lacks it). */
static const series columns[] = {
    {"loss", "train loss"},                             /* 0 */
    {"eval/loss", "eval loss"},                         /* 1 */
    {"rewards/accuracies", "train reward accuracy"},    /* 2 */
    {"eval/rewards/accuracies", "eval reward accuracy"},
    {"rewards/margins", "train reward margin"},
    {"eval/rewards/margins", "eval reward margin"},     /* 5 */
    {"rewards/chosen", "train rewards/chosen"},         /* 6 */
    {"rewards/rejected", "train rewards/rejected"},
    {"eval/rewards/chosen", "eval rewards/chosen"},
    {"eval/rewards/rejected", "eval rewards/rejected"}, /* 9 */
    {"logps/chosen", "train logps/chosen"},             /* 10 */
    {"logps/rejected", "train logps/rejected"},
    {"eval/logps/chosen", "eval logps/chosen"},
    {"eval/logps/rejected", "eval logps/rejected"},     /* 13 */
    {"grad_norm", "grad_norm"},                         /* 14 */
    {"nll_loss", "train nll_loss"},                     /* 15 */
    {"eval/nll_loss", "eval nll_loss"},
    {"kl", "train kl"},                                 /* 17 */
    {"eval/kl", "eval kl"},
    {"mean_token_accuracy", "train mean_token_accuracy"}, /* 19 */
    {"eval/mean_token_accuracy", "eval mean_token_accuracy"},
    {"learning_rate", "learning rate"},                 /* 21 */
};
#define NCOLS ((int)(sizeof columns / sizeof columns[0]))

static const struct {
    const char *file, *title, *ylabel;
    int from, to; /* columns */
} panels[] = {
    {"loss", "loss", "loss", 0, 1},
    {"rewards", "reward accuracy and margin", "", 2, 5},
    {"rewards_chosen_rejected", "rewards of chosen vs rejected (beta * log-ratio)", "reward", 6, 9},
    {"logps", "summed completion log-probs (policy)", "log p", 10, 13},
    {"grad_norm", "gradient norm (before clipping)", "norm", 14, 14},
    {"nll", "NLL of the sft term (ORPO: prompt + chosen)", "nats per token", 15, 16},
    {"kl", "KTO's KL estimate", "kl", 17, 18},
    {"token_accuracy", "token accuracy", "accuracy", 19, 20},
    {"lr", "learning rate", "lr", 21, 21},
};
#define NPANELS ((int)(sizeof panels / sizeof panels[0]))

/* Appends the data block $run<r> of one run's metrics.jsonl to the script; marks the columns present. */
static int write_block(FILE *gp, int r, const char *metrics, int *present, prefopt_err *err)
{
    FILE *in = fopen(metrics, "r");
    if (!in) {
        prefopt_err_set(err, "%s: cannot open: no metrics to plot", metrics);
        return -1;
    }
    fprintf(gp, "$run%d << EOD\n", r);
    char *line = NULL;
    size_t cap = 0;
    long lineno = 0, rows = 0;
    int rc = 0;
    while (getline(&line, &cap, in) > 0) {
        lineno++;
        cJSON *o = cJSON_Parse(line);
        if (!o) {
            /* A run killed mid-line leaves a partial last line; anything else is a corrupt file. */
            if (feof(in) || fgetc(in) == EOF)
                break;
            prefopt_err_set(err, "%s:%ld: not a JSON object", metrics, lineno);
            rc = -1;
            break;
        }
        const cJSON *step = cJSON_GetObjectItemCaseSensitive(o, "step");
        if (cJSON_IsNumber(step)) {
            fprintf(gp, "%.17g", step->valuedouble);
            for (int c = 0; c < NCOLS; c++) {
                const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, columns[c].key);
                if (cJSON_IsNumber(v)) {
                    fprintf(gp, " %.9g", v->valuedouble);
                    present[c] = 1;
                } else
                    fprintf(gp, " NaN");
            }
            fputc('\n', gp);
            rows++;
        }
        cJSON_Delete(o);
    }
    free(line);
    fclose(in);
    fprintf(gp, "EOD\n");
    if (!rc && rows == 0) {
        prefopt_err_set(err, "%s: no rows with a \"step\" field", metrics);
        rc = -1;
    }
    return rc;
}

/* The run's name in the legend when runs are overlaid: its directory's last component. */
static const char *run_name(const char *dir)
{
    size_t n = strlen(dir);
    while (n > 1 && dir[n - 1] == '/')
        n--;
    static char buf[256];
    snprintf(buf, sizeof buf, "%.*s", (int)n, dir);
    char *slash = strrchr(buf, '/');
    return slash && slash[1] ? slash + 1 : buf;
}

/* gnuplot single-quoted string: a quote is written twice */
static void quoted(FILE *gp, const char *s)
{
    fputc('\'', gp);
    for (; *s; s++) {
        if (*s == '\'')
            fputc('\'', gp);
        fputc(*s, gp);
    }
    fputc('\'', gp);
}

int prefopt_cmd_plot(int argc, char **argv)
{
    const char *run_dir = NULL, *out_dir = NULL;
    const prefopt_opt opts[] = {
        {"run-dir", PREFOPT_OPT_STRING, &run_dir, "", "run directory holding metrics.jsonl (or give them positionally)"},
        {"out", PREFOPT_OPT_STRING, &out_dir, "",
         "where to write the PNG files and plot.gp (default: the run directory; several runs: the current one)"},
    };
    /* `prefopt plot RUN_DIR [RUN_DIR...]` is the documented form: the positional arguments are the runs */
    enum { MAXRUNS = 16 };
    const char *runs[MAXRUNS];
    int nruns = 0;
    char *args[64];
    int n = 0;
    prefopt_err err = {0};
    for (int i = 0; i < argc && n < 62; i++) {
        if (i > 0 && argv[i][0] != '-' && (i == 1 || argv[i - 1][0] != '-' || strchr(argv[i - 1], '=') ||
                                           !strcmp(argv[i - 1], "--print-config"))) {
            if (nruns == MAXRUNS) {
                prefopt_err_set(&err, "plot: at most %d runs at once", MAXRUNS);
                prefopt_exit_error(&err, PREFOPT_EXIT_USAGE);
            }
            runs[nruns++] = argv[i];
            continue;
        }
        args[n++] = argv[i];
    }
    char msg[1024];
    int rc = prefopt_opts_parse("plot",
                                "Draw the metrics of one or more runs (RUN_DIR/metrics.jsonl) to PNG with gnuplot: "
                                "prefopt plot RUN_DIR [RUN_DIR...] overlays runs; OUT/plot.gp keeps the script.",
                                opts, 2, n, args, msg, sizeof msg);
    if (rc == PREFOPT_OPTS_EXIT)
        return 0;
    if (rc == PREFOPT_OPTS_OK && *run_dir && nruns < MAXRUNS)
        runs[nruns++] = run_dir;
    if (rc == PREFOPT_OPTS_ERROR || nruns == 0) {
        prefopt_err_set(&err, "%s", rc == PREFOPT_OPTS_ERROR ? msg : "plot needs a run directory: prefopt plot RUN_DIR");
        prefopt_exit_error(&err, PREFOPT_EXIT_USAGE);
    }
    if (prefopt_world_rank() != 0)
        return 0;
    if (!*out_dir)
        out_dir = nruns == 1 ? runs[0] : ".";
    if (prefopt_mkdirs(out_dir, &err))
        prefopt_exit_error(&err, PREFOPT_EXIT_ERROR);

    /* the script: data blocks first, then one panel per PNG with the series some run has */
    char *script = NULL;
    size_t slen = 0;
    FILE *gp = open_memstream(&script, &slen);
    if (!gp)
        prefopt_die("out of memory writing the plot script");
    fprintf(gp, "# prefopt plot of");
    for (int r = 0; r < nruns; r++)
        fprintf(gp, " %s", runs[r]);
    fprintf(gp, "; the data are inline. Rerun in this directory: gnuplot plot.gp\n");
    int present[MAXRUNS][NCOLS];
    memset(present, 0, sizeof present);
    for (int r = 0; r < nruns; r++) {
        char metrics[4200];
        snprintf(metrics, sizeof metrics, "%s/metrics.jsonl", runs[r]);
        if (write_block(gp, r, metrics, present[r], &err)) {
            fclose(gp);
            free(script);
            prefopt_exit_error(&err, PREFOPT_EXIT_ERROR);
        }
    }
    fprintf(gp, "set terminal pngcairo size 900,540 noenhanced\nset grid\nset key outside bottom center horizontal\n"
                "set xlabel 'step'\nset datafile missing NaN\n");
    char written[NPANELS][4200];
    int nwritten = 0;
    for (int k = 0; k < NPANELS; k++) {
        int any = 0;
        for (int r = 0; r < nruns; r++)
            for (int c = panels[k].from; c <= panels[k].to; c++)
                any |= present[r][c];
        if (!any)
            continue;
        snprintf(written[nwritten], sizeof written[nwritten], "%s/%s.png", out_dir, panels[k].file);
        nwritten++;
        /* names relative to OUT, where the script runs (and the kept plot.gp reruns: cd OUT && gnuplot plot.gp) */
        fprintf(gp, "set output '%s.png.tmp.%d'", panels[k].file, (int)getpid());
        fprintf(gp, "\nset title '%s'\nset ylabel '%s'\nset format y %s\nplot ", panels[k].title, panels[k].ylabel,
                k == NPANELS - 1 ? "'%.1e'" : "'% h'");
        int first = 1;
        for (int r = 0; r < nruns; r++)
            for (int c = panels[k].from; c <= panels[k].to; c++) {
                if (!present[r][c])
                    continue;
                /* eval rows are sparse: points joined over the rows where they exist */
                fprintf(gp, "%s$run%d using 1:%d with linespoints pt 7 ps 0.4 title ", first ? "" : ", ", r, c + 2);
                char title[512];
                snprintf(title, sizeof title, "%s%s%s", nruns > 1 ? run_name(runs[r]) : "", nruns > 1 ? ": " : "",
                         columns[c].title);
                quoted(gp, title);
                first = 0;
            }
        fprintf(gp, "\n");
    }
    fprintf(gp, "set output\n");
    if (fclose(gp))
        prefopt_die("out of memory writing the plot script");

    char gpath[4200];
    snprintf(gpath, sizeof gpath, "%s/plot.gp", out_dir);
    FILE *pipe = popen("gnuplot", "w");
    if (!pipe) {
        free(script);
        prefopt_err_set(&err, "cannot start gnuplot (apt-get install gnuplot-nox)");
        prefopt_exit_error(&err, PREFOPT_EXIT_ERROR);
    }
    fprintf(pipe, "cd ");
    quoted(pipe, out_dir);
    fputc('\n', pipe);
    fwrite(script, 1, slen, pipe);
    int status = pclose(pipe);
    for (int k = 0; k < nwritten; k++) {
        char tmp[4300];
        snprintf(tmp, sizeof tmp, "%.4200s.tmp.%d", written[k], (int)getpid());
        if (status == 0 && rename(tmp, written[k]))
            prefopt_err_set(&err, "%s: cannot write", written[k]);
        unlink(tmp);
    }
    if (status != 0) {
        free(script);
        prefopt_err_set(&err, "gnuplot failed (exit status %d) drawing %s/metrics.jsonl", status, runs[0]);
        prefopt_exit_error(&err, PREFOPT_EXIT_ERROR);
    }
    /* the kept script draws to the final names */
    char tag[64];
    snprintf(tag, sizeof tag, ".tmp.%d'", (int)getpid());
    for (char *at; (at = strstr(script, tag));) {
        memmove(at, at + strlen(tag) - 1, strlen(at + strlen(tag) - 1) + 1);
        slen -= strlen(tag) - 1;
    }
    if (!err.set)
        prefopt_write_atomic(gpath, script, slen, &err);
    free(script);
    if (err.set)
        prefopt_exit_error(&err, PREFOPT_EXIT_ERROR);
    printf("plot: wrote");
    for (int k = 0; k < nwritten; k++)
        printf("%s %s", k ? "," : "", strrchr(written[k], '/') + 1);
    printf(" and plot.gp to %s (%d run%s)\n", out_dir, nruns, nruns > 1 ? "s" : "");
    return 0;
}
