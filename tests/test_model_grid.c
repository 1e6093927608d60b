/* Grid equivalence: the same model (seed) and batch on every grid shape that fits the world (1x1, 1x2, 2x1 on 2
 * ranks; 2x2, 1x4, 4x1 and 2 data-parallel replicas of 1x2 and 2x1 on 4 ranks) gives the per-unit log-probs and
 * every parameter's full gradient of a serial 1x1 computation that each rank repeats on MPI_COMM_SELF. Both
 * architectures, padding in the batch. Replicas take alternate batch rows; their stats and gradients are summed
 * over the replicas. Also: activation checkpointing gives bit-identical gradients on every grid.
 *
 * Tolerance: 1e-4 relative, per element, relative to |reference| + the tensor's largest |gradient| (so that
 * elements that are ~0 by symmetry compare at the tensor's scale). GPT-2's key bias has an identically zero
 * gradient (softmax is shift-invariant), so what is left is rounding of cancelling terms of the size of the
 * other gradients: the tensor scale is floored at 1e-4 of the largest gradient of the model. Different grids sum
 * in a different order (PBLAS panels, norm reductions), which moves fp32 results by ~1e-6 relative. The LM head
 * is also run in chunks of one sequence per process row (tiny logits budget), which must agree the same way, and
 * with logits only where completion tokens are predicted (whole and chunked), which must give the completion
 * log-probs, metrics and gradients of the full head on a loss without its all-token term. */
#include "test_model_util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures;
#define FAIL(...)                                                                                            \
    do {                                                                                                     \
        failures++;                                                                                          \
        fprintf(stderr, __VA_ARGS__);                                                                        \
        fputc('\n', stderr);                                                                                 \
    } while (0)

/* a deterministic perturbation of every logical element, so norms and biases are not 1 and 0 */
static void perturb(prefopt_model *m)
{
    for (int i = 0; i < prefopt_model_param_count(m); i++) {
        prefopt_param *p = prefopt_model_param_at(m, i);
        size_t n = (size_t)p->value->m * p->value->n;
        float *full = malloc(sizeof(float) * n);
        prefopt_dmat_gather(p->value, full);
        for (size_t e = 0; e < n; e++)
            full[e] += 0.05f * (float)sin(0.37 * e + i);
        prefopt_dmat_scatter(p->value, full);
        free(full);
    }
}

typedef struct {
    tm_stats s;
    float *grads;
    double loss;
} result;

/* forward + backward of the rows r with r % dp == dp_rank; stats and gradients summed over g->dp */
/* kept: the completions-only LM head (prefopt_model_set_completion_logits_only); no_all: the loss without its
 * all-token term (d_all = 0), which is all a completions-only head can give */
static void run(result *res, prefopt_arch arch, const prefopt_grid *g, int checkpoint, const test_batch *full,
                size_t logits_budget, int kept, int no_all)
{
    prefopt_model_config cfg;
    tm_config(&cfg, arch);
    prefopt_model_options opt = tm_options(1, checkpoint);
    prefopt_err err = {0};
    prefopt_model *m = prefopt_model_create(&cfg, g, &opt, &err);
    if (!m) {
        fprintf(stderr, "create: %s\n", err.msg);
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    prefopt_model_init_random(m, 77);
    perturb(m);
    prefopt_model_set_logits_budget(m, logits_budget);
    prefopt_model_set_completion_logits_only(m, kept);
    test_batch part;
    tb_init(&part, 0, full->T);
    part.nunits = full->nunits;
    part.npairs = full->npairs;
    memcpy(part.pair_c, full->pair_c, sizeof part.pair_c);
    memcpy(part.pair_r, full->pair_r, sizeof part.pair_r);
    for (int r = g->dp_rank; r < full->nrows; r += g->dp_size) {
        size_t dst = (size_t)part.nrows * full->T, src = (size_t)r * full->T, T = full->T;
        memcpy(part.tokens + dst, full->tokens + src, T * sizeof(int32_t));
        memcpy(part.pos + dst, full->pos + src, T * sizeof(int32_t));
        memcpy(part.parent + dst, full->parent + src, T * sizeof(int32_t));
        memcpy(part.unit + dst, full->unit + src, T * sizeof(int32_t));
        memcpy(part.seg + dst, full->seg + src, T);
        memcpy(part.completion + dst, full->completion + src, T);
        part.nrows++;
    }
    prefopt_unit_stats us = tm_stats_view(&res->s);
    prefopt_batch b = tb_view(&part);
    if (prefopt_model_forward(m, &b, &us, &err)) {
        fprintf(stderr, "forward: %s\n", err.msg);
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    MPI_Allreduce(MPI_IN_PLACE, &res->s, (int)(sizeof res->s / sizeof(double)), MPI_DOUBLE, MPI_SUM, g->dp);
    float dc[64], da[64];
    res->loss = tm_loss(full, &res->s, dc, da);
    if (no_all)
        memset(da, 0, sizeof da);
    prefopt_model_zero_grad(m);
    prefopt_model_backward(m, dc, da);
    prefopt_model_set_grad_bucket(m, 1000); /* several buckets and a partial last one even on this tiny model */
    prefopt_model_allreduce_grads(m);
    res->grads = malloc(sizeof(float) * tm_total_elems(m));
    tm_gather_all(m, 1, res->grads);
    prefopt_model_free(m);
}

/* kept: a is from the completions-only head, whose all-token log-probs must be NaN (never a partial sum) */
static void compare(const char *what, prefopt_arch arch, const result *a, const result *ref, const test_batch *tb,
                    const prefopt_grid *g, int kept)
{
    for (int u = 0; u < tb->nunits; u++) {
        int all_ok = kept ? isnan(a->s.a[u]) : fabs(a->s.a[u] - ref->s.a[u]) <= 1e-4 * fabs(ref->s.a[u]);
        if (fabs(a->s.c[u] - ref->s.c[u]) > 1e-4 * fabs(ref->s.c[u]) || !all_ok || a->s.nc[u] != ref->s.nc[u] ||
            a->s.na[u] != ref->s.na[u] || fabs(a->s.ls[u] - ref->s.ls[u]) > 1e-4 * (fabs(ref->s.ls[u]) + 1e-3) ||
            a->s.hits[u] != ref->s.hits[u])
            FAIL("%s unit %d: logp %.9g / %.9g (all %.9g / %.9g), counts %g/%g, hits %g/%g", what, u, a->s.c[u],
                 ref->s.c[u], a->s.a[u], ref->s.a[u], a->s.nc[u], ref->s.nc[u], a->s.hits[u], ref->s.hits[u]);
    }
    /* walk the tensors of a 1x1 model for names and sizes */
    prefopt_model_config cfg;
    tm_config(&cfg, arch);
    prefopt_model_options opt = tm_options(0, 0);
    prefopt_err err = {0};
    prefopt_model *names = prefopt_model_create(&cfg, g, &opt, &err);
    size_t off = 0, total = tm_total_elems(names);
    double global = 0;
    for (size_t e = 0; e < total; e++)
        global = fmax(global, fabs(ref->grads[e]));
    for (int i = 0; i < prefopt_model_param_count(names); i++) {
        prefopt_param *p = prefopt_model_param_at(names, i);
        size_t n = (size_t)p->value->m * p->value->n;
        double scale = 0, worst = 0;
        for (size_t e = 0; e < n; e++)
            scale = fmax(scale, fabs(ref->grads[off + e]));
        scale = fmax(scale, 1e-4 * global);
        for (size_t e = 0; e < n; e++) {
            double d = fabs(a->grads[off + e] - ref->grads[off + e]);
            worst = fmax(worst, d / (1e-4 * (fabs(ref->grads[off + e]) + scale) + 1e-12));
        }
        if (worst > 1 || scale == 0)
            FAIL("%s %s: gradient differs from 1x1 (worst err/tol %.3g, scale %.3g)", what, p->name, worst, scale);
        off += n;
    }
    prefopt_model_free(names);
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    int size, rank;
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    prefopt_grid serial;
    prefopt_err err = {0};
    prefopt_grid_init(&serial, MPI_COMM_SELF, 1, 1, 1, &err);
    test_batch tb;
    tb_standard(&tb);
    int nconf = 0;
    for (int arch = 0; arch < 2; arch++) {
        result ref, ref_no_all;
        run(&ref, (prefopt_arch)arch, &serial, 0, &tb, 0, 0, 0);
        run(&ref_no_all, (prefopt_arch)arch, &serial, 0, &tb, 0, 0, 1);
        for (int dp = 1; dp <= 2; dp++)
            for (int pr = 1; pr <= size; pr++) {
                if (size % (dp * pr))
                    continue;
                int pc = size / (dp * pr);
                prefopt_grid g;
                prefopt_grid_init(&g, MPI_COMM_WORLD, pr, pc, dp, &err);
                char what[96];
                snprintf(what, sizeof what, "%s grid %dx%d dp %d", arch ? "llama" : "gpt2", pr, pc, dp);
                result a, c, h;
                run(&a, (prefopt_arch)arch, &g, 0, &tb, 0, 0, 0);
                compare(what, (prefopt_arch)arch, &a, &ref, &tb, &serial, 0);
                /* a 1-byte logits budget: the LM head runs one sequence per process row at a time and backward
                 * recomputes each chunk's logits */
                run(&h, (prefopt_arch)arch, &g, 0, &tb, 1, 0, 0);
                char what_h[128];
                snprintf(what_h, sizeof what_h, "%s (chunked head)", what);
                compare(what_h, (prefopt_arch)arch, &h, &ref, &tb, &serial, 0);
                free(h.grads);
                /* the completions-only head, whole and chunked, against the full head on the same loss without
                 * its all-token term: same completion log-probs, metrics and every gradient */
                for (size_t budget = 0; budget <= 1; budget++) {
                    result k;
                    run(&k, (prefopt_arch)arch, &g, 0, &tb, budget, 1, 1);
                    char what_k[160];
                    snprintf(what_k, sizeof what_k, "%s (completions-only head%s)", what, budget ? ", chunked" : "");
                    compare(what_k, (prefopt_arch)arch, &k, &ref_no_all, &tb, &serial, 1);
                    free(k.grads);
                }
                run(&c, (prefopt_arch)arch, &g, 1, &tb, 0, 0, 0);
                size_t n = 0;
                for (int u = 0; u < tb.nunits; u++)
                    if (c.s.c[u] != a.s.c[u])
                        FAIL("%s: checkpointing changed unit %d's logp", what, u);
                prefopt_model_config cfg;
                tm_config(&cfg, (prefopt_arch)arch);
                prefopt_model_options o = tm_options(0, 0);
                prefopt_model *tmp = prefopt_model_create(&cfg, &serial, &o, &err);
                n = tm_total_elems(tmp);
                prefopt_model_free(tmp);
                if (memcmp(a.grads, c.grads, n * sizeof(float)))
                    FAIL("%s: activation checkpointing changed the gradients", what);
                if (rank == 0)
                    printf("test_model_grid: %-28s loss %.7f (1x1 %.7f)\n", what, a.loss, ref.loss);
                free(a.grads);
                free(c.grads);
                prefopt_grid_free(&g);
                nconf++;
            }
        free(ref.grads);
        free(ref_no_all.grads);
    }
    int total = 0;
    MPI_Allreduce(&failures, &total, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    if (rank == 0)
        printf("test_model_grid: %d configurations on %d ranks: %s\n", nconf, size, total ? "FAILED" : "all checks passed");
    prefopt_grid_free(&serial);
    MPI_Finalize();
    return total ? 1 : 0;
}
