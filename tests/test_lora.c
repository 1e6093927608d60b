/* LoRA adapters (src/model/lora.c), both architectures, every target module, on the tiny models of the engine
 * tests (tests/test_model_util.c) and the standard batch (padding, two packed DPO pairs, an SFT row):
 *
 *  1. (rank 0, 1x1) gradients of every A^T and B tensor against central finite differences of the loss, with B
 *     moved off its zero init so A's gradient is not zero, without and with dropout (the mask is fixed by
 *     restarting the mask stream before each forward); the base tensors have no gradient buffers and the
 *     gradient buffer is exactly the adapters' tail of the flat parameter buffer.
 *  2. (rank 0) with PEFT's init (B = 0) the log-probs are bit-identical to the base model's without adapters;
 *     after an AdamW step with lr = 0 still; after a real step (lr > 0) they differ while the forward with the
 *     adapters switched off (the reference) is still bit-identical to the base.
 *  3. (every rank) grid invariance: per-unit log-probs and every adapter gradient on each grid shape that fits
 *     the world (2 ranks: 1x2, 2x1, dp 2; 4 ranks: 2x2, 1x4, 4x1, dp 2 of 1x2 and 2x1) equal a serial 1x1
 *     computation within 1e-4 (relative to |ref| + the tensor's largest |gradient|, as test_model_grid), with
 *     dropout on TP grids too (the mask depends on global indices only); activation checkpointing gives
 *     bit-identical adapter gradients. On one process row (1x2, 1x4) every product of forward + backward takes
 *     dmat_gemm's one-row path (counted): the adapters add no psgemm and the frozen base no dW.
 * FD tolerance as test_model_grad: h = 4e-3, 5e-4 absolute + 2% relative (fp32 loss noise ~1e-6/h). */
#include "test_model_util.h"

#include "prefopt/optim.h"

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

static const uint64_t DROP_SEED = 99;

static prefopt_lora_config lora_cfg(prefopt_arch arch, float dropout)
{
    prefopt_lora_config l = {4, 8.0f, dropout, 0};
    prefopt_err err = {0};
    if (prefopt_lora_parse_targets("all-linear", arch, &l.targets, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        exit(1);
    }
    return l;
}

static prefopt_model *make(prefopt_arch arch, const prefopt_grid *g, int grads, int ckpt, const prefopt_lora_config *l)
{
    prefopt_model_config cfg;
    tm_config(&cfg, arch);
    prefopt_model_options opt = tm_options(grads, ckpt);
    prefopt_err err = {0};
    prefopt_model *m = prefopt_model_create_lora(&cfg, g, &opt, l, &err);
    if (!m) {
        fprintf(stderr, "create: %s\n", err.msg);
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    prefopt_model_init_random(m, 77);
    return m;
}

/* a deterministic change of every logical element (adapters too: B off zero), grid-independent */
static void perturb(prefopt_model *m, int lora_only)
{
    for (int i = 0; i < prefopt_model_param_count(m); i++) {
        if (lora_only && !prefopt_model_param_is_lora(m, i))
            continue;
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

static double forward(prefopt_model *m, const test_batch *tb, tm_stats *s, int drop)
{
    if (drop)
        prefopt_model_set_lora_train(m, 1, DROP_SEED);
    prefopt_unit_stats us = tm_stats_view(s);
    prefopt_batch b = tb_view(tb);
    prefopt_err err = {0};
    if (prefopt_model_forward(m, &b, &us, &err)) {
        fprintf(stderr, "forward: %s\n", err.msg);
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    return tm_loss(tb, s, NULL, NULL);
}

/* ---- 1. finite differences ---------------------------------------------------------------------------------- */

static void check_fd(prefopt_arch arch, const prefopt_grid *g, float dropout)
{
    prefopt_lora_config l = lora_cfg(arch, dropout);
    prefopt_model *m = make(arch, g, 1, 0, &l);
    perturb(m, 0);
    int drop = dropout > 0;
    test_batch tb;
    tb_standard(&tb);
    tm_stats s;
    float dc[64], da[64];
    if (drop)
        prefopt_model_set_lora_train(m, 1, DROP_SEED);
    prefopt_unit_stats us = tm_stats_view(&s);
    prefopt_batch b = tb_view(&tb);
    prefopt_err err = {0};
    prefopt_model_forward(m, &b, &us, &err);
    double base = tm_loss(&tb, &s, dc, da);
    prefopt_model_zero_grad(m);
    prefopt_model_backward(m, dc, da);
    /* the layout: only adapters are trained, and their pieces are the gradient buffer */
    size_t ntrain = 0, ngrad = 0, nlora = 0;
    float *tdata = prefopt_model_train_data(m, &ntrain), *gdata = prefopt_model_grad_data(m, &ngrad);
    if (ntrain != ngrad)
        FAIL("trainable %zu floats, gradients %zu", ntrain, ngrad);
    const float h = 4e-3f;
    double worst = 0;
    int nchecked = 0;
    for (int pi = 0; pi < prefopt_model_param_count(m); pi++) {
        prefopt_param *p = prefopt_model_param_at(m, pi);
        int lora = prefopt_model_param_is_lora(m, pi);
        if (lora != prefopt_model_param_trained(m, pi) || (p->grad != NULL) != lora)
            FAIL("%s: lora %d, trained %d, gradient %p", p->name, lora, prefopt_model_param_trained(m, pi),
                 (void *)p->grad);
        if (!lora)
            continue;
        nlora++;
        if (p->value->data < tdata || p->value->data >= tdata + ntrain ||
            p->grad->data - gdata != p->value->data - tdata)
            FAIL("%s: outside the trainable tail or not at its gradient's offset", p->name);
        size_t sz = prefopt_dmat_local_size(p->value);
        size_t pick[5] = {0};
        for (size_t e = 0; e < sz; e++)
            if (fabsf(p->grad->data[e]) > fabsf(p->grad->data[pick[0]]))
                pick[0] = e;
        for (int k = 1; k < 5; k++)
            pick[k] = (size_t)(((uint64_t)k * 2654435761u + pi * 97u) % sz);
        if (fabsf(p->grad->data[pick[0]]) == 0.0f)
            FAIL("%s: gradient identically zero", p->name);
        for (int k = 0; k < 5; k++) {
            float *x = &p->value->data[pick[k]], x0 = *x;
            tm_stats t;
            *x = x0 + h;
            double fp = forward(m, &tb, &t, drop);
            *x = x0 - h;
            double fm = forward(m, &tb, &t, drop);
            *x = x0;
            double fd = (fp - fm) / (2 * h), an = p->grad->data[pick[k]];
            double e = fabs(fd - an), tol = 5e-4 + 2e-2 * fabs(an);
            worst = fmax(worst, e / tol);
            if (e > tol)
                FAIL("  %s[%zu]: analytic %.6g, finite difference %.6g", p->name, pick[k], an, fd);
            nchecked++;
        }
    }
    size_t want = (arch == PREFOPT_ARCH_GPT2 ? 6 : 7) * 2 * 2; /* kinds x (A, B) x layers */
    if (nlora != want)
        FAIL("%zu adapter tensors, expected %zu", nlora, want);
    printf("test_lora: fd %s dropout %.2f: loss %.6f, %zu adapter tensors, %d elements, worst err/tol %.3f\n",
           arch == PREFOPT_ARCH_GPT2 ? "gpt2" : "llama", (double)dropout, base, nlora, nchecked, worst);
    prefopt_model_free(m);
}

/* ---- 2. zero B, lr 0, adapters off ---------------------------------------------------------------------------- */

static int same_stats(const tm_stats *a, const tm_stats *b, int n)
{
    return !memcmp(a->c, b->c, sizeof(double) * n) && !memcmp(a->a, b->a, sizeof(double) * n);
}

static void check_base(prefopt_arch arch, const prefopt_grid *g)
{
    test_batch tb;
    tb_standard(&tb);
    prefopt_model *base = make(arch, g, 0, 0, NULL);
    tm_stats sb, s0, s1, s2, s3;
    forward(base, &tb, &sb, 0);
    prefopt_lora_config l = lora_cfg(arch, 0.1f);
    prefopt_model *m = make(arch, g, 1, 0, &l);
    prefopt_model_init_lora(m, 5); /* PEFT init from another seed: A random, B zero */
    forward(m, &tb, &s0, 0);
    if (!same_stats(&s0, &sb, tb.nunits))
        FAIL("%d: B = 0 changed the log-probs (%.9g vs %.9g)", arch, s0.c[0], sb.c[0]);
    /* one step with lr 0 (dropout on: it must not matter either) */
    size_t n = 0;
    float *w = prefopt_model_train_data(m, &n), *gr = prefopt_model_grad_data(m, NULL);
    prefopt_param_range r = {0, n, 1, 1};
    prefopt_adamw_config ac = {0.9, 0.999, 1e-8, 0.01};
    prefopt_adamw opt;
    prefopt_err err = {0};
    prefopt_adamw_init(&opt, &ac, n, &r, 1, &err);
    float dc[64], da[64];
    prefopt_model_set_lora_train(m, 1, DROP_SEED);
    prefopt_unit_stats us = tm_stats_view(&s1);
    prefopt_batch b = tb_view(&tb);
    prefopt_model_forward(m, &b, &us, &err);
    tm_loss(&tb, &s1, dc, da);
    prefopt_model_zero_grad(m);
    prefopt_model_backward(m, dc, da);
    double gn = 0;
    for (size_t e = 0; e < n; e++)
        gn += (double)gr[e] * gr[e];
    if (!(gn > 0))
        FAIL("%d: the adapters got no gradient (B's must be non-zero at B = 0)", arch);
    prefopt_adamw_step(&opt, w, gr, 0.0, 1.0);
    prefopt_model_set_lora_train(m, 0, 0);
    forward(m, &tb, &s1, 0);
    if (!same_stats(&s1, &sb, tb.nunits))
        FAIL("%d: a step with lr 0 changed the log-probs", arch);
    prefopt_adamw_step(&opt, w, gr, 1e-2, 1.0);
    forward(m, &tb, &s2, 0);
    if (same_stats(&s2, &sb, tb.nunits))
        FAIL("%d: a step with lr 1e-2 left the log-probs unchanged", arch);
    prefopt_model_set_lora_enabled(m, 0);
    forward(m, &tb, &s3, 0);
    if (!same_stats(&s3, &sb, tb.nunits))
        FAIL("%d: with the adapters off the forward is not the base model's", arch);
    prefopt_model_set_lora_enabled(m, 1);
    prefopt_adamw_free(&opt);
    prefopt_model_free(m);
    prefopt_model_free(base);
    printf("test_lora: %s: B = 0 and lr = 0 leave the base log-probs bit-identical; adapters off = base\n",
           arch == PREFOPT_ARCH_GPT2 ? "gpt2" : "llama");
}

/* ---- 3. grids ------------------------------------------------------------------------------------------------- */

typedef struct {
    tm_stats s;
    float *grads; /* adapters' full gradients, registry order */
    size_t n;
    long row_calls; /* products of forward + backward that took dmat_gemm's one-process-row path */
} result;

static void run(result *res, prefopt_arch arch, const prefopt_grid *g, int ckpt, float dropout, const test_batch *full)
{
    prefopt_lora_config l = lora_cfg(arch, dropout);
    prefopt_model *m = make(arch, g, 1, ckpt, &l);
    perturb(m, 0);
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
    long calls0 = prefopt_dmat_gemm_row_calls();
    forward(m, &part, &res->s, dropout > 0);
    MPI_Allreduce(MPI_IN_PLACE, &res->s, (int)(sizeof res->s / sizeof(double)), MPI_DOUBLE, MPI_SUM, g->dp);
    float dc[64], da[64];
    tm_loss(full, &res->s, dc, da);
    prefopt_model_zero_grad(m);
    prefopt_model_backward(m, dc, da);
    res->row_calls = prefopt_dmat_gemm_row_calls() - calls0;
    prefopt_model_set_grad_bucket(m, 100); /* several buckets even for the adapters of a tiny model */
    prefopt_model_allreduce_grads(m);
    size_t total = 0;
    for (int i = 0; i < prefopt_model_param_count(m); i++)
        if (prefopt_model_param_trained(m, i))
            total += (size_t)prefopt_model_param_at(m, i)->value->m * prefopt_model_param_at(m, i)->value->n;
    res->grads = malloc(sizeof(float) * total);
    res->n = 0;
    for (int i = 0; i < prefopt_model_param_count(m); i++) {
        prefopt_param *p = prefopt_model_param_at(m, i);
        if (!prefopt_model_param_trained(m, i))
            continue;
        prefopt_dmat_gather(p->grad, res->grads + res->n);
        res->n += (size_t)p->value->m * p->value->n;
    }
    prefopt_model_free(m);
}

static void compare(const char *what, const result *a, const result *ref, int nunits)
{
    for (int u = 0; u < nunits; u++)
        if (fabs(a->s.c[u] - ref->s.c[u]) > 1e-4 * fabs(ref->s.c[u]) ||
            fabs(a->s.a[u] - ref->s.a[u]) > 1e-4 * fabs(ref->s.a[u]))
            FAIL("%s unit %d: logp %.9g / %.9g", what, u, a->s.c[u], ref->s.c[u]);
    if (a->n != ref->n) {
        FAIL("%s: %zu adapter gradient elements, 1x1 has %zu", what, a->n, ref->n);
        return;
    }
    double scale = 0, worst = 0;
    for (size_t e = 0; e < ref->n; e++)
        scale = fmax(scale, fabs(ref->grads[e]));
    for (size_t e = 0; e < ref->n; e++)
        worst = fmax(worst, fabs(a->grads[e] - ref->grads[e]) / (1e-4 * (fabs(ref->grads[e]) + scale) + 1e-12));
    if (worst > 1 || scale == 0)
        FAIL("%s: adapter gradients differ from 1x1 (worst err/tol %.3g)", what, worst);
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
    if (rank == 0 && size == 1) {
        for (int arch = 0; arch < 2; arch++) {
            check_fd((prefopt_arch)arch, &serial, 0.0f);
            check_fd((prefopt_arch)arch, &serial, 0.25f);
            check_base((prefopt_arch)arch, &serial);
        }
        /* target names */
        unsigned t = 0;
        if (prefopt_lora_parse_targets("c_attn,c_proj", PREFOPT_ARCH_GPT2, &t, &err) ||
            t != (PREFOPT_LORA_Q | PREFOPT_LORA_K | PREFOPT_LORA_V | PREFOPT_LORA_O | PREFOPT_LORA_DOWN))
            FAIL("gpt2 c_attn,c_proj: %x", t);
        if (prefopt_lora_parse_targets("q_proj,v_proj", PREFOPT_ARCH_LLAMA, &t, &err) ||
            t != (PREFOPT_LORA_Q | PREFOPT_LORA_V))
            FAIL("llama q_proj,v_proj: %x", t);
        if (!prefopt_lora_parse_targets("q_proj,c_fc", PREFOPT_ARCH_LLAMA, &t, &err) || !strstr(err.msg, "'c_fc'"))
            FAIL("llama c_fc accepted or badly reported: %s", err.msg);
    }
    test_batch tb;
    tb_standard(&tb);
    int nconf = 0;
    for (int arch = 0; arch < 2; arch++)
        for (int d = 0; d < 2; d++) {
            float dropout = d ? 0.25f : 0.0f;
            result ref;
            run(&ref, (prefopt_arch)arch, &serial, 0, dropout, &tb);
            for (int dp = 1; dp <= 2; dp++)
                for (int pr = 1; pr <= size; pr++) {
                    if (size % (dp * pr) || (dropout > 0 && dp > 1) || size == 1)
                        continue; /* dropout masks are per replica: dp changes them */
                    int pc = size / (dp * pr);
                    prefopt_grid g;
                    prefopt_grid_init(&g, MPI_COMM_WORLD, pr, pc, dp, &err);
                    char what[96];
                    snprintf(what, sizeof what, "%s grid %dx%d dp %d dropout %.2f", arch ? "llama" : "gpt2", pr,
                             pc, dp, (double)dropout);
                    result a, c;
                    run(&a, (prefopt_arch)arch, &g, 0, dropout, &tb);
                    compare(what, &a, &ref, tb.nunits);
                    if (pr == 1 && pc > 1) {
                        /* on one process row every product is an existing one-row path (r-wide collectives for
                         * the adapters): forward = base linears + head + 2 per adapter, backward = base dX +
                         * head dX + 4 per adapter (dU, dB, dA, dX), no base dW or head dE */
                        const long nlin = 2 * (arch == PREFOPT_ARCH_GPT2 ? 6 : 7);
                        const long want = 2 * (nlin + 1) + 6 * nlin;
                        if (a.row_calls != want)
                            FAIL("%s: %ld products on the one-row path, expected %ld", what, a.row_calls, want);
                    }
                    run(&c, (prefopt_arch)arch, &g, 1, dropout, &tb);
                    if (c.n != a.n || memcmp(a.grads, c.grads, a.n * sizeof(float)))
                        FAIL("%s: activation checkpointing changed the adapter gradients", what);
                    if (rank == 0)
                        printf("test_lora: %-40s logp[0] %.7f (1x1 %.7f)\n", what, a.s.c[0], ref.s.c[0]);
                    free(a.grads);
                    free(c.grads);
                    prefopt_grid_free(&g);
                    nconf++;
                }
            free(ref.grads);
        }
    int total = 0;
    MPI_Allreduce(&failures, &total, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    if (rank == 0)
        printf("test_lora: %d grid configurations on %d ranks: %s\n", nconf, size,
               total ? "FAILED" : "all checks passed");
    prefopt_grid_free(&serial);
    MPI_Finalize();
    return total ? 1 : 0;
}
