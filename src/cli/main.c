/* prefopt: the single executable. Each subcommand lives in src/cli/<name>.c and defines
 * int prefopt_cmd_<name>(int argc, char **argv) (argv[0] is the subcommand name); the references below are
 * weak so the table lists exactly the subcommands built in. MPI is initialised here once for all of them. */
#include "prefopt/banner.h"
#include "prefopt/agree.h"
#include "prefopt/files.h"
#include "prefopt/opts.h"
#include "prefopt/runctl.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef int (*prefopt_cmd_fn)(int argc, char **argv);

/* subcommand names are written with dashes (trace-summary); the C names have underscores */
static int same_name(const char *a, const char *b)
{
    for (; *a && *b; a++, b++)
        if (*a != *b && !((*a == '-' || *a == '_') && (*b == '-' || *b == '_')))
            return 0;
    return *a == *b;
}

#define PREFOPT_CMDS(X)                                                                             \
    X(train, "train a policy: SFT or a DPO-family objective, tensor- and data-parallel")             \
    X(eval, "sequence log-probs and preference metrics of a model on a dataset; --store-ref")       \
    X(generate, "sample completions for prompts (greedy, temperature, top-k, top-p)")                \
    X(pack, "tokenize JSONL examples into an HDF5 dataset")                                          \
    X(import, "convert a Hugging Face model directory to a prefopt model file")                     \
    X(export, "write a prefopt model or checkpoint as a Hugging Face directory")                    \
    X(inspect, "describe a prefopt dataset, model or checkpoint file")                              \
    X(tokenize, "print the token ids of a text")                                                     \
    X(plot, "draw a run's metrics to PNG with gnuplot")                                              \
    X(bench, "time DPO steps: tokens/s, GFLOP/s, MFU, phases, memory")                              \
    X(trace_summary, "OTF2, Perfetto JSON and MPI summary of a --trace DIR; critical path per step")   \
    X(demo, "the embedded demo pipeline: make data, pack, SFT, DPO, compare")

#define DECLARE(name, help) extern int prefopt_cmd_##name(int, char **) __attribute__((weak));
PREFOPT_CMDS(DECLARE)
#undef DECLARE

static prefopt_cmd_fn lookup(const char *name, const char **help_out, int index, const char **name_out)
{
    int i = 0;
#define ENTRY(n, h)                                                                                 \
    if ((name && same_name(name, #n)) || (!name && i == index)) {                                     \
        if (help_out)                                                                               \
            *help_out = h;                                                                          \
        if (name_out)                                                                               \
            *name_out = #n;                                                                         \
        return prefopt_cmd_##n;                                                                     \
    }                                                                                               \
    i++;
    PREFOPT_CMDS(ENTRY)
#undef ENTRY
    if (name_out)
        *name_out = NULL;
    return NULL;
}

static void usage(FILE *f)
{
    fprintf(f, "prefopt %s: preference optimization (DPO family) and SFT for transformer LLMs on CPU clusters\n\n"
               "usage: prefopt SUBCOMMAND [options]   (prefopt SUBCOMMAND --help lists its options)\n\n"
               "subcommands:\n",
            PREFOPT_VERSION);
    for (int i = 0;; i++) {
        const char *name = NULL, *help = NULL;
        prefopt_cmd_fn fn = lookup(NULL, &help, i, &name);
        if (!name)
            break;
        if (fn) {
            char shown[32];
            snprintf(shown, sizeof shown, "%s", name);
            for (char *c = shown; *c; c++)
                *c = *c == '_' ? '-' : *c;
            fprintf(f, "  %-14s %s\n", shown, help);
        }
    }
    fprintf(f, "\nexit codes: 0 success, 1 error (one line on stderr says what and where), 2 usage error, "
               "99 checkpointed on SIGTERM/SIGUSR1 (requeue)\n");
}

/* Whether any subcommand built in reads a job file's [common] key: each subcommand lists its option table once
 * (opts.h listing mode; the subcommands build their tables and return before doing anything else). The running
 * subcommand is not called again: its table is the one being parsed. */
static const char *running_cmd;

static int any_subcommand_reads(const char *key)
{
    static int listed_all;
    if (!listed_all) {
        listed_all = 1;
        prefopt_opts_listing(1);
        for (int i = 0;; i++) {
            const char *nm = NULL;
            prefopt_cmd_fn f = lookup(NULL, NULL, i, &nm);
            if (!nm)
                break;
            if (f && strcmp(nm, running_cmd)) {
                char *args[2] = {(char *)nm, NULL};
                f(1, args);
            }
        }
        prefopt_opts_listing(0);
    }
    return prefopt_opts_listed(key);
}

int main(int argc, char **argv)
{
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return argc < 2 ? PREFOPT_EXIT_USAGE : 0;
    }
    if (!strcmp(argv[1], "--version")) {
        printf("prefopt %s\n", PREFOPT_VERSION);
        return 0;
    }
    const char *name = NULL;
    prefopt_cmd_fn fn = lookup(argv[1], NULL, -1, &name);
    if (!name || !fn) {
        fprintf(stderr, "prefopt: error: unknown subcommand '%s' (see prefopt --help)\n", argv[1]);
        return PREFOPT_EXIT_USAGE;
    }
    static const char *sections[32];
    for (int i = 0, k = 0; k < 31; i++) { /* job files may hold a section for any subcommand built in */
        const char *nm = NULL;
        prefopt_cmd_fn f2 = lookup(NULL, NULL, i, &nm);
        if (!nm)
            break;
        if (f2)
            sections[k++] = nm;
    }
    prefopt_opts_set_sections(sections);
    running_cmd = name;
    prefopt_opts_set_key_lookup(any_subcommand_reads);
    signal(SIGXFSZ, SIG_IGN); /* a file-size limit (ulimit -f) makes writes fail with EFBIG, reported, not a kill */
    prefopt_blis_select_arch();
    prefopt_malloc_keep_pages();
    /* FUNNELED: only the main thread calls MPI; BLIS/OpenMP threads compute. Initialising here, before
     * BLACS, stops BLACS from calling plain MPI_Init itself. */
    /* SLURM's stop signals (SIGTERM, SIGUSR1) may come at any time, start-up included: the handler that only
     * raises a flag is in place before MPI_Init, so a signal there cannot kill a rank half-way into the job
     * (mpiexec then hung in PMIx for minutes). */
    prefopt_stop_install();
    const char *raise_at = getenv("PREFOPT_TEST_RAISE_AT_START"); /* tests: a stop signal during start-up */
    if (raise_at)
        raise(!strcmp(raise_at, "USR1") ? SIGUSR1 : SIGTERM);
    int provided = 0;
    prefopt_mark_start(0);
    MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
    prefopt_mark_start(1);
    prefopt_agree_install_abort();
    if (strcmp(name, "train")) {
        /* train checks the flag at its step boundaries; the others stop now if a signal came during start-up,
         * and otherwise take SIGTERM and SIGUSR1 as usual (their outputs appear only when complete) */
        if (prefopt_stop_agreed(MPI_COMM_WORLD)) {
            if (prefopt_world_rank() == 0)
                fprintf(stderr, "prefopt: stop signal during start-up: %s exits with %d before starting\n", name,
                        PREFOPT_EXIT_REQUEUE);
            MPI_Finalize();
            return PREFOPT_EXIT_REQUEUE;
        }
        signal(SIGTERM, SIG_DFL);
        signal(SIGUSR1, SIG_DFL);
    }
    int rc = fn(argc - 1, argv + 1);
    fflush(stdout);
    fflush(stderr);
    if (prefopt_skip_finalize()) /* HDF5 holds a file it could not close: its clean-up would crash (files.h) */
        _exit(rc ? rc : PREFOPT_EXIT_ERROR);
    int fin = 0;
    MPI_Finalized(&fin);
    if (!fin)
        MPI_Finalize();
    return rc;
}
