/* bf16 mixed precision on the engine (prefopt_model_options.bf16), both architectures, the standard test batch:
 *   1. per-unit log-probs of the bf16 model against the fp32 model (1x1) within the bound derived below;
 *   2. every gradient against fp32 (relative L2 norm over the model) within its bound;
 *   3. grid invariance: every grid of the world (1x1, 1x2, 2x1 on 2 ranks; 2x2, 1x4, 4x1 and 2 data-parallel
 *      replicas on 4), also with the LM head in chunks, against the serial bf16 run within twice the bounds;
 *   4. a bf16-only frozen copy (the reference: prefopt_model_keep_bf16_only) gives bit-identical log-probs to the
 *      bf16 policy it was copied from (DPO's loss is log 2 at step 0), and a rerun is bit-identical;
 *   5. an optimizer-style weight change is seen by the next forward (the bf16 copies are remade).
 *
 * The bounds (first-order error analysis, stated in README "bf16 mixed precision"). bf16 keeps 8 significant
 * bits: round to nearest has unit roundoff u = 2^-9 (half its epsilon 2^-8). A product with both operands rounded
 * and fp32 accumulation has, for each term, relative error <= 2u; over a K-term dot product of terms of mixed sign
 * the errors are independent, so the output's error is about sqrt(2) u times the output's rms, whatever K (the
 * fp32 accumulation adds K 2^-24, negligible here). GPT-2/Llama blocks have 6 products on the residual path
 * (attention in, the attention's scores and probabilities-times-values, attention out, MLP in, MLP out; Q/K/V
 * share their rounded input), plus the LM head and the embedding's own rounding: N = 6L + 2 independent
 * perturbations that add in quadrature at the logits (an upper count where the attention stays fp32),
 * sigma_z = sqrt(2 N) u Z with Z the rms of the fp32 logits. A token's log-prob z_t - logsumexp(z) moves by at
 * most |dz_t| + max_j |dz_j|: sigma_tok <= 2 sigma_z. A unit sums n tokens: correlated in the worst case, so
 * |d logp_unit| <= 4 n sigma_tok (4 sigma for the tail) -- for L = 2, Z ~ 1, n = 6: ~0.1, about 1e-2 relative to
 * |logp| ~ n log V. Gradients pass through 3 products per forward product (forward, input gradient, weight
 * gradient): 3N perturbations, relative L2 error <= 4 sqrt(2 * 3N) u. Two grids are each within the bound of the
 * exact value, so they are within twice it of each other. */
#include "test_model_util.h"

#include "prefopt/gemm_local.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures;
#define FAIL(...)                                                                                            \
    do {                                                                                                     \
        failures++;                                                                                          \
        fprintf(stderr, "test_model_bf16: " __VA_ARGS__);                                                    \
        fputc('\n', stderr);                                                                                 \
    } while (0)

static void perturb(prefopt_model *m)
{
    for (int i = 0; i < prefopt_model_param_count(m); i++) {
        prefopt_param *p = prefopt_model_param_at(m, i);
        size_t n = (size_t)p->value->m * p->value->n;
        float *full = malloc(sizeof(float) * n);
        prefopt_dmat_gather(p->value, full);
        for (size_t e = 0; e < n; e++) /* larger weights than the init so every layer matters */
            full[e] = p->ndim == 1 ? full[e] + 0.05f * (float)sin(0.37 * e + i) : 3.0f * full[e];
        prefopt_dmat_scatter(p->value, full);
        free(full);
    }
}

typedef struct {
    tm_stats s;
    float *grads;
    double Z; /* rms of the logits over the batch's positions (serial runs only) */
} result;

static prefopt_model *make(prefopt_arch arch, const prefopt_grid *g, int bf16, int grads)
{
    prefopt_model_config cfg;
    tm_config(&cfg, arch);
    prefopt_model_options opt = tm_options(grads, 0);
    opt.bf16 = bf16;
    prefopt_err err = {0};
    prefopt_model *m = prefopt_model_create(&cfg, g, &opt, &err);
    if (!m) {
        fprintf(stderr, "create: %s\n", err.msg);
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    prefopt_model_init_random(m, 77);
    perturb(m);
    return m;
}

static void sub_batch(test_batch *part, const test_batch *full, const prefopt_grid *g)
{
    tb_init(part, 0, full->T);
    part->nunits = full->nunits;
    part->npairs = full->npairs;
    memcpy(part->pair_c, full->pair_c, sizeof part->pair_c);
    memcpy(part->pair_r, full->pair_r, sizeof part->pair_r);
    for (int r = g->dp_rank; r < full->nrows; r += g->dp_size) {
        size_t dst = (size_t)part->nrows * full->T, src = (size_t)r * full->T, T = full->T;
        memcpy(part->tokens + dst, full->tokens + src, T * sizeof(int32_t));
        memcpy(part->pos + dst, full->pos + src, T * sizeof(int32_t));
        memcpy(part->parent + dst, full->parent + src, T * sizeof(int32_t));
        memcpy(part->unit + dst, full->unit + src, T * sizeof(int32_t));
        memcpy(part->seg + dst, full->seg + src, T);
        memcpy(part->completion + dst, full->completion + src, T);
        part->nrows++;
    }
}

static void run(result *res, prefopt_arch arch, const prefopt_grid *g, int bf16, const test_batch *full,
                size_t logits_budget)
{
    prefopt_model *m = make(arch, g, bf16, 1);
    prefopt_model_set_logits_budget(m, logits_budget);
    test_batch part;
    sub_batch(&part, full, g);
    prefopt_err err = {0};
    prefopt_batch b = tb_view(&part);
    res->Z = 0;
    if (g->tp_size * g->dp_size == 1 && !bf16) { /* the logits' rms, for the bound */
        const int V = prefopt_model_get_config(m)->vocab_size;
        float *lg = malloc(sizeof(float) * (size_t)b.nrows * V);
        double ss = 0;
        long cnt = 0;
        for (int pos = 0; pos < b.T; pos++) {
            int32_t last[64];
            int ok = 1;
            for (int r = 0; r < b.nrows; r++) {
                last[r] = b.seg[r * b.T + pos] >= 0 ? pos : 0;
                ok &= b.seg[r * b.T + last[r]] >= 0;
            }
            if (!ok || prefopt_model_logits_at(m, &b, last, lg, &err))
                continue;
            for (int r = 0; r < b.nrows; r++)
                if (b.seg[r * b.T + pos] >= 0)
                    for (int v = 0; v < V; v++, cnt++)
                        ss += (double)lg[(size_t)r * V + v] * lg[(size_t)r * V + v];
        }
        res->Z = sqrt(ss / (cnt ? cnt : 1));
        free(lg);
    }
    prefopt_unit_stats us = tm_stats_view(&res->s);
    if (prefopt_model_forward(m, &b, &us, &err)) {
        fprintf(stderr, "forward: %s\n", err.msg);
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    MPI_Allreduce(MPI_IN_PLACE, &res->s, (int)(sizeof res->s / sizeof(double)), MPI_DOUBLE, MPI_SUM, g->dp);
    float dc[64], da[64];
    tm_loss(full, &res->s, dc, da);
    prefopt_model_zero_grad(m);
    prefopt_model_backward(m, dc, da);
    prefopt_model_allreduce_grads(m);
    res->grads = malloc(sizeof(float) * tm_total_elems(m));
    tm_gather_all(m, 1, res->grads);
    prefopt_model_free(m);
}

typedef struct {
    double lp_worst, grad_rel; /* measured / bound */
} verdict;

static verdict compare(const char *what, const result *a, const result *ref, const test_batch *tb, size_t ng,
                       double sigma_tok, double grad_bound, double factor)
{
    verdict v = {0, 0};
    for (int u = 0; u < tb->nunits; u++) {
        double tol_c = factor * 4.0 * ref->s.nc[u] * sigma_tok, tol_a = factor * 4.0 * ref->s.na[u] * sigma_tok;
        double ec = fabs(a->s.c[u] - ref->s.c[u]), ea = fabs(a->s.a[u] - ref->s.a[u]);
        v.lp_worst = fmax(v.lp_worst, fmax(ec / tol_c, ea / tol_a));
        if (!(ec <= tol_c && ea <= tol_a) || a->s.nc[u] != ref->s.nc[u] || a->s.na[u] != ref->s.na[u])
            FAIL("%s unit %d: logp %.7g vs %.7g (|d| %.3g, bound %.3g), all %.7g vs %.7g (|d| %.3g, bound %.3g)", what,
                 u, a->s.c[u], ref->s.c[u], ec, tol_c, a->s.a[u], ref->s.a[u], ea, tol_a);
    }
    double d2 = 0, r2 = 0;
    for (size_t e = 0; e < ng; e++) {
        double d = (double)a->grads[e] - ref->grads[e];
        d2 += d * d;
        r2 += (double)ref->grads[e] * ref->grads[e];
    }
    double rel = sqrt(d2 / (r2 > 0 ? r2 : 1));
    v.grad_rel = rel / (factor * grad_bound);
    if (!(rel <= factor * grad_bound))
        FAIL("%s: gradient relative L2 error %.3g above the bound %.3g", what, rel, factor * grad_bound);
    return v;
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    int size, rank;
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    char what_cpu[64];
    if (!prefopt_cpu_has_bf16(what_cpu, sizeof what_cpu)) {
        if (rank == 0)
            printf("test_model_bf16: skipped: this CPU has no bf16 instructions (%s)\n", what_cpu);
        MPI_Finalize();
        return 77;
    }
    prefopt_grid serial;
    prefopt_err err = {0};
    prefopt_grid_init(&serial, MPI_COMM_SELF, 1, 1, 1, &err);
    test_batch tb;
    tb_standard(&tb);
    const double u = 0x1p-9;
    for (int arch = 0; arch < 2; arch++) {
        const char *an = arch ? "llama" : "gpt2";
        prefopt_model_config cfg;
        tm_config(&cfg, (prefopt_arch)arch);
        const double N = 6.0 * cfg.num_layers + 2.0;
        result f32, b16;
        run(&f32, (prefopt_arch)arch, &serial, 0, &tb, 0);
        run(&b16, (prefopt_arch)arch, &serial, 1, &tb, 0);
        prefopt_model *tmp = make((prefopt_arch)arch, &serial, 0, 0);
        size_t ng = tm_total_elems(tmp);
        prefopt_model_free(tmp);
        const double sigma_tok = 2.0 * sqrt(2.0 * N) * u * f32.Z, grad_bound = 4.0 * sqrt(2.0 * 3.0 * N) * u;
        char what[128];
        snprintf(what, sizeof what, "%s bf16 vs fp32", an);
        verdict v = compare(what, &b16, &f32, &tb, ng, sigma_tok, grad_bound, 1.0);
        double worst_rel = 0;
        for (int uu = 0; uu < tb.nunits; uu++)
            worst_rel = fmax(worst_rel, fabs(b16.s.c[uu] - f32.s.c[uu]) / fabs(f32.s.c[uu]));
        if (!(worst_rel > 0))
            FAIL("%s: bf16 and fp32 log-probs are identical: the bf16 products did not run", what);
        if (rank == 0)
            printf("test_model_bf16: %s: logits rms %.3f, per-token sigma bound %.4f; log-probs: worst relative "
                   "difference %.2e, %.2f of the bound; gradients: %.2f of the bound %.3f (relative L2)\n",
                   what, f32.Z, sigma_tok, worst_rel, v.lp_worst, v.grad_rel, grad_bound);
        /* a rerun is bit-identical; the bf16-only copy (the frozen reference) matches the policy bit for bit */
        result again;
        run(&again, (prefopt_arch)arch, &serial, 1, &tb, 0);
        if (memcmp(again.s.c, b16.s.c, sizeof(double) * tb.nunits) ||
            memcmp(again.grads, b16.grads, sizeof(float) * ng))
            FAIL("%s: two bf16 runs differ", an);
        free(again.grads);
        {
            prefopt_model *pol = make((prefopt_arch)arch, &serial, 1, 1), *ref = make((prefopt_arch)arch, &serial, 1, 0);
            prefopt_model_keep_bf16_only(ref);
            prefopt_model_copy_weights(ref, pol);
            prefopt_batch b = tb_view(&tb);
            tm_stats sp, sr;
            prefopt_unit_stats up = tm_stats_view(&sp), ur = tm_stats_view(&sr);
            prefopt_model_forward(pol, &b, &up, &err);
            prefopt_model_forward(ref, &b, &ur, &err);
            if (memcmp(sp.c, sr.c, sizeof(double) * tb.nunits) || memcmp(sp.a, sr.a, sizeof(double) * tb.nunits))
                FAIL("%s: the bf16-only reference's log-probs differ from the policy's", an);
            size_t want_ref = 0, want_pol = 0;
            for (int i = 0; i < prefopt_model_param_count(pol); i++) {
                prefopt_param *p = prefopt_model_param_at(pol, i);
                size_t n = prefopt_dmat_local_size(p->value);
                want_ref += p->ndim == 2 ? 2 * n : 4 * n;
                want_pol += p->ndim == 2 ? 6 * n : 4 * n;
            }
            if (prefopt_model_weight_bytes(ref) != want_ref || prefopt_model_weight_bytes(pol) != want_pol)
                FAIL("%s: weights hold %zu bytes (bf16-only reference) and %zu (policy), want %zu and %zu", an,
                     prefopt_model_weight_bytes(ref), prefopt_model_weight_bytes(pol), want_ref, want_pol);
            /* an optimizer step: the next forward must see it */
            size_t n = 0;
            float *w = prefopt_model_param_data(pol, &n);
            for (size_t e = 0; e < n; e++)
                w[e] *= 1.01f;
            prefopt_model_weights_changed(pol);
            tm_stats s2;
            prefopt_unit_stats u2 = tm_stats_view(&s2);
            prefopt_model_forward(pol, &b, &u2, &err);
            if (!memcmp(s2.c, sp.c, sizeof(double) * tb.nunits))
                FAIL("%s: the forward after a weight change did not see it (stale bf16 copies)", an);
            prefopt_model_free(pol);
            prefopt_model_free(ref);
        }
        for (int dp = 1; dp <= 2; dp++)
            for (int pr = 1; pr <= size; pr++) {
                if (size % (dp * pr))
                    continue;
                int pc = size / (dp * pr);
                prefopt_grid g;
                prefopt_grid_init(&g, MPI_COMM_WORLD, pr, pc, dp, &err);
                for (size_t budget = 0; budget <= 1; budget++) {
                    result a;
                    run(&a, (prefopt_arch)arch, &g, 1, &tb, budget);
                    snprintf(what, sizeof what, "%s bf16 grid %dx%d dp %d%s", an, pr, pc, dp,
                             budget ? " (chunked head)" : "");
                    verdict w = compare(what, &a, &b16, &tb, ng, sigma_tok, grad_bound, 2.0);
                    if (rank == 0 && !budget)
                        printf("test_model_bf16: %s vs 1x1: log-probs %.3f, gradients %.3f of the bound\n", what,
                               w.lp_worst, w.grad_rel);
                    free(a.grads);
                }
                prefopt_grid_free(&g);
            }
        free(f32.grads);
        free(b16.grads);
    }
    if (prefopt_dmat_gemm_bf16_calls() == 0)
        FAIL("no bf16 distributed product ran");
    long fb = prefopt_dmat_gemm_bf16_fallbacks();
    if (fb)
        FAIL("%ld bf16 products fell back to fp32 psgemm", fb);
    int total = 0;
    MPI_Allreduce(&failures, &total, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    if (rank == 0)
        printf("test_model_bf16: %d ranks (bf16 matmul %s, CPU %s): %s\n", size, prefopt_gemm_bf16_impl(), what_cpu,
               total ? "FAILED" : "all checks passed");
    prefopt_grid_free(&serial);
    MPI_Finalize();
    return total ? 1 : 0;
}
