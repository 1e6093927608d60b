/* PSGEMM through prefopt_dmat_gemm at the reference PBLAS panel width (32) and with the pilaenv_ override,
 * against the local-GEMM baseline (each rank multiplies its 1/P slice of the shared dimension with BLIS, then one
 * MPI_Allreduce of C: Megatron's row-parallel layer). Median of several runs; GFLOP/s of the whole product.
 *
 *   mpiexec -n P perf/bench_psgemm [--rows PR] [--reps N] [--panel KB]
 */
#include "prefopt/banner.h"
#include "prefopt/dmat.h"

#include <blis.h>
#include <math.h>
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

typedef struct {
    prefopt_dmat A, B, C;
} ps_ctx;

static void ps_setup(ps_ctx *x, const prefopt_grid *g, const shape *s)
{
    int am = s->ta == 'N' ? s->m : s->k, an = s->ta == 'N' ? s->k : s->m;
    int bm = s->tb == 'N' ? s->k : s->n, bn = s->tb == 'N' ? s->n : s->k;
    prefopt_dmat_init(&x->A, g, am, an, s->mbA, s->nbA);
    prefopt_dmat_init(&x->B, g, bm, bn, s->mbB, s->nbB);
    prefopt_dmat_init(&x->C, g, s->m, s->n, s->mbC, s->nbC);
    x->A.data = malloc(sizeof(float) * prefopt_dmat_local_size(&x->A) + 64);
    x->B.data = malloc(sizeof(float) * prefopt_dmat_local_size(&x->B) + 64);
    x->C.data = calloc(prefopt_dmat_local_size(&x->C) + 16, sizeof(float));
    fill(x->A.data, prefopt_dmat_local_size(&x->A), 1 + g->tp_rank);
    fill(x->B.data, prefopt_dmat_local_size(&x->B), 100 + g->tp_rank);
}

static double ps_run(ps_ctx *x, const prefopt_grid *g, const shape *s, int kb)
{
    prefopt_dmat_set_panel_width(kb);
    MPI_Barrier(g->tp);
    double t0 = MPI_Wtime();
    prefopt_dmat_gemm(s->ta, s->tb, 1.0f, &x->A, &x->B, 0.0f, &x->C);
    MPI_Barrier(g->tp);
    return MPI_Wtime() - t0;
}

/* Each rank: C_p = A[:, K_p] B[K_p, :] with K_p = K/P, then MPI_Allreduce(C). */
typedef struct {
    float *a, *b, *c;
    int kp;
} loc_ctx;

static void loc_setup(loc_ctx *x, const prefopt_grid *g, const shape *s)
{
    x->kp = (s->k + g->tp_size - 1) / g->tp_size;
    x->a = malloc(sizeof(float) * (size_t)s->m * x->kp + 64);
    x->b = malloc(sizeof(float) * (size_t)x->kp * s->n + 64);
    x->c = malloc(sizeof(float) * (size_t)s->m * s->n + 64);
    fill(x->a, (size_t)s->m * x->kp, 3);
    fill(x->b, (size_t)x->kp * s->n, 4);
}

static double loc_run(loc_ctx *x, const prefopt_grid *g, const shape *s)
{
    float one = 1, zero = 0;
    MPI_Barrier(g->tp);
    double t0 = MPI_Wtime();
    bli_sgemm(BLIS_NO_TRANSPOSE, BLIS_NO_TRANSPOSE, s->m, s->n, x->kp, &one, x->a, 1, s->m, x->b, 1, x->kp, &zero,
              x->c, 1, s->m);
    if (g->tp_size > 1)
        MPI_Allreduce(MPI_IN_PLACE, x->c, s->m * s->n, MPI_FLOAT, MPI_SUM, g->tp);
    MPI_Barrier(g->tp);
    return MPI_Wtime() - t0;
}

/* max |C(kb=32) - C(kb)| over the grid: same inputs, the results must agree to fp32 rounding */
static double ps_diff(ps_ctx *x, const prefopt_grid *g, const shape *s, int kb)
{
    size_t n = prefopt_dmat_local_size(&x->C);
    float *ref = malloc(sizeof(float) * n + 16);
    ps_run(x, g, s, 32);
    memcpy(ref, x->C.data, sizeof(float) * n);
    ps_run(x, g, s, kb);
    double md = 0;
    for (size_t i = 0; i < n; i++)
        md = fmax(md, fabs((double)x->C.data[i] - ref[i]));
    MPI_Allreduce(MPI_IN_PLACE, &md, 1, MPI_DOUBLE, MPI_MAX, g->tp);
    free(ref);
    return md;
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
    /* 2048^3, and a GPT-2-small layer: 512-token sequences (mb = T), one per process row (a batch has at least
     * that many), 768 -> 2304 (QKV), with its two backward products (dX = dY W^T, dW = X^T dY) */
    const int M = 512 * g.nprow;
    char n1[64], n2[64], n3[64];
    snprintf(n1, sizeof n1, "gpt2 qkv fwd %dx2304x768 NN", M);
    snprintf(n2, sizeof n2, "gpt2 qkv dX %dx768x2304 NT", M);
    snprintf(n3, sizeof n3, "gpt2 qkv dW 768x2304x%d TN", M);
    const shape shapes[] = {
        {"square 2048^3 NN", 'N', 'N', 2048, 2048, 2048, 128, 128, 128, 128, 128, 128},
        {n1, 'N', 'N', M, 2304, 768, 512, 64, 64, 64, 512, 64},
        {n2, 'N', 'T', M, 768, 2304, 512, 64, 64, 64, 512, 64},
        {n3, 'T', 'N', 768, 2304, M, 512, 64, 512, 64, 64, 64},
    };
    if (rank == 0)
        printf("bench_psgemm: %d ranks, grid %dx%d, BLIS %s arch %s, %d threads/rank, median of %d\n", size, g.nprow,
               g.npcol, prefopt_blis_version(), prefopt_blis_arch(), prefopt_blis_threads(), reps);
    for (size_t i = 0; i < sizeof shapes / sizeof *shapes; i++) {
        const shape *s = &shapes[i];
        double flop = 2.0 * s->m * s->n * s->k;
        ps_ctx px;
        loc_ctx lx;
        ps_setup(&px, &g, s);
        loc_setup(&lx, &g, s);
        long calls0 = prefopt_dmat_pilaenv_calls();
        double diff = ps_diff(&px, &g, s, kb);
        long calls = prefopt_dmat_pilaenv_calls() - calls0;
        /* interleaved, so that load from other jobs on the node hits the three variants alike */
        double a32[64], akb[64], aloc[64];
        loc_run(&lx, &g, s);
        for (int r = 0; r < reps; r++) {
            a32[r] = ps_run(&px, &g, s, 32);
            akb[r] = ps_run(&px, &g, s, kb);
            aloc[r] = loc_run(&lx, &g, s);
        }
        double t32 = median(a32, reps), tkb = median(akb, reps), tloc = median(aloc, reps);
        free(px.A.data), free(px.B.data), free(px.C.data), free(lx.a), free(lx.b), free(lx.c);
        if (rank == 0) {
            printf("  %-30s psgemm kb=32 %7.2f GF/s | kb=%d %7.2f GF/s | local sgemm+allreduce %7.2f GF/s | "
                   "speed-up %.2fx, override/local %.2f, |diff| %.2g, pilaenv_ calls during 2 psgemm %ld\n",
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
