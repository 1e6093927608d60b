/* Distributed matrices: psgemm through prefopt_dmat_gemm against a naive triple loop for every transpose
 * combination, block sizes that do not divide the sizes, several panel widths; gather/scatter round trip;
 * index maps. Run on 1, 2 and 4 ranks: every grid shape whose size is the world size is tested. */
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
