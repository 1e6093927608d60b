/* Helper of test_ckpt_kill.sh (2 ranks, 2x1 grid):
 *   test_ckpt_kill save DIR STEP    saves checkpoint STEP of a model initialised from seed STEP (moments and state
 *                                   derived from STEP too); PREFOPT_TEST_CKPT_KILL_AFTER_TENSORS kills it mid-write
 *   test_ckpt_kill verify DIR STEP  the latest checkpoint of DIR must be STEP, load, and hold exactly those values */
#include "prefopt/checkpoint.h"
#include "test_model_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    if (argc != 4) {
        fprintf(stderr, "usage: test_ckpt_kill save|verify DIR STEP\n");
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    const char *dir = argv[2];
    int step = atoi(argv[3]), size;
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    prefopt_err err = {0};
    prefopt_grid g;
    if (prefopt_grid_init(&g, MPI_COMM_WORLD, size, 1, 1, &err))
        prefopt_exit_error(&err, 1);
    prefopt_model_config cfg;
    tm_config(&cfg, PREFOPT_ARCH_GPT2);
    prefopt_model_options opt = tm_options(0, 0);
    prefopt_model *m = prefopt_model_create(&cfg, &g, &opt, &err);
    if (!m)
        prefopt_exit_error(&err, 1);
    size_t n;
    float *w = prefopt_model_param_data(m, &n);
    /* calloc: the flat buffer may have gaps between pieces that no tensor covers (they stay zero) */
    float *mb = calloc(n, sizeof(float)), *vb = calloc(n, sizeof(float));
    int rc = 0;
    if (!strcmp(argv[1], "save")) {
        prefopt_model_init_random(m, (uint64_t)step);
        for (size_t e = 0; e < n; e++) { /* local values: same grid on save and verify */
            mb[e] = w[e] * 0.5f;
            vb[e] = w[e] * w[e];
        }
        prefopt_train_state st;
        memset(&st, 0, sizeof st);
        st.step = step;
        st.cursor[0] = 10 * step;
        prefopt_ckpt_opts o = {.dir = dir, .keep_last = 3, .tok = NULL};
        rc = prefopt_ckpt_save(&o, m, mb, vb, &st, NULL, 0, &err);
    } else {
        char path[512], want[600];
        snprintf(want, sizeof want, "%s/step-%08d.h5", dir, step);
        if (prefopt_ckpt_find_latest(dir, path, sizeof path) || strcmp(path, want)) {
            prefopt_err_set(&err, "latest of %s is not %s", dir, want);
            prefopt_exit_error(&err, 1);
        }
        prefopt_train_state st;
        memset(&st, 0, sizeof st);
        rc = prefopt_ckpt_load(path, m, mb, vb, &st, &err);
        if (!rc) {
            prefopt_model *ref = prefopt_model_create(&cfg, &g, &opt, &err);
            prefopt_model_init_random(ref, (uint64_t)step);
            const float *r = prefopt_model_param_data(ref, NULL);
            int bad = st.step != step || st.cursor[0] != 10 * step;
            for (size_t e = 0; e < n && !bad; e++)
                bad = w[e] != r[e] || mb[e] != r[e] * 0.5f || vb[e] != r[e] * r[e];
            if (bad)
                prefopt_err_set(&err, "%s: loaded values differ from those saved", path);
            rc = bad;
            prefopt_model_free(ref);
        }
        free(st.train_config);
    }
    if (prefopt_agree(MPI_COMM_WORLD, &err) || rc)
        prefopt_exit_error(&err, 1);
    if (prefopt_world_rank() == 0)
        printf("%s %d ok\n", argv[1], step);
    prefopt_model_free(m);
    prefopt_grid_free(&g);
    free(mb);
    free(vb);
    MPI_Finalize();
    return 0;
}
