/* PSGEMM through prefopt_dmat_gemm at the reference PBLAS panel width (32) and with the pilaenv_ override,
 * against the local-GEMM baseline (each rank multiplies its 1/P slice of the shared dimension with BLIS, then one
 * MPI_Allreduce of C: Megatron's row-parallel layer). Median of several runs; GFLOP/s of the whole product.
 *
 *   mpiexec -n P perf/bench_psgemm [--rows PR] [--reps N] [--panel KB]
 */
#include "prefopt/banner.h"
#include "prefopt/dmat.h"

#include <blis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *t, int n)
{
    qsort(t, n, sizeof *t, cmp);
    return n % 2 ? t[n / 2] : 0.5 * (t[n / 2 - 1] + t[n / 2]);
}

static void fill(float *x, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++) {
        seed = seed * 1664525u + 1013904223u;
        x[i] = (float)((seed >> 9) & 0xffff) / 65536.0f - 0.5f;
    }
}

typedef struct {
    const char *name;
    char ta, tb;
    int m, n, k, mbA, nbA, mbB, nbB, mbC, nbC;
} shape;

static double time_psgemm(const prefopt_grid *g, const shape *s, int kb, int reps, double *maxdiff_out,
                          float **result)
{
    prefopt_dmat A, B, C;
    int am = s->ta == 'N' ? s->m : s->k, an = s->ta == 'N' ? s->k : s->m;
    int bm = s->tb == 'N' ? s->k : s->n, bn = s->tb == 'N' ? s->n : s->k;
    prefopt_dmat_init(&A, g, am, an, s->mbA, s->nbA);
    prefopt_dmat_init(&B, g, bm, bn, s->mbB, s->nbB);
    prefopt_dmat_init(&C, g, s->m, s->n, s->mbC, s->nbC);
    A.data = malloc(sizeof(float) * prefopt_dmat_local_size(&A) + 64);
    B.data = malloc(sizeof(float) * prefopt_dmat_local_size(&B) + 64);
    C.data = calloc(prefopt_dmat_local_size(&C) + 16, sizeof(float));
    fill(A.data, prefopt_dmat_local_size(&A), 1 + g->tp_rank);
    fill(B.data, prefopt_dmat_local_size(&B), 100 + g->tp_rank);
    prefopt_dmat_set_panel_width(kb);
    double t[64];
    for (int r = -1; r < reps; r++) {
        MPI_Barrier(g->tp);
        double t0 = MPI_Wtime();
        prefopt_dmat_gemm(s->ta, s->tb, 1.0f, &A, &B, 0.0f, &C);
        MPI_Barrier(g->tp);
        if (r >= 0)
            t[r] = MPI_Wtime() - t0;
    }
    /* keep the product to compare panel widths: same inputs, results must agree to fp32 rounding */
    size_t n = prefopt_dmat_local_size(&C);
    if (!*result) {
        *result = malloc(sizeof(float) * n + 16);
        memcpy(*result, C.data, sizeof(float) * n);
        *maxdiff_out = 0;
    } else {
        double md = 0;
        for (size_t i = 0; i < n; i++) {
            double d = C.data[i] - (*result)[i];
            md = d > md ? d : -d > md ? -d : md;
        }
        MPI_Allreduce(MPI_IN_PLACE, &md, 1, MPI_DOUBLE, MPI_MAX, g->tp);
        *maxdiff_out = md;
    }
    free(A.data), free(B.data), free(C.data);
    return median(t, reps);
}

/* Each rank: C_p = A[:, K_p] B[K_p, :] with K_p = K/P, then MPI_Allreduce(C). */
static double time_local(const prefopt_grid *g, const shape *s, int reps)
{
    int P = g->tp_size, kp = (s->k + P - 1) / P;
    float *a = malloc(sizeof(float) * (size_t)s->m * kp + 64), *b = malloc(sizeof(float) * (size_t)kp * s->n + 64);
    float *c = malloc(sizeof(float) * (size_t)s->m * s->n + 64);
    fill(a, (size_t)s->m * kp, 3);
    fill(b, (size_t)kp * s->n, 4);
    float one = 1, zero = 0;
    double t[64];
    for (int r = -1; r < reps; r++) {
        MPI_Barrier(g->tp);
        double t0 = MPI_Wtime();
        bli_sgemm(BLIS_NO_TRANSPOSE, BLIS_NO_TRANSPOSE, s->m, s->n, kp, &one, a, 1, s->m, b, 1, kp, &zero, c, 1, s->m);
        if (P > 1)
            MPI_Allreduce(MPI_IN_PLACE, c, s->m * s->n, MPI_FLOAT, MPI_SUM, g->tp);
        if (r >= 0)
            t[r] = MPI_Wtime() - t0;
    }
    free(a), free(b), free(c);
    return median(t, reps);
}

int main(int argc, char **argv)
{
    prefopt_blis_select_arch();
    MPI_Init(&argc, &argv);
    int size, rank, rows = 1, reps = 5, panel = 0;
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--rows"))
            rows = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--reps"))
            reps = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--panel"))
            panel = atoi(argv[i + 1]);
    }
    if (reps < 1 || reps > 64)
        reps = 5;
    prefopt_grid g;
    prefopt_err err = {0};
    if (prefopt_grid_init(&g, MPI_COMM_WORLD, rows, size / (rows > 0 ? rows : 1), 1, &err)) {
        if (rank == 0)
            fprintf(stderr, "bench_psgemm: %s\n", err.msg);
        MPI_Finalize();
        return 2;
    }
    prefopt_dmat_set_panel_width(panel);
    const int kb = prefopt_dmat_panel_width();
    /* 2048^3, and a GPT-2-small layer: 512 tokens (one sequence, mb = T) x 768 -> 2304 (QKV), with its two
     * backward products (dX = dY W^T, dW = X^T dY) */
    const shape shapes[] = {
        {"square 2048^3 NN", 'N', 'N', 2048, 2048, 2048, 128, 128, 128, 128, 128, 128},
        {"gpt2 qkv fwd 512x2304x768 NN", 'N', 'N', 512, 2304, 768, 512, 64, 64, 64, 512, 64},
        {"gpt2 qkv dX 512x768x2304 NT", 'N', 'T', 512, 768, 2304, 512, 64, 64, 64, 512, 64},
        {"gpt2 qkv dW 768x2304x512 TN", 'T', 'N', 768, 2304, 512, 512, 64, 512, 64, 64, 64},
    };
    if (rank == 0)
        printf("bench_psgemm: %d ranks, grid %dx%d, BLIS %s arch %s, %d threads/rank, median of %d\n", size, g.nprow,
               g.npcol, prefopt_blis_version(), prefopt_blis_arch(), prefopt_blis_threads(), reps);
    for (size_t i = 0; i < sizeof shapes / sizeof *shapes; i++) {
        const shape *s = &shapes[i];
        double flop = 2.0 * s->m * s->n * s->k, diff = 0;
        float *res = NULL;
        long calls0 = prefopt_dmat_pilaenv_calls();
        double t32 = time_psgemm(&g, s, 32, reps, &diff, &res);
        double tkb = time_psgemm(&g, s, kb, reps, &diff, &res);
        long calls = prefopt_dmat_pilaenv_calls() - calls0;
        free(res);
        double tloc = time_local(&g, s, reps);
        if (rank == 0) {
            printf("  %-32s psgemm kb=32 %7.2f GF/s | kb=%d %7.2f GF/s | local sgemm+allreduce %7.2f GF/s | "
                   "speed-up %.2fx, override/local %.2f, |diff| %.2g, pilaenv_ calls %ld\n",
                   s->name, flop / t32 * 1e-9, kb, flop / tkb * 1e-9, flop / tloc * 1e-9, t32 / tkb, tloc / tkb, diff,
                   calls);
            printf("{\"bench\":\"psgemm\",\"shape\":\"%s\",\"ranks\":%d,\"grid\":\"%dx%d\",\"panel\":%d,"
                   "\"t_kb32_s\":%.6f,\"t_override_s\":%.6f,\"t_local_s\":%.6f,\"gflops_kb32\":%.3f,"
                   "\"gflops_override\":%.3f,\"gflops_local\":%.3f,\"max_abs_diff\":%.3g}\n",
                   s->name, size, g.nprow, g.npcol, kb, t32, tkb, tloc, flop / t32 * 1e-9, flop / tkb * 1e-9,
                   flop / tloc * 1e-9, diff);
        }
    }
    prefopt_grid_free(&g);
    MPI_Finalize();
    return 0;
}
