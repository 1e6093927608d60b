/* Distributed matrices: psgemm through prefopt_dmat_gemm against a naive triple loop for every transpose
 * combination, block sizes that do not divide the sizes, several panel widths; the LM head's sub-matrix
 * products (row offsets, beta 0 on NaN) through both the one-process-row path and psgemm_; gather/scatter round
 * trip; index maps. Run on 1, 2 and 4 ranks: every grid shape whose size is the world size is tested. */
#include "prefopt/dmat.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

static int failures;
#define CHECK(cond, ...)                                                                                     \
    do {                                                                                                     \
        if (!(cond)) {                                                                                       \
            failures++;                                                                                      \
            fprintf(stderr, "test_dmat: %s:%d: ", __FILE__, __LINE__);                                      \
            fprintf(stderr, __VA_ARGS__);                                                                    \
            fputc('\n', stderr);                                                                             \
        }                                                                                                    \
    } while (0)

static float val(int seed, int i, int j) { return (float)(((seed * 7919 + i * 131 + j * 31) % 97) - 48) / 32.0f; }

static void fill(float *full, int m, int n, int seed)
{
    for (int j = 0; j < n; j++)
        for (int i = 0; i < m; i++)
            full[(size_t)j * m + i] = val(seed, i, j);
}

static void check_maps(const prefopt_dmat *a)
{
    const prefopt_grid *g = a->grid;
    for (int il = 0; il < a->mloc; il++) {
        int i = prefopt_dmat_row_l2g(a, il);
        CHECK(i >= 0 && i < a->m, "row l2g(%d) = %d out of range", il, i);
        CHECK(prefopt_dmat_row_owner(a, i) == (a->rep_rows ? 0 : g->myrow), "row owner of %d", i);
        CHECK(prefopt_dmat_row_g2l(a, i) == il, "row g2l(l2g(%d)) = %d", il, prefopt_dmat_row_g2l(a, i));
    }
    for (int jl = 0; jl < a->nloc; jl++) {
        int j = prefopt_dmat_col_l2g(a, jl);
        CHECK(j >= 0 && j < a->n, "col l2g(%d) = %d out of range", jl, j);
        CHECK(prefopt_dmat_col_owner(a, j) == g->mycol, "col owner of %d", j);
        CHECK(prefopt_dmat_col_g2l(a, j) == jl, "col g2l(l2g(%d))", jl);
    }
    /* every element is held exactly once (row vectors: once per process row) */
    long mine = (long)a->mloc * a->nloc, total = 0;
    MPI_Allreduce(&mine, &total, 1, MPI_LONG, MPI_SUM, g->tp);
    long want = (long)a->m * a->n * (a->rep_rows ? g->nprow : 1);
    CHECK(total == want, "%dx%d (%dx%d blocks) local sizes sum to %ld, want %ld", a->m, a->n, a->mb, a->nb, total,
          want);
}

static void gemm_case(const prefopt_grid *g, char ta, char tb, int m, int n, int k, int mbA, int nbA, int mbB,
                      int nbB, int mbC, int nbC)
{
    int am = ta == 'N' ? m : k, an = ta == 'N' ? k : m;
    int bm = tb == 'N' ? k : n, bn = tb == 'N' ? n : k;
    prefopt_dmat A, B, C;
    prefopt_dmat_init(&A, g, am, an, mbA, nbA);
    prefopt_dmat_init(&B, g, bm, bn, mbB, nbB);
    prefopt_dmat_init(&C, g, m, n, mbC, nbC);
    check_maps(&A);
    check_maps(&C);
    float *fa = malloc(sizeof(float) * am * an), *fb = malloc(sizeof(float) * bm * bn);
    float *fc = malloc(sizeof(float) * m * n), *ref = malloc(sizeof(float) * m * n), *got = malloc(sizeof(float) * m * n);
    fill(fa, am, an, 1);
    fill(fb, bm, bn, 2);
    fill(fc, m, n, 3);
    A.data = malloc(sizeof(float) * prefopt_dmat_local_size(&A) + 4);
    B.data = malloc(sizeof(float) * prefopt_dmat_local_size(&B) + 4);
    C.data = malloc(sizeof(float) * prefopt_dmat_local_size(&C) + 4);
    prefopt_dmat_scatter(&A, fa);
    prefopt_dmat_scatter(&B, fb);
    const float alpha = 0.75f, beta = -0.5f;
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) {
            double s = 0;
            for (int l = 0; l < k; l++) {
                double x = ta == 'N' ? fa[(size_t)l * am + i] : fa[(size_t)i * am + l];
                double y = tb == 'N' ? fb[(size_t)j * bm + l] : fb[(size_t)l * bm + j];
                s += x * y;
            }
            ref[(size_t)j * m + i] = (float)(alpha * s + beta * fc[(size_t)j * m + i]);
        }
    int widths[3] = {32, 5, 512};
    for (int w = 0; w < 3; w++) {
        prefopt_dmat_set_panel_width(widths[w]);
        prefopt_dmat_scatter(&C, fc);
        prefopt_dmat_gemm(ta, tb, alpha, &A, &B, beta, &C);
        prefopt_dmat_gather(&C, got);
        double maxerr = 0;
        for (size_t e = 0; e < (size_t)m * n; e++)
            maxerr = fmax(maxerr, fabs(got[e] - ref[e]));
        /* entries are O(k) sums of products of values <= 1.5: fp32 rounding gives ~k * 1e-7 */
        CHECK(maxerr <= 1e-5 * k, "grid %dx%d %c%c %dx%dx%d panel %d: max error %g", g->nprow, g->npcol, ta, tb, m, n,
              k, widths[w], maxerr);
    }
    prefopt_dmat_set_panel_width(0);
    /* scatter then gather is the identity */
    prefopt_dmat_scatter(&A, fa);
    float *back = malloc(sizeof(float) * am * an);
    prefopt_dmat_gather(&A, back);
    int same = 1;
    for (size_t e = 0; e < (size_t)am * an; e++)
        same &= back[e] == fa[e];
    CHECK(same, "gather(scatter(x)) != x for %dx%d blocks %dx%d", am, an, mbA, nbA);
    free(back);
    free(fa), free(fb), free(fc), free(ref), free(got), free(A.data), free(B.data), free(C.data);
}

/* The LM head's products on a chunk of rows: prefopt_dmat_gemm_sub with row offsets into the activations
 * (T = 6 rows per sequence, rows 6..17 of 18), the three transpose combinations, beta 0 on a C full of NaN (BLAS
 * semantics: C is not read) and beta != 0. Against a double-precision loop on the whole matrices. */
static void sub_case(const prefopt_grid *g, float beta)
{
    const int T = 6, R = 18, r0 = 6, rows = 12, Cd = 10, V = 23;
    prefopt_dmat X, E, L, D, G; /* X: R x Cd activations, E: Cd x V head, L: rows x V, D: R x Cd, G: Cd x V */
    prefopt_dmat_init(&X, g, R, Cd, T, 3);
    prefopt_dmat_init(&E, g, Cd, V, 3, 4);
    prefopt_dmat_init(&L, g, rows, V, T, 4);
    prefopt_dmat_init(&D, g, R, Cd, T, 3);
    prefopt_dmat_init(&G, g, Cd, V, 3, 4);
    prefopt_dmat *all[5] = {&X, &E, &L, &D, &G};
    float *full[5];
    for (int i = 0; i < 5; i++) {
        full[i] = malloc(sizeof(float) * all[i]->m * all[i]->n);
        fill(full[i], all[i]->m, all[i]->n, 10 + i);
        all[i]->data = malloc(sizeof(float) * prefopt_dmat_local_size(all[i]) + 4);
        prefopt_dmat_scatter(all[i], full[i]);
    }
    const float *fx = full[0], *fe = full[1], *fl = full[2], *fd = full[3], *fg = full[4];
    float alpha = 1.25f;
    size_t big = (size_t)R * V;
    float *got = malloc(sizeof(float) * big), *ref = malloc(sizeof(float) * big);
    for (int which = 0; which < 3; which++) {
        prefopt_dmat *C = which == 0 ? &L : which == 1 ? &D : &G;
        const float *fc = which == 0 ? fl : which == 1 ? fd : fg;
        int cm = C->m, cn = C->n;
        for (int j = 0; j < cn; j++)
            for (int i = 0; i < cm; i++) {
                double s = 0, c0 = fc[(size_t)j * cm + i];
                if (which == 0) /* L = X[r0:] E */
                    for (int l = 0; l < Cd; l++)
                        s += (double)fx[(size_t)l * R + r0 + i] * fe[(size_t)j * Cd + l];
                else if (which == 1) /* D[r0:] = L E^T, other rows untouched */
                    for (int l = 0; l < V && i >= r0; l++)
                        s += (double)fl[(size_t)l * rows + i - r0] * fe[(size_t)l * Cd + j];
                else /* G = X[r0:]^T L */
                    for (int l = 0; l < rows; l++)
                        s += (double)fx[(size_t)i * R + r0 + l] * fl[(size_t)j * rows + l];
                int touched = which != 1 || i >= r0;
                ref[(size_t)j * cm + i] = touched ? (float)(alpha * s + (beta != 0.0f ? beta * c0 : 0.0)) : (float)c0;
            }
        if (beta == 0.0f) { /* NaN where the product writes, the original values elsewhere */
            float *nan = malloc(sizeof(float) * cm * cn);
            for (int j = 0; j < cn; j++)
                for (int i = 0; i < cm; i++)
                    nan[(size_t)j * cm + i] = (which != 1 || i >= r0) ? NAN : fc[(size_t)j * cm + i];
            prefopt_dmat_scatter(C, nan);
            free(nan);
        } else {
            prefopt_dmat_scatter(C, fc);
        }
        if (which == 0)
            prefopt_dmat_gemm_sub('N', 'N', rows, V, Cd, alpha, &X, r0, 0, &E, 0, 0, beta, &L, 0, 0);
        else if (which == 1)
            prefopt_dmat_gemm_sub('N', 'T', rows, Cd, V, alpha, &L, 0, 0, &E, 0, 0, beta, &D, r0, 0);
        else
            prefopt_dmat_gemm_sub('T', 'N', Cd, V, rows, alpha, &X, r0, 0, &L, 0, 0, beta, &G, 0, 0);
        prefopt_dmat_gather(C, got);
        double maxerr = 0;
        for (size_t e = 0; e < (size_t)cm * cn; e++)
            maxerr = isnan(got[e]) ? INFINITY : fmax(maxerr, fabs(got[e] - ref[e]));
        CHECK(maxerr <= 1e-5 * V, "grid %dx%d sub-matrix product %d (beta %g): max error %g", g->nprow, g->npcol, which,
              beta, maxerr);
        /* restore L for the next products */
        prefopt_dmat_scatter(&L, fl);
    }
    for (int i = 0; i < 5; i++)
        free(full[i]), free(all[i]->data);
    free(got), free(ref);
}

static void rowvec_case(const prefopt_grid *g, int n, int nb)
{
    prefopt_dmat v;
    prefopt_dmat_init_rowvec(&v, g, n, nb);
    check_maps(&v);
    float *full = malloc(sizeof(float) * n), *back = malloc(sizeof(float) * n);
    fill(full, 1, n, 5);
    v.data = malloc(sizeof(float) * prefopt_dmat_local_size(&v) + 4);
    prefopt_dmat_scatter(&v, full);
    prefopt_dmat_gather(&v, back);
    int same = 1;
    for (int j = 0; j < n; j++)
        same &= back[j] == full[j];
    CHECK(same, "row vector gather(scatter(x)) != x (n=%d nb=%d)", n, nb);
    free(full), free(back), free(v.data);
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    int size;
    MPI_Comm_size(MPI_COMM_WORLD, &size);
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
        const char t[2] = {'N', 'T'};
        for (int a = 0; a < 2; a++)
            for (int b = 0; b < 2; b++) {
                gemm_case(&g, t[a], t[b], 13, 11, 17, 3, 4, 5, 2, 4, 3);
                gemm_case(&g, t[a], t[b], 24, 40, 33, 12, 8, 8, 8, 12, 8);
            }
        /* the model's shapes: activations with mb = T, weights (in x out) */
        gemm_case(&g, 'N', 'N', 36, 20, 16, 12, 4, 4, 5, 12, 5);
        gemm_case(&g, 'N', 'T', 36, 16, 20, 12, 5, 4, 5, 12, 4);
        gemm_case(&g, 'T', 'N', 16, 20, 36, 12, 4, 12, 5, 4, 5);
        long row0 = prefopt_dmat_gemm_row_calls();
        sub_case(&g, 0.0f);
        sub_case(&g, -0.5f);
        /* one process row of several columns: the head's products go through the all-gather / reduce-scatter
         * path, not psgemm_ */
        CHECK(pr > 1 || size == 1 || prefopt_dmat_gemm_row_calls() - row0 == 6, "grid 1x%d: %ld of 6 sub-matrix "
              "products took the one-row path", size, prefopt_dmat_gemm_row_calls() - row0);
        rowvec_case(&g, 19, 4);
        rowvec_case(&g, 3, 8);
        prefopt_grid_free(&g);
        ngrids++;
    }
    /* one rank: prefopt_dmat_gemm calls sgemm_ directly and ScaLAPACK never runs */
    CHECK(size == 1 || prefopt_dmat_pilaenv_calls() > 0,
          "ScaLAPACK never called our pilaenv_: the override is not in effect");
    int total = 0;
    MPI_Allreduce(&failures, &total, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    int rank;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    if (rank == 0)
        printf("test_dmat: %d grids on %d ranks: %s\n", ngrids, size, total ? "FAILED" : "all checks passed");
    MPI_Finalize();
    return total ? 1 : 0;
}
