/* prefopt: the single executable. Each subcommand lives in src/cli/<name>.c and defines
 * int prefopt_cmd_<name>(int argc, char **argv) (argv[0] is the subcommand name); the references below are
 * weak so the table lists exactly the subcommands built in. MPI is initialised here once for all of them. */
#include "prefopt/banner.h"
#include "prefopt/agree.h"
#include "prefopt/opts.h"

#include <signal.h>
#include <stdio.h>
#include <string.h>

typedef int (*prefopt_cmd_fn)(int argc, char **argv);

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
    X(demo, "the embedded demo pipeline: make data, pack, SFT, DPO, compare")

#define DECLARE(name, help) extern int prefopt_cmd_##name(int, char **) __attribute__((weak));
PREFOPT_CMDS(DECLARE)
#undef DECLARE

static prefopt_cmd_fn lookup(const char *name, const char **help_out, int index, const char **name_out)
{
    int i = 0;
#define ENTRY(n, h)                                                                                 \
    if ((name && !strcmp(name, #n)) || (!name && i == index)) {                                     \
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
        if (fn)
            fprintf(f, "  %-10s %s\n", name, help);
    }
    fprintf(f, "\nexit codes: 0 success, 1 error (one line on stderr says what and where), 2 usage error, "
               "99 checkpointed on SIGTERM/SIGUSR1 (requeue)\n");
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
    signal(SIGXFSZ, SIG_IGN); /* a file-size limit (ulimit -f) makes writes fail with EFBIG, reported, not a kill */
    prefopt_blis_select_arch();
    prefopt_malloc_keep_pages();
    /* FUNNELED: only the main thread calls MPI; BLIS/OpenMP threads compute. Initialising here, before
     * BLACS, stops BLACS from calling plain MPI_Init itself. */
    int provided = 0;
    prefopt_mark_start(0);
    MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
    prefopt_mark_start(1);
    prefopt_agree_install_abort();
    int rc = fn(argc - 1, argv + 1);
    int fin = 0;
    MPI_Finalized(&fin);
    if (!fin)
        MPI_Finalize();
    return rc;
}
