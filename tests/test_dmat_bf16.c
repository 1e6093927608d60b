/* bf16 distributed products (src/dist/dmat_gemm_bf16.c) on every grid shape of the world size (1, 2, 4 ranks:
 * 1x1, 1x2, 2x1, 1x4, 2x2, 4x1): the engine's three products (Y = X W, dX = dY W^T, dW += X^T dY) and the LM
 * head's sub-matrix forms (row offsets on a chunk boundary, beta 0 on NaN), with and without a bf16 copy of the
 * weight operand, against a double-precision loop over the bf16-rounded inputs written from the definition.
 *
 * Bound: the rounded inputs multiply exactly in fp32 (8 x 8 significant bits), so only fp32 sums err: at most k
 * additions in the local product and P or Q more in the reduce-scatter, |err| <= (k + P + Q) u32 sum |a b| with
 * u32 = 2^-24; checked with a factor 4 of slack for the summation order. No product may fall back to psgemm_. */
#include "prefopt/dmat.h"
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
            fprintf(stderr, "test_dmat_bf16: %s:%d: ", __FILE__, __LINE__);                                 \
            fprintf(stderr, __VA_ARGS__);                                                                    \
            fputc('\n', stderr);                                                                             \
        }                                                                                                    \
    } while (0)

/* values that are not bf16 numbers, so rounding matters */
static float val(int seed, int i, int j) { return (float)(((seed * 7919 + i * 131 + j * 31) % 97) - 48) / 29.0f; }

typedef struct {
    prefopt_dmat d;
    float *full;
    uint16_t *half;
} mat;

static void mat_make(mat *x, const prefopt_grid *g, int m, int n, int mb, int nb, int seed, int with_half)
{
    prefopt_dmat_init(&x->d, g, m, n, mb, nb);
    x->full = malloc(sizeof(float) * (size_t)m * n + 4);
    for (int j = 0; j < n; j++)
        for (int i = 0; i < m; i++)
            x->full[(size_t)j * m + i] = val(seed, i, j);
    x->d.data = malloc(sizeof(float) * prefopt_dmat_local_size(&x->d) + 4);
    prefopt_dmat_scatter(&x->d, x->full);
    x->half = NULL;
    if (with_half) {
        x->half = malloc(2 * prefopt_dmat_local_size(&x->d) + 4);
        prefopt_bf16_from_f32(x->half, x->d.data, prefopt_dmat_local_size(&x->d));
        x->d.half = x->half;
    }
}

static void mat_free(mat *x)
{
    free(x->full);
    free(x->d.data);
    free(x->half);
}

static double rb(float v) { return prefopt_bf16_value(prefopt_bf16_round(v)); }

/* C[ic:ic+m, :] := alpha op(A[ia:...]) op(B[ib:...]) + beta C on whole columns */
static void product(const prefopt_grid *g, char ta, char tb, int m, int n, int k, const int blk[6], int ia, int ib,
                    int ic, int a_half, int b_half, float beta, int extra_rows)
{
    const int tA = ta == 'T', tB = tb == 'T';
    mat A, B, C;
    int am = tA ? k : m, an = tA ? m : k, bm = tB ? n : k, bn = tB ? k : n;
    mat_make(&A, g, am + ia + extra_rows, an, blk[0], blk[1], 1, a_half);
    mat_make(&B, g, bm + ib + extra_rows, bn, blk[2], blk[3], 2, b_half);
    mat_make(&C, g, m + ic + extra_rows, n, blk[4], blk[5], 3, 0);
    const int Cm = C.d.m;
    float *c0 = malloc(sizeof(float) * (size_t)Cm * n);
    memcpy(c0, C.full, sizeof(float) * (size_t)Cm * n);
    if (beta == 0.0f) { /* BLAS semantics: C is not read, NaN there must not leak */
        for (int j = 0; j < n; j++)
            for (int i = ic; i < ic + m; i++)
                C.full[(size_t)j * Cm + i] = NAN;
        prefopt_dmat_scatter(&C.d, C.full);
    }
    const float alpha = 0.75f;
    long fb = prefopt_dmat_gemm_bf16_fallbacks();
    prefopt_dmat_gemm_sub_bf16(ta, tb, m, n, k, alpha, &A.d, ia, 0, &B.d, ib, 0, beta, &C.d, ic, 0);
    CHECK(prefopt_dmat_gemm_bf16_fallbacks() == fb, "grid %dx%d %c%c: fell back to psgemm", g->nprow, g->npcol, ta, tb);
    float *got = malloc(sizeof(float) * (size_t)Cm * n);
    prefopt_dmat_gather(&C.d, got);
    double worst = 0;
    for (int j = 0; j < n; j++)
        for (int i = 0; i < Cm; i++) {
            double want = c0[(size_t)j * Cm + i], tol = 0;
            if (i >= ic && i < ic + m) {
                double s = 0, sa = 0;
                for (int p = 0; p < k; p++) {
                    double x = tA ? rb(A.full[(size_t)(i - ic) * A.d.m + ia + p]) : rb(A.full[(size_t)p * A.d.m + ia + i - ic]);
                    double y = tB ? rb(B.full[(size_t)p * B.d.m + ib + j]) : rb(B.full[(size_t)j * B.d.m + ib + p]);
                    s += x * y;
                    sa += fabs(x * y);
                }
                want = alpha * s + (beta != 0.0f ? beta * want : 0.0);
                tol = 4.0 * (k + g->nprow + g->npcol) * 0x1p-24 * (fabs(alpha) * sa + fabs(beta * c0[(size_t)j * Cm + i]));
            }
            double err = fabs(got[(size_t)j * Cm + i] - want);
            if (!(err <= tol))
                worst = fmax(worst, isnan(err) ? INFINITY : err / (tol > 0 ? tol : 1e-30));
        }
    CHECK(worst == 0, "grid %dx%d %c%c m=%d n=%d k=%d ia=%d ib=%d ic=%d half=%d%d beta=%g: error %.3g x the bound",
          g->nprow, g->npcol, ta, tb, m, n, k, ia, ib, ic, a_half, b_half, beta, worst);
    free(c0);
    free(got);
    mat_free(&A);
    mat_free(&B);
    mat_free(&C);
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    int size, rank;
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    char what[64];
    if (!prefopt_cpu_has_bf16(what, sizeof what)) {
        if (rank == 0)
            printf("test_dmat_bf16: skipped: this CPU has no bf16 instructions (%s)\n", what);
        MPI_Finalize();
        return 77;
    }
    int ngrids = 0;
    for (int pr = 1; pr <= size; pr++) {
        if (size % pr)
            continue;
        prefopt_grid g;
        prefopt_err err = {0};
        if (prefopt_grid_init(&g, MPI_COMM_WORLD, pr, size / pr, 1, &err)) {
            fprintf(stderr, "%s\n", err.msg);
            MPI_Abort(MPI_COMM_WORLD, 1);
        }
        const int T = 6, C = 20, O = 36; /* tokens per sequence, in and out features (blocks 4 and 5) */
        const int ntok = 4 * T * pr;        /* several sequences per process row */
        /* {mbA, nbA, mbB, nbB, mbC, nbC} */
        const int fwd[6] = {T, 4, 4, 5, T, 5}, dgrad[6] = {T, 5, 4, 5, T, 4}, wgrad[6] = {T, 4, T, 5, 4, 5};
        for (int h = 0; h < 2; h++)
            for (int bz = 0; bz < 2; bz++) {
                float beta = bz ? 1.0f : 0.0f;
                product(&g, 'N', 'N', ntok, O, C, fwd, 0, 0, 0, 0, h, beta, 0);   /* Y = X W */
                product(&g, 'N', 'T', ntok, C, O, dgrad, 0, 0, 0, 0, h, beta, 0); /* dX = dY W^T */
                product(&g, 'T', 'N', C, O, ntok, wgrad, 0, 0, 0, 0, 0, beta, 0); /* dW += X^T dY */
                /* the head's chunk of rows: X rows from a chunk boundary (a multiple of nprow sequences) */
                const int r0 = pr * T, rows = 2 * pr * T;
                product(&g, 'N', 'N', rows, O, C, fwd, r0, 0, 0, 0, h, beta, T);
                product(&g, 'N', 'T', rows, C, O, dgrad, 0, 0, r0, 0, h, beta, T);
                product(&g, 'T', 'N', C, O, rows, wgrad, r0, 0, 0, 0, 0, beta, T);
            }
        /* blocks that do not divide the sizes, a short last block on some ranks */
        const int odd[6] = {5, 3, 3, 7, 5, 7};
        product(&g, 'N', 'N', 5 * pr * 3 + 2, 23, 17, odd, 0, 0, 0, 0, 1, 1.0f, 0);
        prefopt_grid_free(&g);
        ngrids++;
    }
    int total = 0;
    MPI_Allreduce(&failures, &total, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    if (rank == 0)
        printf("test_dmat_bf16: %d grids on %d ranks (bf16 matmul: %s): %s\n", ngrids, size, prefopt_gemm_bf16_impl(),
               total ? "FAILED" : "all checks passed");
    MPI_Finalize();
    return total ? 1 : 0;
}
