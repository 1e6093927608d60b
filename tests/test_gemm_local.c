/* The local GEMM backends (src/dist/gemm_local.c) against a double-precision triple loop written from the
 * definition: BLIS and oneDNN sgemm, and the oneDNN bf16 matmul, for every transpose pair, leading dimensions
 * larger than the rows, alpha/beta (beta 0 on NaN garbage), odd sizes; the primitive cache (one creation per
 * shape); bf16 rounding (nearest even, NaN/Inf kept) and the cpuid answer under PREFOPT_BF16_PRETEND_MISSING.
 *
 * Tolerances. fp32: |C - ref| <= 4 k u32 sum_p |a_ip b_pj| + 4 u32 |beta c| (u32 = 2^-24, the classic bound for a
 * k-term dot product, with slack for blocked summation orders). bf16: the inputs are bf16 values and the
 * reference multiplies the same values, so the products are exact in fp32 (8 + 8 significant bits) and only the
 * fp32 accumulation errs: the same bound. */
#include "prefopt/gemm_local.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures;
#define CHECK(cond, ...)                                                                                     \
    do {                                                                                                     \
        if (!(cond)) {                                                                                       \
            failures++;                                                                                      \
            fprintf(stderr, "test_gemm_local: %s:%d: ", __FILE__, __LINE__);                                \
            fprintf(stderr, __VA_ARGS__);                                                                    \
            fputc('\n', stderr);                                                                             \
        }                                                                                                    \
    } while (0)

static float val(int seed, int i) { return (float)(((seed * 7919 + i * 131) % 197) - 98) / 64.0f; }

/* kind: 0 BLIS, 1 oneDNN sgemm, 2 bf16 */
static void gemm_case(int kind, char ta, char tb, int m, int n, int k, int pad, float alpha, float beta)
{
    const int tA = ta == 'T', tB = tb == 'T';
    int lda = (tA ? k : m) + pad, ldb = (tB ? n : k) + pad, ldc = m + pad;
    size_t na = (size_t)lda * (tA ? m : k), nb = (size_t)ldb * (tB ? k : n), nc = (size_t)ldc * n;
    float *a = malloc(sizeof(float) * na), *b = malloc(sizeof(float) * nb), *c = malloc(sizeof(float) * nc);
    float *c0 = malloc(sizeof(float) * nc);
    uint16_t *ha = malloc(2 * na), *hb = malloc(2 * nb);
    for (size_t i = 0; i < na; i++)
        a[i] = val(1, (int)i) * (kind == 2 ? 1.0f + 1.0f / 3.0f : 1.0f); /* bf16: values that must round */
    for (size_t i = 0; i < nb; i++)
        b[i] = val(2, (int)i);
    for (size_t i = 0; i < nc; i++)
        c0[i] = c[i] = beta == 0.0f ? NAN : val(3, (int)i);
    if (kind == 2) { /* the reference multiplies the rounded values */
        prefopt_bf16_from_f32(ha, a, na);
        prefopt_bf16_from_f32(hb, b, nb);
        prefopt_bf16_to_f32(a, ha, na);
        prefopt_bf16_to_f32(b, hb, nb);
        prefopt_gemm_bf16(ta, tb, m, n, k, alpha, ha, lda, hb, ldb, beta, c, ldc);
    } else {
        prefopt_sgemm_with(kind ? PREFOPT_GEMM_ONEDNN : PREFOPT_GEMM_BLIS, ta, tb, m, n, k, alpha, a, lda, b, ldb,
                           beta, c, ldc);
    }
    double worst = 0;
    for (int j = 0; j < n; j++)
        for (int i = 0; i < m; i++) {
            double s = 0, sa = 0;
            for (int p = 0; p < k; p++) {
                double x = tA ? a[(size_t)i * lda + p] : a[(size_t)p * lda + i];
                double y = tB ? b[(size_t)p * ldb + j] : b[(size_t)j * ldb + p];
                s += x * y;
                sa += fabs(x * y);
            }
            double cv = beta == 0.0f ? 0.0 : c0[(size_t)j * ldc + i];
            double ref = alpha * s + beta * cv;
            double tol = 4.0 * k * 0x1p-24 * fabs(alpha) * sa + 4.0 * 0x1p-24 * fabs(beta * cv) + 1e-30;
            double err = fabs(c[(size_t)j * ldc + i] - ref);
            if (!(err <= tol) && err / tol > worst)
                worst = err / tol;
        }
    /* the padding rows of C are not touched */
    int touched = 0;
    for (int j = 0; j < n; j++)
        for (int i = m; i < ldc; i++)
            if (memcmp(&c[(size_t)j * ldc + i], &c0[(size_t)j * ldc + i], sizeof(float)))
                touched = 1;
    CHECK(worst == 0, "kind %d %c%c m=%d n=%d k=%d pad=%d alpha=%g beta=%g: error %.2f x the bound", kind, ta, tb, m,
          n, k, pad, alpha, beta, worst);
    CHECK(!touched, "kind %d %c%c: C's padding rows were written", kind, ta, tb);
    free(a);
    free(b);
    free(c);
    free(c0);
    free(ha);
    free(hb);
}

static void rounding(void)
{
    struct {
        float in, out;
    } cases[] = {
        {1.0f, 1.0f},
        {1.0f + 0x1p-8f, 1.0f},                     /* halfway: to even (down) */
        {1.0f + 3 * 0x1p-8f, 1.0f + 0x1p-6f},       /* halfway: to even (up) */
        {1.0f + 0x1p-8f + 0x1p-20f, 1.0f + 0x1p-7f}, /* above halfway: up */
        {-2.5f, -2.5f},
        {0x1.ff8p127f, INFINITY},                  /* halfway above bf16's largest finite: overflows */
        {INFINITY, INFINITY},
        {-INFINITY, -INFINITY},
        {1e-40f, 1e-40f},                           /* subnormal kept (rounded on its own grid) */
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        float got = prefopt_bf16_value(prefopt_bf16_round(cases[i].in));
        if (cases[i].in == 1e-40f)
            CHECK(fabsf(got - cases[i].in) <= 0x1p-133f, "bf16(1e-40) = %g", got);
        else
            CHECK(got == cases[i].out, "bf16(%a) = %a, want %a", cases[i].in, got, cases[i].out);
    }
    CHECK(isnan(prefopt_bf16_value(prefopt_bf16_round(NAN))), "NaN rounds to NaN");
    union {
        uint32_t u;
        float f;
    } snan = {0x7f800001u}; /* a NaN whose payload sits in the dropped half must not become Inf */
    CHECK(isnan(prefopt_bf16_value(prefopt_bf16_round(snan.f))), "a low-payload NaN rounds to NaN");
}

int main(void)
{
    rounding();
    char what[64];
    int has = prefopt_cpu_has_bf16(what, sizeof what);
    setenv("PREFOPT_BF16_PRETEND_MISSING", "1", 1);
    char w2[64];
    CHECK(!prefopt_cpu_has_bf16(w2, sizeof w2), "PREFOPT_BF16_PRETEND_MISSING=1 still reports bf16");
    CHECK(strstr(w2, "missing") != NULL, "the forced answer names the missing features: %s", w2);
    unsetenv("PREFOPT_BF16_PRETEND_MISSING");
    const char tr[2] = {'N', 'T'};
    const int shapes[][3] = {{1, 1, 1}, {7, 5, 3}, {33, 17, 65}, {64, 96, 128}, {130, 70, 257}};
    for (int kind = 0; kind < 3; kind++) {
        if (kind == 2 && !has) {
            printf("test_gemm_local: bf16 products skipped: this CPU has no bf16 instructions (%s)\n", what);
            break;
        }
        for (int s = 0; s < 5; s++)
            for (int x = 0; x < 2; x++)
                for (int y = 0; y < 2; y++) {
                    gemm_case(kind, tr[x], tr[y], shapes[s][0], shapes[s][1], shapes[s][2], 0, 1.0f, 0.0f);
                    gemm_case(kind, tr[x], tr[y], shapes[s][0], shapes[s][1], shapes[s][2], 3, 0.75f, 1.0f);
                    gemm_case(kind, tr[x], tr[y], shapes[s][0], shapes[s][1], shapes[s][2], 1, -1.5f, -0.5f);
                }
    }
    if (has) {
        long before = prefopt_gemm_bf16_created();
        for (int r = 0; r < 3; r++)
            gemm_case(2, 'N', 'T', 40, 24, 56, 2, 1.0f, 1.0f);
        CHECK(prefopt_gemm_bf16_created() - before == 1, "one shape made %ld primitives in 3 calls",
              prefopt_gemm_bf16_created() - before);
        printf("test_gemm_local: bf16 matmul implementation: %s (CPU: %s)\n", prefopt_gemm_bf16_impl(), what);
        CHECK(strncmp(prefopt_gemm_bf16_impl(), "ref", 3) != 0, "bf16 matmul runs oneDNN's reference kernel (%s)",
              prefopt_gemm_bf16_impl());
    }
    if (failures) {
        fprintf(stderr, "test_gemm_local: %d failures\n", failures);
        return 1;
    }
    printf("test_gemm_local: ok\n");
    return 0;
}
