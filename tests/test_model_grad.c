/* Finite-difference check of every parameter tensor's gradient, both architectures, on a tiny model and a batch
 * with padding, two packed DPO pairs and an SFT row, under a loss that mixes DPO and SFT terms (and a prompt-
 * inclusive term, so both d_completion and d_all are exercised). Serial 1x1 grid.
 *
 * The engine is fp32. The loss (~5) carries rounding noise of ~1e-6 absolute, so a central difference with step
 * h has noise ~1e-6/h plus truncation ~h^2 |f'''|; h = 4e-3 keeps both near 3e-4. The tolerance is
 * 5e-4 absolute + 2% relative: a wrong gradient (missing term, wrong sign, wrong index) is off by O(100%). */
#include "test_model_util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

static int failures;

static double eval(prefopt_model *m, const test_batch *tb)
{
    tm_stats s;
    prefopt_unit_stats us = tm_stats_view(&s);
    prefopt_batch b = tb_view(tb);
    prefopt_err err = {0};
    if (prefopt_model_forward(m, &b, &us, &err)) {
        fprintf(stderr, "forward failed: %s\n", err.msg);
        exit(1);
    }
    return tm_loss(tb, &s, NULL, NULL);
}

static void check_arch(prefopt_arch arch, const prefopt_grid *g)
{
    prefopt_model_config cfg;
    tm_config(&cfg, arch);
    prefopt_model_options opt = tm_options(1, 0);
    prefopt_err err = {0};
    prefopt_model *m = prefopt_model_create(&cfg, g, &opt, &err);
    if (!m) {
        fprintf(stderr, "create: %s\n", err.msg);
        exit(1);
    }
    prefopt_model_init_random(m, 1234);
    /* perturb norms and biases away from 1 and 0 so their gradients are generic */
    size_t n;
    float *w = prefopt_model_param_data(m, &n);
    for (size_t e = 0; e < n; e++)
        w[e] += 0.05f * (float)sin(0.7 * e);
    test_batch tb;
    tb_standard(&tb);
    tm_stats s;
    prefopt_unit_stats us = tm_stats_view(&s);
    prefopt_batch b = tb_view(&tb);
    float dc[64], da[64];
    if (prefopt_model_forward(m, &b, &us, &err)) {
        fprintf(stderr, "forward: %s\n", err.msg);
        exit(1);
    }
    double base = tm_loss(&tb, &s, dc, da);
    prefopt_model_zero_grad(m);
    prefopt_model_backward(m, dc, da);
    const float h = 4e-3f;
    double worst = 0;
    int nchecked = 0;
    for (int pi = 0; pi < prefopt_model_param_count(m); pi++) {
        prefopt_param *p = prefopt_model_param_at(m, pi);
        size_t sz = prefopt_dmat_local_size(p->value);
        /* the largest gradient element and four spread-out ones */
        size_t pick[5] = {0};
        for (size_t e = 0; e < sz; e++)
            if (fabsf(p->grad->data[e]) > fabsf(p->grad->data[pick[0]]))
                pick[0] = e;
        for (int k = 1; k < 5; k++)
            pick[k] = (size_t)(((uint64_t)k * 2654435761u + pi * 97u) % sz);
        double tensor_worst = 0;
        for (int k = 0; k < 5; k++) {
            float *x = &p->value->data[pick[k]], x0 = *x;
            *x = x0 + h;
            double fp = eval(m, &tb);
            *x = x0 - h;
            double fm = eval(m, &tb);
            *x = x0;
            double fd = (fp - fm) / (2 * h), an = p->grad->data[pick[k]];
            double err_abs = fabs(fd - an), tol = 5e-4 + 2e-2 * fabs(an);
            tensor_worst = fmax(tensor_worst, err_abs / tol);
            if (err_abs > tol) {
                failures++;
                fprintf(stderr, "  %s[%zu]: analytic %.6g, finite difference %.6g\n", p->name, pick[k], an, fd);
            }
            nchecked++;
        }
        if (getenv("PREFOPT_TEST_VERBOSE"))
            printf("  %-45s max |g|=%.3g  err/tol %.3f\n", p->name, fabs(p->grad->data[pick[0]]), tensor_worst);
        worst = fmax(worst, tensor_worst);
    }
    printf("test_model_grad: %s: loss %.6f, %d tensors, %d elements checked, worst err/tol %.3f\n",
           arch == PREFOPT_ARCH_GPT2 ? "gpt2" : "llama(qwen2-like)", base, prefopt_model_param_count(m), nchecked,
           worst);
    prefopt_model_free(m);
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    prefopt_grid g;
    prefopt_err err = {0};
    if (prefopt_grid_init(&g, MPI_COMM_SELF, 1, 1, 1, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    check_arch(PREFOPT_ARCH_GPT2, &g);
    check_arch(PREFOPT_ARCH_LLAMA, &g);
    prefopt_grid_free(&g);
    printf("test_model_grad: %s\n", failures ? "FAILED" : "all checks passed");
    MPI_Finalize();
    return failures ? 1 : 0;
}
