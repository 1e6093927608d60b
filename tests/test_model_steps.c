/* (a) Determinism: 20 steps of forward, backward and plain SGD on the flat buffers on a 2x1 grid, twice from the
 * same seed: the losses must be bit-identical (and go down, or the steps did nothing).
 * (b) Packed pairs: the log-probs of chosen and rejected from one packed row [prompt | chosen | rejected] equal
 * those of two separate rows [prompt | chosen] and [prompt | rejected] (1e-5 relative), on a 1x2 grid.
 * (c) prefopt_model_logits_at: on 1xP and Px1 grids, the gathered last-position logits of each row give the same
 * log-prob, mean logit and argmax as the vocab-parallel head of prefopt_model_forward.
 * (d) KV-cache decoding: a prompt step with rows of different lengths then single-token steps give the logits of
 * prefopt_model_logits_at on the whole sequences so far (1e-4 of the largest logit). */
#include "test_model_util.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

static int failures;
#define FAIL(...)                                                                                            \
    do {                                                                                                     \
        failures++;                                                                                          \
        fprintf(stderr, __VA_ARGS__);                                                                        \
        fputc('\n', stderr);                                                                                 \
    } while (0)

static prefopt_model *make(prefopt_arch arch, const prefopt_grid *g, int grads)
{
    prefopt_model_config cfg;
    tm_config(&cfg, arch);
    prefopt_model_options opt = tm_options(grads, 0);
    prefopt_err err = {0};
    prefopt_model *m = prefopt_model_create(&cfg, g, &opt, &err);
    if (!m) {
        fprintf(stderr, "create: %s\n", err.msg);
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    prefopt_model_init_random(m, 4242);
    return m;
}

static void train(double *losses, int steps, prefopt_arch arch, const prefopt_grid *g)
{
    prefopt_model *m = make(arch, g, 1);
    test_batch tb;
    tb_standard(&tb);
    prefopt_batch b = tb_view(&tb);
    size_t n;
    float *w = prefopt_model_param_data(m, &n), *gr = prefopt_model_grad_data(m, NULL);
    for (int s = 0; s < steps; s++) {
        tm_stats st;
        prefopt_unit_stats us = tm_stats_view(&st);
        prefopt_err err = {0};
        prefopt_model_forward(m, &b, &us, &err);
        float dc[64], da[64];
        losses[s] = tm_loss(&tb, &st, dc, da);
        prefopt_model_zero_grad(m);
        prefopt_model_backward(m, dc, da);
        for (size_t e = 0; e < n; e++)
            w[e] -= 0.05f * gr[e];
    }
    prefopt_model_free(m);
}

static void packed_vs_separate(prefopt_arch arch, const prefopt_grid *g)
{
    static const int p[] = {3, 17, 5, 30, 2}, c[] = {8, 36, 2, 9}, r[] = {11, 0, 25};
    test_batch packed, sep;
    tb_init(&packed, 1, 14);
    tb_pair(&packed, 0, p, 5, c, 4, r, 3);
    tb_init(&sep, 2, 10);
    int uc = tb_seq(&sep, 0, p, 5, c, 4), ur = tb_seq(&sep, 1, p, 5, r, 3);
    prefopt_model *m = make(arch, g, 0);
    tm_stats a, s;
    prefopt_unit_stats ua = tm_stats_view(&a), us = tm_stats_view(&s);
    prefopt_batch b1 = tb_view(&packed), b2 = tb_view(&sep);
    prefopt_err err = {0};
    if (prefopt_model_forward(m, &b1, &ua, &err) || prefopt_model_forward(m, &b2, &us, &err))
        FAIL("forward: %s", err.msg);
    const char *name = arch == PREFOPT_ARCH_GPT2 ? "gpt2" : "llama";
    if (fabs(a.c[0] - s.c[uc]) > 1e-5 * fabs(s.c[uc]) || fabs(a.c[1] - s.c[ur]) > 1e-5 * fabs(s.c[ur]) ||
        fabs(a.a[0] - s.a[uc]) > 1e-5 * fabs(s.a[uc]) || a.nc[0] != 4 || a.nc[1] != 3 || a.na[0] != 8 ||
        a.hits[0] != s.hits[uc] || a.hits[1] != s.hits[ur] || fabs(a.ls[1] - s.ls[ur]) > 1e-5 * fabs(s.ls[ur]))
        FAIL("%s packed pair: chosen %.9g vs %.9g, rejected %.9g vs %.9g, chosen+prompt %.9g vs %.9g", name, a.c[0],
             s.c[uc], a.c[1], s.c[ur], a.a[0], s.a[uc]);
    int rank;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    if (rank == 0)
        printf("test_model_steps: %s packed chosen %.7f rejected %.7f, separate %.7f %.7f\n", name, a.c[0], a.c[1],
               s.c[uc], s.c[ur]);
    prefopt_model_free(m);
}

static void logits_at_check(prefopt_arch arch, const prefopt_grid *g)
{
    /* rows [a, b, c] of different lengths: unit r holds exactly log p(last token | prefix) */
    static const int pr[3][3] = {{3, 17, 5}, {30, 2, 0}, {8, 36, 11}};
    static const int len[3] = {3, 2, 3};
    test_batch tb;
    tb_init(&tb, 3, 5);
    int32_t last[3];
    for (int r = 0; r < 3; r++) {
        tb_seq(&tb, r, pr[r], len[r] - 1, &pr[r][len[r] - 1], 1);
        last[r] = len[r] - 2;
    }
    prefopt_model *m = make(arch, g, 1);
    tm_stats s;
    prefopt_unit_stats us = tm_stats_view(&s);
    prefopt_batch b = tb_view(&tb);
    prefopt_err err = {0};
    const int V = 37;
    float lg[3 * 37];
    if (prefopt_model_forward(m, &b, &us, &err) || prefopt_model_logits_at(m, &b, last, lg, &err))
        FAIL("logits_at: %s", err.msg);
    for (int r = 0; r < 3; r++) {
        double mx = -1e30, sum = 0, mean = 0;
        int am = 0;
        for (int v = 0; v < V; v++)
            if (lg[r * V + v] > mx)
                mx = lg[r * V + v], am = v;
        for (int v = 0; v < V; v++)
            sum += exp(lg[r * V + v] - mx), mean += lg[r * V + v] / V;
        double lp = lg[r * V + pr[r][len[r] - 1]] - mx - log(sum);
        if (fabs(lp - s.c[r]) > 1e-5 * fabs(s.c[r]) || fabs(mean - s.ls[r]) > 1e-5 * (fabs(s.ls[r]) + 1e-3) ||
            (am == pr[r][len[r] - 1]) != (s.hits[r] == 1))
            FAIL("logits_at grid %dx%d row %d: logp %.8g vs forward %.8g, mean logit %.8g vs %.8g", g->nprow,
                 g->npcol, r, lp, s.c[r], mean, s.ls[r]);
    }
    int32_t badlast[3] = {0, 4, 0};
    prefopt_err e2 = {0};
    if (prefopt_model_logits_at(m, &b, badlast, lg, &e2) == 0)
        FAIL("logits_at accepted a padding position");
    prefopt_model_free(m);
}

static void decode_check(prefopt_arch arch, const prefopt_grid *g)
{
    enum { R = 3, W = 5, STEPS = 4, V = 37 };
    static const int prompt[R][W] = {{3, 17, 5, 0, 0}, {30, 2, 9, 14, 21}, {8, 36, 0, 0, 0}};
    static const int plen[R] = {3, 5, 2};
    static const int gen[STEPS][R] = {{4, 11, 7}, {19, 1, 33}, {6, 6, 25}, {12, 28, 2}};
    prefopt_model *m = make(arch, g, 0);
    prefopt_err err = {0};
    float lg[R * V], ref[R * V];
    int32_t toks[R * W], n[R];
    for (int r = 0; r < R; r++) {
        n[r] = plen[r];
        for (int i = 0; i < W; i++)
            toks[r * W + i] = i < plen[r] ? prompt[r][i] : 999; /* padding: never read */
    }
    if (prefopt_model_decode_begin(m, R, 16, &err) || prefopt_model_decode_step(m, toks, n, W, lg, &err))
        FAIL("decode: %s", err.msg);
    for (int step = 0; step <= STEPS; step++) {
        /* reference: the whole sequences so far through the uncached forward */
        test_batch tb;
        tb_init(&tb, R, W + STEPS);
        int32_t last[R];
        for (int r = 0; r < R; r++) {
            int seq[16], len = 0;
            for (int i = 0; i < plen[r]; i++)
                seq[len++] = prompt[r][i];
            for (int k = 0; k < step; k++)
                seq[len++] = gen[k][r];
            tb_seq(&tb, r, seq, len, NULL, 0);
            last[r] = len - 1;
        }
        prefopt_batch b = tb_view(&tb);
        if (prefopt_model_logits_at(m, &b, last, ref, &err))
            FAIL("decode reference: %s", err.msg);
        double mx = 0, worst = 0;
        for (int e = 0; e < R * V; e++)
            mx = fmax(mx, fabs(ref[e]));
        for (int e = 0; e < R * V; e++)
            worst = fmax(worst, fabs(lg[e] - ref[e]));
        if (!(worst <= 1e-4 * mx))
            FAIL("decode grid %dx%d step %d: logits differ from the uncached forward by %.3g (max %.3g)", g->nprow,
                 g->npcol, step, worst, mx);
        if (step == STEPS)
            break;
        int32_t one[R], ones[R] = {1, 1, 1};
        for (int r = 0; r < R; r++)
            one[r] = gen[step][r];
        if (prefopt_model_decode_step(m, one, ones, 1, lg, &err))
            FAIL("decode step: %s", err.msg);
    }
    int32_t one[R] = {1, 1, 1}, ones[R] = {1, 1, 1};
    prefopt_model_decode_begin(m, R, 2, &err);
    prefopt_model_decode_step(m, one, ones, 1, lg, &err);
    prefopt_model_decode_step(m, one, ones, 1, lg, &err);
    prefopt_err e2 = {0};
    if (prefopt_model_decode_step(m, one, ones, 1, lg, &e2) == 0)
        FAIL("decode: a full cache was not refused");
    prefopt_model_free(m);
}

/* the frozen reference (no gradients) has the policy's layout: copied weights give bit-identical log-probs, and
 * mixing is (1-a) dst + a src elementwise */
static void reference_check(prefopt_arch arch, const prefopt_grid *g)
{
    prefopt_model *pol = make(arch, g, 1), *ref = make(arch, g, 0);
    size_t np, nr;
    float *wp = prefopt_model_param_data(pol, &np), *wr = prefopt_model_param_data(ref, &nr);
    for (size_t e = 0; e < np; e++)
        wp[e] += 0.01f * (float)cos(0.3 * e);
    if (np != nr || prefopt_model_grad_data(ref, NULL) != NULL)
        FAIL("reference layout: %zu vs %zu floats, grads %p", np, nr, (void *)prefopt_model_grad_data(ref, NULL));
    prefopt_model_copy_weights(ref, pol);
    test_batch tb;
    tb_standard(&tb);
    prefopt_batch b = tb_view(&tb);
    tm_stats a, c;
    prefopt_unit_stats ua = tm_stats_view(&a), uc = tm_stats_view(&c);
    prefopt_err err = {0};
    prefopt_model_forward(pol, &b, &ua, &err);
    prefopt_model_forward(ref, &b, &uc, &err);
    if (memcmp(a.c, c.c, sizeof(double) * tb.nunits) || memcmp(a.a, c.a, sizeof(double) * tb.nunits))
        FAIL("reference with copied weights gives different log-probs");
    float before = wr[3], src = wp[3] * 2.0f;
    wp[3] = src;
    prefopt_model_mix_weights(ref, pol, 0.25f);
    if (fabsf(wr[3] - (0.75f * before + 0.25f * src)) > 1e-7f)
        FAIL("mix_weights: %g, want %g", wr[3], 0.75f * before + 0.25f * src);
    prefopt_model_free(pol);
    prefopt_model_free(ref);
}

/* bad batches are refused with a message naming row and position; an empty batch is fine */
static void bad_input_check(prefopt_arch arch, const prefopt_grid *g)
{
    prefopt_model *m = make(arch, g, 1);
    test_batch tb;
    tm_stats s;
    prefopt_unit_stats us = tm_stats_view(&s);
    struct {
        int row, i, what, value;
        const char *expect;
    } cases[] = {{1, 4, 0, 37, "token id 37"}, {0, 2, 1, 5000, "position id 5000"}, {2, 3, 2, 7, "parent 7"},
                 {0, 5, 3, 9, "unit 9"}, {1, 11, 2, 3, "padding has a parent"}};
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        tb_standard(&tb);
        int t = cases[c].row * tb.T + cases[c].i;
        int32_t *field[] = {tb.tokens, tb.pos, tb.parent, tb.unit};
        field[cases[c].what][t] = cases[c].value;
        prefopt_batch b = tb_view(&tb);
        prefopt_err err = {0};
        char want[64];
        snprintf(want, sizeof want, "row %d position %d", cases[c].row, cases[c].i);
        if (prefopt_model_forward(m, &b, &us, &err) == 0 || !strstr(err.msg, cases[c].expect) || !strstr(err.msg, want))
            FAIL("bad batch case %zu not refused properly: '%s'", c, err.msg);
    }
    tb_init(&tb, 0, 8);
    prefopt_batch b = tb_view(&tb);
    prefopt_err err = {0};
    float d[1] = {0};
    if (prefopt_model_forward(m, &b, &us, &err))
        FAIL("empty batch refused: %s", err.msg);
    else
        prefopt_model_backward(m, d, d);
    prefopt_model_free(m);
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    int size, rank;
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    prefopt_err err = {0};
    for (int arch = 0; arch < 2; arch++) {
        prefopt_grid g;
        if (prefopt_grid_init(&g, MPI_COMM_WORLD, size, 1, 1, &err)) {
            fprintf(stderr, "%s\n", err.msg);
            MPI_Abort(MPI_COMM_WORLD, 1);
        }
        double l1[20], l2[20];
        train(l1, 20, (prefopt_arch)arch, &g);
        train(l2, 20, (prefopt_arch)arch, &g);
        if (memcmp(l1, l2, sizeof l1))
            FAIL("arch %d: two runs from the same seed differ", arch);
        if (!(l1[19] < l1[0] - 0.1))
            FAIL("arch %d: loss did not go down (%.6f -> %.6f)", arch, l1[0], l1[19]);
        if (rank == 0)
            printf("test_model_steps: %s %dx1 20 steps, loss %.7f -> %.7f, two runs bit-identical: %s\n",
                   arch ? "llama" : "gpt2", size, l1[0], l1[19], memcmp(l1, l2, sizeof l1) ? "no" : "yes");
        prefopt_grid_free(&g);
        prefopt_grid_init(&g, MPI_COMM_WORLD, 1, size, 1, &err);
        packed_vs_separate((prefopt_arch)arch, &g);
        logits_at_check((prefopt_arch)arch, &g);
        bad_input_check((prefopt_arch)arch, &g);
        reference_check((prefopt_arch)arch, &g);
        decode_check((prefopt_arch)arch, &g);
        prefopt_grid_free(&g);
        prefopt_grid_init(&g, MPI_COMM_WORLD, size, 1, 1, &err);
        logits_at_check((prefopt_arch)arch, &g);
        decode_check((prefopt_arch)arch, &g);
        prefopt_grid_free(&g);
    }
    int total = 0;
    MPI_Allreduce(&failures, &total, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    if (rank == 0)
        printf("test_model_steps: %s\n", total ? "FAILED" : "all checks passed");
    MPI_Finalize();
    return total ? 1 : 0;
}
