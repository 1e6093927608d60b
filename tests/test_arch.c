/* Helper of test_arch.sh (issue 20): an imported model (any architecture) on an R x C grid, checked on what the
 * plain HF forward of test_hf_forward.c does not reach:
 *   1. the standard packed batch (two DPO rows [prompt | chosen | rejected] whose rejected branch sees the prompt
 *      but not the chosen answer, an SFT row, padding): per-unit results written to OUT for
 *      tests/tools/ref_packed.py, which runs every branch as its own sequence through the float64 numpy forward
 *      (so a sliding window must combine with the branch rule exactly);
 *   2. every parameter's gradient on the grid equals the one of the same weights on a 1x1 grid (1e-4 relative
 *      to the tensor's largest entry), and on 1x1 equals central finite differences;
 *   3. generation with the key/value cache (a prompt, then one token per step) gives the logits of a full
 *      recomputation at every step, on sequences longer than the windows.
 *   test_arch MODEL.h5 OUT.txt ROWS COLS */
#include "prefopt/checkpoint.h"
#include "test_model_util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures;
#define FAIL(...)                                                                                              \
    do {                                                                                                       \
        fprintf(stderr, "test_arch: " __VA_ARGS__);                                                            \
        fputc('\n', stderr);                                                                                   \
        failures++;                                                                                            \
    } while (0)

static void die(const prefopt_err *e)
{
    fprintf(stderr, "test_arch: %s\n", e->msg);
    MPI_Abort(MPI_COMM_WORLD, 1);
}

static double loss_of(prefopt_model *m, const test_batch *tb, float *dc, float *da)
{
    tm_stats s;
    prefopt_unit_stats us = tm_stats_view(&s);
    prefopt_batch b = tb_view(tb);
    prefopt_err err = {0};
    if (prefopt_model_forward(m, &b, &us, &err))
        die(&err);
    return tm_loss(tb, &s, dc, da);
}

static void grads(prefopt_model *m, const test_batch *tb)
{
    float dc[64], da[64];
    loss_of(m, tb, dc, da);
    prefopt_model_zero_grad(m);
    prefopt_model_backward(m, dc, da);
}

/* 5 elements of each tensor of the 1x1 model: the largest gradient and four spread-out ones (as
 * test_model_grad.c: h = 4e-3, tolerance 5e-4 absolute + 2% relative) */
static void finite_differences(prefopt_model *m, const test_batch *tb)
{
    const float h = 4e-3f;
    double worst = 0;
    int n = 0;
    for (int pi = 0; pi < prefopt_model_param_count(m); pi++) {
        prefopt_param *p = prefopt_model_param_at(m, pi);
        size_t sz = prefopt_dmat_local_size(p->value), pick[5] = {0};
        for (size_t e = 0; e < sz; e++)
            if (fabsf(p->grad->data[e]) > fabsf(p->grad->data[pick[0]]))
                pick[0] = e;
        for (int k = 1; k < 5; k++)
            pick[k] = (size_t)(((uint64_t)k * 2654435761u + (uint64_t)pi * 97u) % sz);
        for (int k = 0; k < 5; k++) {
            float *x = &p->value->data[pick[k]], x0 = *x;
            *x = x0 + h;
            double fp = loss_of(m, tb, NULL, NULL);
            *x = x0 - h;
            double fm = loss_of(m, tb, NULL, NULL);
            *x = x0;
            double fd = (fp - fm) / (2 * h), an = p->grad->data[pick[k]], tol = 5e-4 + 2e-2 * fabs(an);
            worst = fmax(worst, fabs(fd - an) / tol);
            if (fabs(fd - an) > tol)
                FAIL("%s[%zu]: gradient %.6g, finite difference %.6g", p->name, pick[k], an, fd);
            n++;
        }
    }
    printf("test_arch: finite differences: %d elements of %d tensors, worst err/tol %.3f\n", n,
           prefopt_model_param_count(m), worst);
}

/* the decode check: two rows of 10 and 7 tokens, prompts of 4 and 1 */
static void decode_check(prefopt_model *m, const prefopt_grid *g)
{
    enum { NR = 2, LEN = 10 };
    static const int32_t seq[NR][LEN] = {{3, 17, 5, 30, 8, 36, 2, 11, 40, 25}, {1, 9, 22, 14, 14, 33, 6, 0, 0, 0}};
    static const int lens[NR] = {10, 7}, prompt[NR] = {4, 1};
    const int V = prefopt_model_get_config(m)->vocab_size;
    prefopt_err err = {0};
    float *lc = malloc(sizeof(float) * NR * V), *lf = malloc(sizeof(float) * NR * V);
    if (prefopt_model_decode_begin(m, NR, LEN, &err))
        die(&err);
    int have[NR] = {0, 0};
    double worst = 0;
    for (int step = 0;; step++) {
        int32_t tok[NR * LEN] = {0}, n[NR];
        int width = 1, any = 0;
        for (int r = 0; r < NR; r++) {
            n[r] = step == 0 ? prompt[r] : have[r] < lens[r];
            width = n[r] > width ? n[r] : width;
        }
        for (int r = 0; r < NR; r++)
            for (int i = 0; i < n[r]; i++)
                tok[r * width + i] = seq[r][have[r] + i];
        for (int r = 0; r < NR; r++)
            any |= n[r] > 0;
        if (!any)
            break;
        if (prefopt_model_decode_step(m, tok, n, width, lc, &err))
            die(&err);
        for (int r = 0; r < NR; r++)
            have[r] += n[r];
        /* the same prefixes recomputed whole */
        test_batch tb;
        tb_init(&tb, NR, LEN);
        int32_t last[NR];
        for (int r = 0; r < NR; r++) {
            tb_seq(&tb, r, seq[r], 1, seq[r] + 1, have[r] - 1);
            last[r] = have[r] - 1;
        }
        prefopt_batch b = tb_view(&tb);
        if (prefopt_model_logits_at(m, &b, last, lf, &err))
            die(&err);
        for (int r = 0; r < NR; r++) {
            if (!n[r])
                continue;
            double mx = 0, d = 0;
            for (int v = 0; v < V; v++) {
                mx = fmax(mx, fabs(lf[r * V + v]));
                d = fmax(d, fabs(lf[r * V + v] - lc[r * V + v]));
            }
            worst = fmax(worst, d / fmax(mx, 1.0));
            if (d > 1e-4 * fmax(mx, 1.0))
                FAIL("decode: row %d after %d tokens: cached logits differ from recomputation by %.3g", r, have[r], d);
        }
    }
    if (g->world_rank == 0)
        printf("test_arch: decode with the KV cache equals recomputation (%d and %d tokens): worst %.2e\n", lens[0],
               lens[1], worst);
    free(lc);
    free(lf);
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    if (argc != 5) {
        fprintf(stderr, "usage: test_arch MODEL.h5 OUT.txt ROWS COLS\n");
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    prefopt_err err = {0};
    prefopt_grid g, serial;
    if (prefopt_grid_init(&g, MPI_COMM_WORLD, atoi(argv[3]), atoi(argv[4]), 1, &err) ||
        prefopt_grid_init(&serial, MPI_COMM_SELF, 1, 1, 1, &err))
        die(&err);
    prefopt_model_config cfg;
    if (prefopt_model_file_read_config(argv[1], &cfg, &err))
        die(&err);
    prefopt_model_options o = tm_options(1, 0);
    prefopt_model *m = prefopt_model_create(&cfg, &g, &o, &err), *s = prefopt_model_create(&cfg, &serial, &o, &err);
    if (!m || !s || prefopt_model_file_load(m, argv[1], &err))
        die(&err);
    const size_t N = tm_total_elems(m);
    float *full = malloc(sizeof(float) * N), *gs = malloc(sizeof(float) * N);
    tm_gather_all(m, 0, full);
    for (int i = 0, off = 0; i < prefopt_model_param_count(s); i++) { /* the same weights on 1x1 */
        prefopt_param *p = prefopt_model_param_at(s, i);
        prefopt_dmat_scatter(p->value, full + off);
        off += p->value->m * p->value->n;
    }

    /* 1. packed rows */
    test_batch tb;
    tb_standard(&tb);
    tm_stats st;
    prefopt_unit_stats us = tm_stats_view(&st);
    prefopt_batch b = tb_view(&tb);
    if (prefopt_model_forward(m, &b, &us, &err))
        die(&err);
    if (g.world_rank == 0) {
        FILE *f = fopen(argv[2], "w");
        fprintf(f, "batch %d %d %d\n", tb.nrows, tb.T, tb.nunits);
        const char *names[] = {"tokens", "seg", "unit"};
        for (int k = 0; k < 3; k++) {
            fprintf(f, "%s", names[k]);
            for (int t = 0; t < tb.nrows * tb.T; t++)
                fprintf(f, " %d", k == 0 ? tb.tokens[t] : k == 1 ? tb.seg[t] : tb.unit[t]);
            fputc('\n', f);
        }
        for (int u = 0; u < tb.nunits; u++)
            fprintf(f, "result %d %.12g %.12g %g %g %.12g %g\n", u, st.c[u], st.a[u], st.nc[u], st.na[u], st.ls[u],
                    st.hits[u]);
        fclose(f);
    }

    /* 2. gradients: grid vs 1x1, and 1x1 vs finite differences */
    grads(m, &tb);
    grads(s, &tb);
    tm_gather_all(m, 1, full);
    tm_gather_all(s, 1, gs);
    double worst = 0;
    for (int i = 0, off = 0; i < prefopt_model_param_count(s); i++) {
        prefopt_param *p = prefopt_model_param_at(s, i);
        int n = p->value->m * p->value->n;
        double scale = 1e-12, d = 0;
        for (int e = 0; e < n; e++) {
            scale = fmax(scale, fabs(gs[off + e]));
            d = fmax(d, fabs(full[off + e] - gs[off + e]));
        }
        worst = fmax(worst, d / scale);
        if (d > 1e-4 * scale)
            FAIL("%s: gradient on %sx%s differs from 1x1 by %.3g (largest %.3g)", p->name, argv[3], argv[4], d, scale);
        off += n;
    }
    if (g.world_rank == 0 && g.world_size > 1)
        printf("test_arch: gradients on %sx%s vs 1x1: worst %.2e relative\n", argv[3], argv[4], worst);
    if (g.world_size == 1)
        finite_differences(s, &tb);

    /* 3. generation */
    decode_check(m, &g);

    int total = 0;
    MPI_Allreduce(&failures, &total, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    free(full);
    free(gs);
    prefopt_model_free(m);
    prefopt_model_free(s);
    prefopt_grid_free(&g);
    prefopt_grid_free(&serial);
    MPI_Finalize();
    return total ? 1 : 0;
}
