/* Helper of test_hf_forward.sh: loads a prefopt model file (made by prefopt import) on an R x C grid and writes
 * the log-prob of every token of a few fixed sequences given its prefix, one line per sequence, for
 * tests/tools/ref_forward.py to compare with its numpy forward of the original HF directory.
 *   test_hf_forward MODEL.h5 OUT.txt ROWS COLS */
#include "prefopt/checkpoint.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const int seqs[3][10] = {{1, 5, 9, 13, 17, 21, 25, 0}, {60, 2, 2, 7, 40, 0}, {3, 14, 15, 9, 26, 53, 58, 9, 7, 0}};
static const int lens[3] = {7, 5, 9};

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    if (argc != 5) {
        fprintf(stderr, "usage: test_hf_forward MODEL.h5 OUT.txt ROWS COLS\n");
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    prefopt_err err = {0};
    prefopt_grid g;
    if (prefopt_grid_init(&g, MPI_COMM_WORLD, atoi(argv[3]), atoi(argv[4]), 1, &err))
        prefopt_exit_error(&err, 1);
    prefopt_model_config cfg;
    if (prefopt_model_file_read_config(argv[1], &cfg, &err))
        prefopt_exit_error(&err, 1);
    /* small blocks so that the tiny dimensions really split over the grid */
    prefopt_model_options o = {.block_hidden = 4, .block_ffn = 8, .block_vocab = 8};
    prefopt_model *m = prefopt_model_create(&cfg, &g, &o, &err);
    if (!m || prefopt_model_file_load(m, argv[1], &err))
        prefopt_exit_error(&err, 1);
    enum { T = 10, R = 3 };
    int32_t tok[R * T], pos[R * T], parent[R * T], unit[R * T];
    int8_t seg[R * T];
    uint8_t comp[R * T];
    int nu = 0;
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++) {
            int k = r * T + t, real = t < lens[r];
            tok[k] = real ? seqs[r][t] : 0;
            pos[k] = t;
            seg[k] = real ? 1 : -1;
            parent[k] = real && t > 0 ? t - 1 : -1;
            unit[k] = real && t > 0 ? nu++ : -1;
            comp[k] = real && t > 0;
        }
    prefopt_batch b = {R, T, nu, tok, pos, seg, parent, unit, comp};
    double *buf = calloc((size_t)nu * 6, sizeof(double));
    prefopt_unit_stats s = {buf, buf + nu, buf + 2 * nu, buf + 3 * nu, buf + 4 * nu, buf + 5 * nu};
    if (prefopt_model_forward(m, &b, &s, &err))
        prefopt_exit_error(&err, 1);
    if (g.world_rank == 0) {
        FILE *f = fopen(argv[2], "w");
        for (int r = 0, u = 0; r < R; r++) {
            fprintf(f, "seq");
            for (int t = 0; t < lens[r]; t++)
                fprintf(f, " %d", seqs[r][t]);
            fprintf(f, "\nlogp");
            for (int t = 1; t < lens[r]; t++)
                fprintf(f, " %.9g", s.logp_completion[u++]);
            fprintf(f, "\n");
        }
        fclose(f);
    }
    free(buf);
    prefopt_model_free(m);
    prefopt_grid_free(&g);
    MPI_Finalize();
    return 0;
}
