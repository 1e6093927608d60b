/* Optimizer: AdamW against a double-precision transcription of torch.optim.AdamW, decay only where the ranges
 * say, determinism across thread counts, HF schedules by hand, gradient norm and clipping by hand. */
#include "prefopt/optim.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

static int failures;
#define CHECK(cond, ...)                                                                                      \
    do {                                                                                                      \
        if (!(cond)) {                                                                                        \
            failures++;                                                                                       \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                                              \
            fprintf(stderr, __VA_ARGS__);                                                                     \
            fprintf(stderr, "\n");                                                                            \
        }                                                                                                     \
    } while (0)

static int close_to(double a, double b, double tol)
{
    return fabs(a - b) <= tol * (1 + fabs(b));
}

static double frand(unsigned *s)
{
    *s = *s * 1103515245u + 12345u;
    return ((*s >> 8) & 0xffffff) / (double)0x1000000 * 2 - 1;
}

#define N 20000

/* torch.optim.AdamW (_single_tensor_adamw), in double. */
static void ref_adamw(double *p, double *m, double *v, const double *g, const int *decay, int n, long t, double lr,
                      double b1, double b2, double eps, double wd)
{
    for (int i = 0; i < n; i++) {
        if (decay[i])
            p[i] *= 1 - lr * wd;
        m[i] = b1 * m[i] + (1 - b1) * g[i];
        v[i] = b2 * v[i] + (1 - b2) * g[i] * g[i];
        double bc1 = 1 - pow(b1, (double)t), bc2 = 1 - pow(b2, (double)t);
        double denom = sqrt(v[i]) / sqrt(bc2) + eps;
        p[i] -= lr / bc1 * m[i] / denom;
    }
}

static void test_adamw_vs_reference(void)
{
    static float p[N], g[N];
    static double pd[N], md[N], vd[N], gd[N];
    static int dec[N];
    unsigned seed = 42;
    for (int i = 0; i < N; i++) {
        p[i] = (float)(0.1 * frand(&seed));
        pd[i] = p[i];
    }
    /* decay on [100, 5100) and [9000, 20000); [5100, 9000) an explicit no-decay range; [0, 100) uncovered */
    prefopt_param_range r[3] = {{9000, 11000, 1, 1}, {100, 5000, 1, 1}, {5100, 3900, 0, 1}};
    for (int i = 0; i < N; i++)
        dec[i] = (i >= 100 && i < 5100) || i >= 9000;
    prefopt_adamw_config cfg = {0.9, 0.95, 1e-8, 0.1};
    prefopt_adamw opt;
    prefopt_err err = {0};
    CHECK(prefopt_adamw_init(&opt, &cfg, N, r, 3, &err) == 0, "init: %s", err.msg);
    const double lrs[6] = {1e-3, 3e-3, 2e-3, 5e-4, 1e-3, 0};
    const double scales[6] = {1, 0.5, 1, 0.25, 1, 1};
    double maxerr = 0;
    for (int s = 0; s < 6; s++) {
        for (int i = 0; i < N; i++) {
            /* some tiny, some zero, some large gradients */
            double x = frand(&seed);
            g[i] = (float)(i % 97 == 0 ? 0.0 : i % 13 == 0 ? 1e-6 * x : x * (1 + (i % 5)));
            gd[i] = (double)g[i] * (double)(float)scales[s];
        }
        prefopt_adamw_step(&opt, p, g, lrs[s], scales[s]);
        ref_adamw(pd, md, vd, gd, dec, N, s + 1, lrs[s], 0.9, 0.95, 1e-8, 0.1);
        for (int i = 0; i < N; i++) {
            /* fp32 arithmetic against double: a few ulps of the parameter plus a few ulps of the update */
            double e = fabs(p[i] - pd[i]) / (fabs(pd[i]) * 4e-7 + lrs[0] * 1e-5 + 1e-12);
            if (e > maxerr)
                maxerr = e;
            CHECK(close_to(opt.m[i], md[i], 1e-5) && close_to(opt.v[i], vd[i], 1e-5), "step %d element %d: m %g/%g v %g/%g",
                  s + 1, i, opt.m[i], md[i], opt.v[i], vd[i]);
            if (failures > 20)
                return;
        }
    }
    if (getenv("PREFOPT_TEST_VERBOSE"))
        printf("AdamW max error %g tolerance units\n", maxerr);
    CHECK(maxerr <= 1.0, "AdamW parameters differ from the double reference by %g tolerance units", maxerr);
    CHECK(opt.step == 6, "step counter %ld", opt.step);
    prefopt_adamw_free(&opt);
}

/* The first step by hand: m_hat = g, v_hat = g^2, so p1 = p0 (1 - lr wd) - lr g / (|g| + eps); and with zero
 * gradients only the decay moves the parameters, and only where the ranges say. */
static void test_adamw_by_hand(void)
{
    float p[6] = {1, -2, 0.5f, 3, -1, 4}, g[6] = {0.5f, -0.25f, 2, 0, 0, 0};
    prefopt_param_range r[2] = {{0, 3, 1, 1}, {3, 3, 0, 1}};
    prefopt_adamw_config cfg = {0.9, 0.999, 1e-8, 0.01};
    prefopt_adamw opt;
    prefopt_err err = {0};
    prefopt_adamw_init(&opt, &cfg, 6, r, 2, &err);
    float p0[6];
    memcpy(p0, p, sizeof p);
    prefopt_adamw_step(&opt, p, g, 0.1, 1.0);
    for (int i = 0; i < 6; i++) {
        double want = p0[i] * (i < 3 ? 1 - 0.1 * 0.01 : 1) - 0.1 * g[i] / (fabs(g[i]) + 1e-8);
        CHECK(close_to(p[i], want, 1e-6), "first step element %d: %.9g, by hand %.9g", i, p[i], want);
    }
    prefopt_adamw_free(&opt);
    /* zero gradients from a fresh state: decay only */
    prefopt_adamw_init(&opt, &cfg, 6, r, 2, &err);
    float z[6] = {0};
    memcpy(p, p0, sizeof p);
    prefopt_adamw_step(&opt, p, z, 0.1, 1.0);
    for (int i = 0; i < 6; i++) {
        float want = i < 3 ? p0[i] * (float)(1 - 0.1 * 0.01) : p0[i];
        CHECK(p[i] == want, "zero gradient element %d: %.9g, want %.9g", i, p[i], want);
    }
    prefopt_adamw_free(&opt);
}

static void test_adamw_determinism(void)
{
    static float p1[N], p2[N], g[N];
    unsigned seed = 7;
    for (int i = 0; i < N; i++)
        p1[i] = p2[i] = (float)frand(&seed), g[i] = (float)frand(&seed);
    prefopt_param_range r[1] = {{0, N, 1, 1}};
    prefopt_adamw_config cfg = {0.9, 0.999, 1e-8, 0.05};
    prefopt_adamw a, b;
    prefopt_err err = {0};
    prefopt_adamw_init(&a, &cfg, N, r, 1, &err);
    prefopt_adamw_init(&b, &cfg, N, r, 1, &err);
    double s1 = 0, s2 = 0;
    for (int s = 0; s < 3; s++) {
#ifdef _OPENMP
        omp_set_num_threads(1);
#endif
        prefopt_adamw_step(&a, p1, g, 1e-3, 0.7);
        s1 = prefopt_sumsq(p1, r, 1);
#ifdef _OPENMP
        omp_set_num_threads(3);
#endif
        prefopt_adamw_step(&b, p2, g, 1e-3, 0.7);
        s2 = prefopt_sumsq(p2, r, 1);
    }
    CHECK(memcmp(p1, p2, sizeof p1) == 0 && memcmp(a.m, b.m, N * sizeof(float)) == 0 &&
              memcmp(a.v, b.v, N * sizeof(float)) == 0, "AdamW is not bit-for-bit reproducible across thread counts");
    CHECK(s1 == s2, "sum of squares differs across thread counts: %.17g vs %.17g", s1, s2);
    prefopt_adamw_free(&a);
    prefopt_adamw_free(&b);
}

static void test_adamw_errors(void)
{
    prefopt_adamw opt;
    prefopt_err err = {0};
    prefopt_adamw_config cfg = {0.9, 0.999, 1e-8, 0};
    prefopt_param_range over[2] = {{0, 10, 1, 1}, {5, 10, 0, 1}};
    CHECK(prefopt_adamw_init(&opt, &cfg, 20, over, 2, &err) != 0 && strstr(err.msg, "overlap"), "overlap: %s", err.msg);
    prefopt_param_range out[1] = {{15, 10, 1, 1}};
    err.set = 0;
    CHECK(prefopt_adamw_init(&opt, &cfg, 20, out, 1, &err) != 0 && strstr(err.msg, "outside"), "outside: %s", err.msg);
    prefopt_adamw_config bad = {1.0, 0.999, 1e-8, 0};
    err.set = 0;
    CHECK(prefopt_adamw_init(&opt, &bad, 20, NULL, 0, &err) != 0 && strstr(err.msg, "betas"), "beta1 = 1: %s", err.msg);
}

static void test_schedules(void)
{
    prefopt_schedule s;
    prefopt_err err = {0};
    CHECK(prefopt_schedule_init(&s, "linear", 2.0, 10, 100, 0, &err) == 0, "linear: %s", err.msg);
    const long st[] = {0, 5, 10, 55, 99, 100, 120};
    const double lin[] = {0, 1.0, 2.0, 1.0, 2.0 / 90, 0, 0};
    for (int i = 0; i < 7; i++)
        CHECK(close_to(prefopt_schedule_lr(&s, st[i]), lin[i], 1e-15), "linear step %ld: %.17g, want %.17g", st[i],
              prefopt_schedule_lr(&s, st[i]), lin[i]);
    CHECK(prefopt_schedule_init(&s, "cosine", 2.0, 10, 100, 0, &err) == 0, "cosine: %s", err.msg);
    /* past the end HF keeps following the cosine (progress > 1): step 120 is 1 + cos(pi 110/90), not 0 */
    const double cosv[] = {0, 1.0, 2.0, 1.0, 1.0 + cos(M_PI * 89 / 90), 0, 1.0 + cos(M_PI * 110 / 90)};
    for (int i = 0; i < 7; i++)
        CHECK(fabs(prefopt_schedule_lr(&s, st[i]) - cosv[i]) < 1e-15, "cosine step %ld: %.17g, want %.17g", st[i],
              prefopt_schedule_lr(&s, st[i]), cosv[i]);
    /* cosine with a floor at 10%: factor 0.1 + 0.9 * 0.5 (1 + cos(pi progress)); beyond the end HF's cos keeps
     * going (progress > 1), so step 190 is back to 1 -- we only check inside the run */
    CHECK(prefopt_schedule_init(&s, "cosine_with_min_lr", 2.0, 10, 100, 0.1, &err) == 0, "cosine min: %s", err.msg);
    CHECK(close_to(prefopt_schedule_lr(&s, 55), 2.0 * 0.55, 1e-15) && close_to(prefopt_schedule_lr(&s, 100), 0.2, 1e-15) &&
              close_to(prefopt_schedule_lr(&s, 64), 2.0 * (0.1 + 0.9 * 0.5 * (1 + cos(M_PI * 54.0 / 90))), 1e-14),
          "cosine with min_lr_ratio 0.1");
    CHECK(prefopt_schedule_init(&s, "constant", 3.0, 4, 100, 0, &err) == 0, "constant: %s", err.msg);
    CHECK(prefopt_schedule_lr(&s, 0) == 0 && prefopt_schedule_lr(&s, 1) == 0.75 && prefopt_schedule_lr(&s, 4) == 3.0 &&
              prefopt_schedule_lr(&s, 1000) == 3.0, "constant with warmup");
    /* no warmup: the first step has the full rate (HF: max(1, W) and the warmup branch not taken) */
    prefopt_schedule_init(&s, "linear", 1.0, 0, 50, 0, &err);
    CHECK(prefopt_schedule_lr(&s, 0) == 1.0 && close_to(prefopt_schedule_lr(&s, 25), 0.5, 1e-15), "linear without warmup");
    CHECK(prefopt_warmup_steps(100, 0.03) == 3 && prefopt_warmup_steps(10, 0.25) == 3 && prefopt_warmup_steps(10, 0) == 0,
          "warmup ratio -> steps (ceil)");
    err.set = 0;
    CHECK(prefopt_schedule_init(&s, "poly", 1.0, 0, 10, 0, &err) != 0 && strstr(err.msg, "poly"), "unknown schedule");
    err.set = 0;
    CHECK(prefopt_schedule_init(&s, "linear", 1.0, 0, 10, 0.1, &err) != 0 && strstr(err.msg, "cosine"),
          "min-lr-ratio on linear accepted");
}

static void test_norm_and_clip(void)
{
    float g[10] = {3, 4, 1, 1, 1, 1, 2, 0, 0, 0};
    /* [0,2) counted, [2,6) a replicated copy another rank counts, [6,10) counted */
    prefopt_param_range r[3] = {{0, 2, 1, 1}, {2, 4, 0, 0}, {6, 4, 1, 1}};
    double ss = prefopt_sumsq(g, r, 3);
    CHECK(ss == 9 + 16 + 4, "sum of squares %.17g, want 29", ss);
    CHECK(prefopt_global_norm(ss, MPI_COMM_NULL) == sqrt(29.0), "norm on one rank");
    static float big[3 * 8192 + 17];
    prefopt_param_range rb[1] = {{0, sizeof big / sizeof big[0], 1, 1}};
    for (size_t i = 0; i < sizeof big / sizeof big[0]; i++)
        big[i] = (i % 2) ? 0.5f : -0.25f;
    double want = 0;
    for (size_t i = 0; i < sizeof big / sizeof big[0]; i++)
        want += (i % 2) ? 0.25 : 0.0625;
    CHECK(prefopt_sumsq(big, rb, 1) == want, "blocked sum of squares");
    /* squares that are not exact in fp32: the products must be formed in double (the summation order differs
     * from this loop's, hence 1e-11 and not exact equality) */
    for (size_t i = 0; i < sizeof big / sizeof big[0]; i++)
        big[i] = 1.0f + 1e-3f * (float)(i % 7);
    want = 0;
    for (size_t i = 0; i < sizeof big / sizeof big[0]; i++)
        want += (double)big[i] * big[i];
    CHECK(close_to(prefopt_sumsq(big, rb, 1), want, 1e-11), "sum of squares %.17g, double %.17g",
          prefopt_sumsq(big, rb, 1), want);
    CHECK(close_to(prefopt_clip_coef(4.0, 1.0), 1.0 / (4.0 + 1e-6), 1e-15), "clip coef 1/(4 + 1e-6)");
    CHECK(prefopt_clip_coef(0.5, 1.0) == 1.0 && prefopt_clip_coef(100, 0) == 1.0, "no clipping below max / when off");
    /* clipping through grad_scale equals scaling the gradient first */
    float p1[2] = {1, 1}, p2[2] = {1, 1}, ga[2] = {3, 4}, gb[2];
    double c = prefopt_clip_coef(5.0, 1.0);
    gb[0] = (float)(3 * c), gb[1] = (float)(4 * c);
    prefopt_adamw_config cfg = {0.9, 0.999, 1e-8, 0};
    prefopt_adamw a, b;
    prefopt_err err = {0};
    prefopt_adamw_init(&a, &cfg, 2, NULL, 0, &err);
    prefopt_adamw_init(&b, &cfg, 2, NULL, 0, &err);
    for (int s = 0; s < 3; s++) {
        prefopt_adamw_step(&a, p1, ga, 0.01, c);
        prefopt_adamw_step(&b, p2, gb, 0.01, 1.0);
    }
    CHECK(close_to(a.v[0], b.v[0], 1e-6) && close_to(p1[1], p2[1], 1e-7), "grad_scale != pre-scaled gradient");
    prefopt_adamw_free(&a);
    prefopt_adamw_free(&b);
}

static void test_options(void)
{
    prefopt_optim_params p;
    prefopt_opt t[16];
    int n = prefopt_optim_options(t, 16, &p);
    int seen = 0;
    for (int i = 0; i < n; i++) {
        seen |= !strcmp(t[i].name, "adam-beta2") && !strcmp(t[i].def, "0.999");
        seen |= (!strcmp(t[i].name, "max-grad-norm") && !strcmp(t[i].def, "1.0")) << 1;
    }
    CHECK(n == 10 && seen == 3, "optimizer option table: %d entries", n);
    prefopt_optim_params_default(&p);
    CHECK(p.adam_beta1 == 0.9 && p.adam_eps == 1e-8 && !strcmp(p.lr_scheduler, "linear"), "optimizer defaults");
}

/* The distributed optimizer's shard: two "replicas" each own alternate segments; their updates together are the
 * full optimizer's, bit for bit, and each touches only its own segments. The shard's sum of squares is the full
 * one restricted to the in_norm ranges inside the shard. */
static void test_adamw_shard(void)
{
    enum { M = 5000 };
    float *p0 = malloc(sizeof(float) * M), *g = malloc(sizeof(float) * M), *pf = malloc(sizeof(float) * M);
    float *ps = malloc(sizeof(float) * M);
    unsigned seed = 99;
    for (int i = 0; i < M; i++) {
        p0[i] = (float)frand(&seed);
        g[i] = (float)frand(&seed) * 0.1f;
    }
    const prefopt_param_range r[] = {{0, 1200, 1, 1}, {1200, 900, 0, 1}, {2100, 2900, 1, 0}};
    prefopt_adamw_config c = {0.9, 0.999, 1e-8, 0.1};
    prefopt_adamw full, a, b;
    prefopt_err err = {0};
    CHECK(!prefopt_adamw_init(&full, &c, M, r, 3, &err) && !prefopt_adamw_init(&a, &c, M, r, 3, &err) &&
              !prefopt_adamw_init(&b, &c, M, r, 3, &err),
          "init: %s", err.msg);
    /* replica 0: [0, 700) [1500, 3000); replica 1: [700, 1500) [3000, 5000) */
    const size_t ao[] = {0, 1500}, ac[] = {700, 1500}, bo[] = {700, 3000}, bc[] = {800, 2000};
    prefopt_adamw_set_shard(&a, ao, ac, 2);
    prefopt_adamw_set_shard(&b, bo, bc, 2);
    CHECK(a.nmom == 2200 && b.nmom == 2800, "shard moments %zu %zu", a.nmom, b.nmom);
    memcpy(pf, p0, sizeof(float) * M);
    memcpy(ps, p0, sizeof(float) * M);
    float *pa = malloc(sizeof(float) * M), *pb = malloc(sizeof(float) * M);
    memcpy(pa, p0, sizeof(float) * M);
    memcpy(pb, p0, sizeof(float) * M);
    for (int step = 0; step < 3; step++) {
        prefopt_adamw_step(&full, pf, g, 1e-2, 0.7);
        prefopt_adamw_step(&a, pa, g, 1e-2, 0.7);
        prefopt_adamw_step(&b, pb, g, 1e-2, 0.7);
    }
    int same = 1, untouched = 1;
    for (int i = 0; i < M; i++) {
        int in_a = i < 700 || (i >= 1500 && i < 3000);
        float mine = in_a ? pa[i] : pb[i], other = in_a ? pb[i] : pa[i];
        same &= mine == pf[i];
        untouched &= other == p0[i];
    }
    CHECK(same, "the two shards' updates == the full update, bit for bit");
    CHECK(untouched, "a shard's step leaves the other shard's weights alone");
    /* first moments of replica 1's second segment ([3000, 5000)) are the full ones at the same elements */
    CHECK(!memcmp(b.m + 800, full.m + 3000, sizeof(float) * 2000), "shard moments laid out segment after segment");
    double sa = prefopt_adamw_shard_sumsq(&a, g), sb = prefopt_adamw_shard_sumsq(&b, g), sf = 0;
    for (int i = 0; i < 2100; i++)
        sf += (double)g[i] * g[i];
    CHECK(close_to(sa + sb, sf, 1e-12), "shard sums of squares %.12g + %.12g vs %.12g (in_norm ranges only)", sa, sb,
          sf);
    prefopt_adamw_free(&full);
    prefopt_adamw_free(&a);
    prefopt_adamw_free(&b);
    free(p0), free(g), free(pf), free(ps), free(pa), free(pb);
}

int main(void)
{
    test_adamw_vs_reference();
    test_adamw_by_hand();
    test_adamw_determinism();
    test_adamw_errors();
    test_adamw_shard();
    test_schedules();
    test_norm_and_clip();
    test_options();
    if (failures) {
        fprintf(stderr, "%d check(s) failed\n", failures);
        return 1;
    }
    printf("optim: all checks passed\n");
    return 0;
}
