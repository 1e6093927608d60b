/* The local GEMM backends on the engine's shapes (src/dist/gemm_local.c): BLIS sgemm, oneDNN sgemm and oneDNN's
 * bf16 matmul (bf16 inputs, fp32 accumulation and output), each product timed alone with this process's threads:
 * the median of --reps runs after a warm-up (which also creates the bf16 primitive), as GFLOP/s, and the ratios
 * to BLIS within the same run. The shapes are one GPT-2-small layer's forward and backward products at --tokens
 * tokens (activations tokens x features, weights in x out, column-major as the engine calls them), the LM head's,
 * and squares of 1024, 2048 (and 4096 with --big). One JSON line at the end (perf/README.md).
 *
 *   OMP_NUM_THREADS=2 BLIS_NUM_THREADS=2 build/perf/bench_gemm_backends [--tokens 512] [--hidden 768]
 *                                                   [--ffn 3072] [--vocab 50257] [--reps 5] [--big]
 */
#include "prefopt/banner.h"
#include "prefopt/common.h"
#include "prefopt/gemm_local.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int cmp_double(const void *x, const void *y)
{
    double a = *(const double *)x, b = *(const double *)y;
    return (a > b) - (a < b);
}

/* kind 0 BLIS, 1 oneDNN sgemm, 2 oneDNN bf16; median GFLOP/s of reps */
static double median_rate(int kind, char ta, char tb, int m, int n, int k, float beta, int reps, const float *a,
                          const float *b, const uint16_t *ha, const uint16_t *hb, float *c)
{
    int lda = ta == 'N' ? m : k, ldb = tb == 'N' ? k : n;
    double t[64];
    reps = reps > 64 ? 64 : reps;
    for (int r = -1; r < reps; r++) {
        double t0 = prefopt_now();
        if (kind == 2)
            prefopt_gemm_bf16(ta, tb, m, n, k, 1.0f, ha, lda, hb, ldb, beta, c, m);
        else
            prefopt_sgemm_with(kind ? PREFOPT_GEMM_ONEDNN : PREFOPT_GEMM_BLIS, ta, tb, m, n, k, 1.0f, a, lda, b, ldb,
                               beta, c, m);
        if (r >= 0)
            t[r] = prefopt_now() - t0;
    }
    qsort(t, (size_t)reps, sizeof *t, cmp_double);
    double med = reps % 2 ? t[reps / 2] : 0.5 * (t[reps / 2 - 1] + t[reps / 2]);
    return 2.0 * m * n * (double)k / med * 1e-9;
}

int main(int argc, char **argv)
{
    prefopt_blis_select_arch();
    MPI_Init(&argc, &argv);
    int tok = 512, C = 768, F = 3072, V = 50257, reps = 5, big = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--big")) {
            big = 1;
            continue;
        }
        if (i + 1 >= argc)
            break;
        if (!strcmp(argv[i], "--tokens")) tok = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--hidden")) C = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--ffn")) F = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--vocab")) V = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--reps")) reps = atoi(argv[++i]);
    }
    if (reps < 1)
        reps = 1;
    struct { const char *name; char ta, tb; int m, n, k; float beta; } s[] = {
        {"qkv/o fwd  X W   ", 'N', 'N', tok, C, C, 0.0f},
        {"fc fwd     X W   ", 'N', 'N', tok, F, C, 0.0f},
        {"proj fwd   X W   ", 'N', 'N', tok, C, F, 0.0f},
        {"qkv/o dX   dY W^T", 'N', 'T', tok, C, C, 0.0f},
        {"fc dX      dY W^T", 'N', 'T', tok, C, F, 0.0f},
        {"qkv/o dW   X^T dY", 'T', 'N', C, C, tok, 1.0f},
        {"fc dW      X^T dY", 'T', 'N', C, F, tok, 1.0f},
        {"head fwd   X E   ", 'N', 'N', tok, V, C, 0.0f},
        {"head dX    dL E^T", 'N', 'T', tok, C, V, 0.0f},
        {"head dE    X^T dL", 'T', 'N', C, V, tok, 1.0f},
        {"square 1024      ", 'N', 'N', 1024, 1024, 1024, 0.0f},
        {"square 2048      ", 'N', 'N', 2048, 2048, 2048, 0.0f},
        {"square 4096      ", 'N', 'N', 4096, 4096, 4096, 0.0f},
    };
    const int ns = (int)(sizeof s / sizeof s[0]) - (big ? 0 : 1);
    size_t need = 0;
    for (int i = 0; i < ns; i++) {
        size_t x = (size_t)s[i].m * s[i].k, y = (size_t)s[i].k * s[i].n, z = (size_t)s[i].m * s[i].n;
        need = x > need ? x : need;
        need = y > need ? y : need;
        need = z > need ? z : need;
    }
    float *a = prefopt_xmalloc(sizeof(float) * need, "a"), *b = prefopt_xmalloc(sizeof(float) * need, "b");
    float *c = prefopt_xcalloc(need, sizeof(float), "c");
    uint16_t *ha = prefopt_xmalloc(2 * need, "bf16 a"), *hb = prefopt_xmalloc(2 * need, "bf16 b");
    for (size_t i = 0; i < need; i++) {
        a[i] = (float)(i % 13) * 0.01f - 0.06f;
        b[i] = (float)(i % 11) * 0.01f - 0.05f;
    }
    prefopt_bf16_from_f32(ha, a, need);
    prefopt_bf16_from_f32(hb, b, need);
    char cpu[64];
    prefopt_cpu_has_bf16(cpu, sizeof cpu);
    printf("bench_gemm_backends: BLIS %s (%s), %d BLIS threads, OMP_NUM_THREADS %s | CPU bf16: %s | median of %d "
           "(GFLOP/s)\n",
           prefopt_blis_version(), prefopt_blis_arch(), prefopt_blis_threads(),
           getenv("OMP_NUM_THREADS") ? getenv("OMP_NUM_THREADS") : "unset", cpu, reps);
    printf("  %-17s %-2s %6s %6s %6s | %8s %8s %8s | %7s %7s\n", "product", "op", "m", "n", "k", "BLIS", "oneDNN",
           "bf16", "dnn/BLIS", "bf16/BLIS");
    printf("{\"bench\":\"gemm_backends\",\"tokens\":%d,\"hidden\":%d,\"cpu_bf16\":\"%s\",\"rows\":[", tok, C, cpu);
    fflush(stdout);
    char json[8192];
    size_t at = 0;
    double wt[3] = {0, 0, 0}, wf = 0;
    for (int i = 0; i < ns; i++) {
        double r[3];
        for (int kind = 0; kind < 3; kind++)
            r[kind] = median_rate(kind, s[i].ta, s[i].tb, s[i].m, s[i].n, s[i].k, s[i].beta, reps, a, b, ha, hb, c);
        if (i < 10) { /* the engine's products, weighted by FLOPs (each once) */
            double fl = 2.0 * s[i].m * s[i].n * (double)s[i].k;
            wf += fl;
            for (int kind = 0; kind < 3; kind++)
                wt[kind] += fl / (r[kind] * 1e9);
        }
        fprintf(stderr, "  %s %c%c %6d %6d %6d | %8.1f %8.1f %8.1f | %7.2f %7.2f\n", s[i].name, s[i].ta, s[i].tb,
                s[i].m, s[i].n, s[i].k, r[0], r[1], r[2], r[1] / r[0], r[2] / r[0]);
        at += (size_t)snprintf(json + at, sizeof json - at,
                               "%s{\"product\":\"%.10s\",\"op\":\"%c%c\",\"m\":%d,\"n\":%d,\"k\":%d,\"blis\":%.2f,"
                               "\"onednn\":%.2f,\"bf16\":%.2f}",
                               i ? "," : "", s[i].name, s[i].ta, s[i].tb, s[i].m, s[i].n, s[i].k, r[0], r[1], r[2]);
    }
    fprintf(stderr, "  engine products, FLOP-weighted: BLIS %.1f, oneDNN %.1f, bf16 %.1f GFLOP/s (bf16/BLIS %.2f)\n",
            wf / wt[0] * 1e-9, wf / wt[1] * 1e-9, wf / wt[2] * 1e-9, wt[0] / wt[2]);
    printf("%s],\"weighted\":{\"blis\":%.2f,\"onednn\":%.2f,\"bf16\":%.2f},\"bf16_impl\":\"%s\"}\n", json,
           wf / wt[0] * 1e-9, wf / wt[1] * 1e-9, wf / wt[2] * 1e-9, prefopt_gemm_bf16_impl());
    free(a), free(b), free(c), free(ha), free(hb);
    MPI_Finalize();
    return 0;
}
