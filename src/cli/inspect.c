/* prefopt inspect: describe the installation (banner) or a file: a dataset, a model file or a checkpoint (the kind
 * read from the HDF5 root attributes). */
#include "prefopt/banner.h"
#include "prefopt/checkpoint.h"
#include "prefopt/dataset.h"
#include "prefopt/agree.h"
#include "prefopt/opts.h"

#include <stdio.h>

int prefopt_cmd_inspect(int argc, char **argv)
{
    int grid_rows = 1, grid_cols = 1, dp = 1, expect_vocab = 0;
    const char *file = NULL, *expect_tok = NULL;
    const prefopt_opt opts[] = {
        {"grid-rows", PREFOPT_OPT_INT, &grid_rows, "1", "process rows of each tensor-parallel grid"},
        {"grid-cols", PREFOPT_OPT_INT, &grid_cols, "1", "process columns of each tensor-parallel grid"},
        {"dp", PREFOPT_OPT_INT, &dp, "1", "data-parallel replicas"},
        {"file", PREFOPT_OPT_STRING, &file, "",
         "describe (and fully validate) this dataset, model file or checkpoint instead"},
        {"expect-vocab", PREFOPT_OPT_INT, &expect_vocab, "0", "with a dataset --file: the vocabulary size it must have"},
        {"expect-tokenizer", PREFOPT_OPT_STRING, &expect_tok, "",
         "with a dataset --file: the tokenizer identity it must have"},
    };
    char msg[1024];
    int rc = prefopt_opts_parse("inspect", "Print the start-up banner for a grid layout (libraries, versions).",
                                opts, (int)(sizeof opts / sizeof opts[0]), argc, argv, msg, sizeof msg);
    if (rc == PREFOPT_OPTS_EXIT)
        return 0;
    prefopt_err err = {0};
    if (rc == PREFOPT_OPTS_ERROR) {
        prefopt_err_set(&err, "%s", msg);
        prefopt_exit_error(&err, PREFOPT_EXIT_USAGE);
    }
    char kind[32];
    if (*file && prefopt_model_file_kind(file, kind, sizeof kind)) {
        /* rank 0 reads and describes; the others learn the outcome, so every rank reports the same error */
        if (prefopt_world_rank() == 0)
            prefopt_model_file_describe(stdout, file, &err);
        fflush(stdout);
        if (prefopt_agree(MPI_COMM_WORLD, &err))
            prefopt_exit_error(&err, PREFOPT_EXIT_ERROR);
        return 0;
    }
    if (*file) {
        prefopt_ds_expect ex = {expect_vocab, *expect_tok ? expect_tok : NULL, 0};
        prefopt_dataset *ds = NULL;
        if (prefopt_dataset_open(file, MPI_COMM_WORLD, &ex, &ds, &err))
            prefopt_exit_error(&err, PREFOPT_EXIT_ERROR);
        prefopt_dataset_describe(stdout, ds); /* collective: rank 0 prints */
        prefopt_dataset_close(ds);
        return 0;
    }
    prefopt_grid g;
    if (prefopt_grid_init(&g, MPI_COMM_WORLD, grid_rows, grid_cols, dp, &err))
        prefopt_exit_error(&err, PREFOPT_EXIT_USAGE);
    prefopt_banner(stdout, &g);
    prefopt_grid_free(&g);
    return 0;
}
