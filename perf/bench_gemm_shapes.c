/* The BLIS ceiling of a DPO step: every sgemm shape of one transformer layer (forward and backward, as the
 * engine calls them: activations tokens x features, weights in x out, column-major) and of the LM head, timed
 * alone with this process's BLIS threads (best of 5 after a warm-up), weighted by how often a DPO step runs each
 * (policy forward + backward, reference forward), against the 1024^3 rate. The weighted rate bounds the MFU the
 * engine can reach at this many tokens whatever it does outside BLIS (perf/README.md).
 *
 *   BLIS_NUM_THREADS=2 build/perf/bench_gemm_shapes [--tokens 512] [--hidden 768] [--ffn 3072] [--vocab 50257]
 *                                                   [--T 256] [--head-dim 64]
 */
#include "prefopt/banner.h"
#include "prefopt/common.h"

#include <blis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static double best_rate(char ta, char tb, int m, int n, int k, float *a, float *b, float *c)
{
    const float one = 1.0f;
    int lda = ta == 'N' ? m : k, ldb = tb == 'N' ? k : n, ldc = m;
    double best = 1e30;
    for (int r = -1; r < 5; r++) {
        double t0 = prefopt_now();
        sgemm_(&ta, &tb, &m, &n, &k, &one, a, &lda, b, &ldb, &one, c, &ldc);
        double t = prefopt_now() - t0;
        if (r >= 0 && t < best)
            best = t;
    }
    return 2.0 * m * n * k / best;
}

int main(int argc, char **argv)
{
    prefopt_blis_select_arch();
    MPI_Init(&argc, &argv);
    int tok = 512, C = 768, F = 3072, V = 50257, T = 256, D = 64;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--tokens")) tok = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--hidden")) C = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--ffn")) F = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--vocab")) V = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--T")) T = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--head-dim")) D = atoi(argv[i + 1]);
    }
    size_t big = (size_t)(V > F ? V : F) * (size_t)(tok > C ? tok : C) + (size_t)1024 * 1024;
    float *a = prefopt_xcalloc(big, sizeof(float), "a"), *b = prefopt_xcalloc(big, sizeof(float), "b");
    float *c = prefopt_xcalloc(big, sizeof(float), "c");
    for (size_t i = 0; i < big; i++) {
        a[i] = (float)(i % 13) * 0.01f;
        b[i] = (float)(i % 11) * 0.01f;
    }
    double peak = best_rate('N', 'N', 1024, 1024, 1024, a, b, c);
    /* name, transa, transb, m, n, k, calls per step: forward runs twice (policy + reference), backward once */
    struct { const char *name; char ta, tb; int m, n, k; double calls; } s[] = {
        {"qkv/o fwd  X W      ", 'N', 'N', tok, C, C, 2 * 4},
        {"fc fwd     X W      ", 'N', 'N', tok, F, C, 2},
        {"proj fwd   X W      ", 'N', 'N', tok, C, F, 2},
        {"qkv/o dX   dY W^T   ", 'N', 'T', tok, C, C, 4},
        {"qkv/o dW   X^T dY   ", 'T', 'N', C, C, tok, 4},
        {"fc dX      dY W^T   ", 'N', 'T', tok, C, F, 1},
        {"fc dW      X^T dY   ", 'T', 'N', C, F, tok, 1},
        {"proj dX    dY W^T   ", 'N', 'T', tok, F, C, 1},
        {"proj dW    X^T dY   ", 'T', 'N', F, C, tok, 1},
        {"attn QK^T (per head)", 'T', 'N', T, T, D, 0},
        {"attn PV   (per head)", 'N', 'N', T, D, T, 0},
        {"head fwd   X E      ", 'N', 'N', tok, V, C, 2},
        {"head dX    dL E^T   ", 'N', 'T', tok, C, V, 1},
        {"head dE    X^T dL   ", 'T', 'N', C, V, tok, 1},
    };
    const int ns = (int)(sizeof s / sizeof s[0]);
    /* attention GEMMs per step: (tokens / T) sequences x (C / D) heads; 2 in forward (x2 models), 4 in backward */
    double heads = (double)tok / T * (C / D);
    s[9].calls = heads * (2 + 2);
    s[10].calls = heads * (2 + 2);
    printf("bench_gemm_shapes: BLIS %s (%s), %d threads | tokens %d, hidden %d, ffn %d, vocab %d, T %d | sgemm "
           "1024^3 %.1f GFLOP/s\n", prefopt_blis_version(), prefopt_blis_arch(), prefopt_blis_threads(), tok, C, F, V,
           T, peak * 1e-9);
    double tflop_layer = 0, tsec_layer = 0, tflop_head = 0, tsec_head = 0;
    for (int i = 0; i < ns; i++) {
        double r = best_rate(s[i].ta, s[i].tb, s[i].m, s[i].n, s[i].k, a, b, c);
        double fl = 2.0 * s[i].m * s[i].n * s[i].k * s[i].calls;
        if (i < 11)
            tflop_layer += fl, tsec_layer += fl / r;
        else
            tflop_head += fl, tsec_head += fl / r;
        printf("  %s %c%c m %6d n %6d k %6d: %7.1f GFLOP/s (%.2f of 1024^3), %6.1f calls/step\n", s[i].name, s[i].ta,
               s[i].tb, s[i].m, s[i].n, s[i].k, r * 1e-9, r / peak, s[i].calls);
    }
    printf("FLOP-weighted per step: layer %.1f GFLOP/s (%.3f of peak), head %.1f GFLOP/s (%.3f)\n",
           tflop_layer / tsec_layer * 1e-9, tflop_layer / tsec_layer / peak, tflop_head / tsec_head * 1e-9,
           tflop_head / tsec_head / peak);
    printf("{\"bench\":\"gemm_shapes\",\"threads\":%d,\"tokens\":%d,\"hidden\":%d,\"peak_gflops\":%.2f,"
           "\"layer_fraction\":%.4f,\"head_fraction\":%.4f,\"layer_flops\":%.0f,\"head_flops\":%.0f}\n",
           prefopt_blis_threads(), tok, C, peak * 1e-9, tflop_layer / tsec_layer / peak, tflop_head / tsec_head / peak,
           tflop_layer, tflop_head);
    free(a), free(b), free(c);
    MPI_Finalize();
    return 0;
}
