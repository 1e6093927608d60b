/* The blocked attention's two block products (src/model/attention_blocked.c) in fp32 BLIS against oneDNN's bf16
 * matmul, on one thread (each attention worker is one OpenMP thread): S = Q_i K_j^T (B x B, k = head_dim) and
 * O_i += P V_j (B x D, k = B), for blocks B = 64, 128 and head_dim 64, 128. The bf16 time includes rounding the
 * operands (Q_i, K_j, P, V_j) to bf16, which the kernel would have to do per block (Q and K could be rounded
 * once per head: reported both ways). Medians of REPS (default 2000) timed block pairs.
 *   OMP_NUM_THREADS=1 build/bench_attn_blocks [REPS]    (prints a table; perf/README.md) */
#include "prefopt/common.h"
#include "prefopt/gemm_local.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *t, int n)
{
    qsort(t, (size_t)n, sizeof *t, cmp);
    return t[n / 2];
}

int main(int argc, char **argv)
{
    const int reps = argc > 1 ? atoi(argv[1]) : 2000;
    char what[128];
    if (!prefopt_cpu_has_bf16(what, sizeof what)) {
        printf("no bf16 on this CPU (%s)\n", what);
        return 0;
    }
    printf("one block pair (S = Q K^T, then O += P V), 1 thread, medians of %d; GFLOP/s of the two products\n", reps);
    printf("| B | D | fp32 BLIS us | bf16 oneDNN us (products only) | + rounding P, V | + rounding Q, K too | "
           "fp32/bf16 time (products+P,V) |\n|---:|---:|---:|---:|---:|---:|---:|\n");
    double *t = malloc(sizeof(double) * 4 * (size_t)reps);
    for (int B = 64; B <= 128; B *= 2)
        for (int D = 64; D <= 128; D *= 2) {
            float *q = prefopt_xmalloc(sizeof(float) * (size_t)(3 * B * D + 2 * B * B), "bench");
            float *k = q + B * D, *v = k + B * D, *S = v + B * D, *o = S + B * B;
            uint16_t *h = prefopt_xmalloc(sizeof(uint16_t) * (size_t)(3 * B * D + B * B), "bench");
            uint16_t *hq = h, *hk = hq + B * D, *hv = hk + B * D, *hp = hv + B * D;
            for (int i = 0; i < 3 * B * D + B * B; i++)
                q[i] = (float)((i * 2654435761u) % 1000) * 1e-3f - 0.5f;
            /* row-major operands as the kernel holds them are column-major transposes: S^T = K Q^T, O^T = V^T P^T */
            for (int r = 0; r < 4 * reps; r++) {
                const int kind = r % 4;
                double t0 = now_s();
                if (kind == 0) {
                    prefopt_sgemm_with(PREFOPT_GEMM_BLIS, 'T', 'N', B, B, D, 1.0f, k, D, q, D, 0.0f, S, B);
                    prefopt_sgemm_with(PREFOPT_GEMM_BLIS, 'N', 'N', D, B, B, 1.0f, v, D, S, B, 1.0f, o, D);
                } else {
                    if (kind == 3) {
                        prefopt_bf16_from_f32(hq, q, (size_t)B * D);
                        prefopt_bf16_from_f32(hk, k, (size_t)B * D);
                    }
                    prefopt_gemm_bf16('T', 'N', B, B, D, 1.0f, hk, D, hq, D, 0.0f, S, B);
                    if (kind >= 2) {
                        prefopt_bf16_from_f32(hp, S, (size_t)B * B);
                        prefopt_bf16_from_f32(hv, v, (size_t)B * D);
                    }
                    prefopt_gemm_bf16('N', 'N', D, B, B, 1.0f, hv, D, hp, B, 1.0f, o, D);
                }
                t[kind * reps + r / 4] = now_s() - t0;
            }
            double m[4];
            for (int kind = 0; kind < 4; kind++)
                m[kind] = median(t + kind * reps, reps);
            const double fl = 4.0 * B * B * D;
            printf("| %d | %d | %.1f (%.0f) | %.1f (%.0f) | %.1f | %.1f | %.2f |\n", B, D, 1e6 * m[0], fl / m[0] * 1e-9,
                   1e6 * m[1], fl / m[1] * 1e-9, 1e6 * m[2], 1e6 * m[3], m[0] / m[2]);
            free(q);
            free(h);
        }
    printf("bf16 implementation: %s\n", prefopt_gemm_bf16_impl());
    free(t);
    return 0;
}
