/* prefopt_dmat_gemm_sub: psgemm, with two shapes of grid served without PBLAS.
 *
 * 1x1: every operand is whole and local, so sgemm_ runs on it directly. PBLAS would compute into a zeroed
 * temporary and add that to C (PB_COutV + stzpad_ + PB_Cpaxpby): ~5% of a single-rank GPT-2-small DPO step for
 * the layers and as much again for the LM head, whose 154 MB gradient temporary was faulted in every step.
 *
 * 1xP (one process row: the TP group a node usually is): every matrix has all its rows on every rank and its
 * columns dealt out in blocks, so each of the engine's products needs one collective over the process row
 * (Megatron's f and g, in ScaLAPACK's layout):
 *   C = op(A) B   with B's columns dealt out like C's (Y = X W, dW = X^T dY, the head's logits and dE):
 *                 all-gather A, then one local GEMM into C's own columns;
 *   C = A B^T     with the shared dimension dealt out alike in A and B (dX = dY W^T, the head's dX): one local
 *                 GEMM over my part of the shared dimension gives a partial of the whole C, reduce-scattered
 *                 into C's columns.
 * PBLAS moves the same data, but in panels, each packed, zero-padded and added through temporaries: ~0.15 s of
 * a 1.9 s step on a 1x2 grid (perf/README.md). Everything else (P x 1 and 2-D grids, operands that do not line
 * up) goes to psgemm_. */
#include "prefopt/dmat.h"

#include "prefopt/common.h"
#include "prefopt/gemm_local.h"

#include "blacs.h"

#include <blis.h>
#include <stdlib.h>
#include <string.h>

/* gathered operands, partial products and the collectives' buffers, reused across calls (never shrunk) */
static float *scratch[2];
static size_t scratch_cap[2];
static long row_calls;

long prefopt_dmat_gemm_row_calls(void) { return row_calls; }

static float *scratch_get(int i, size_t n)
{
    if (n > scratch_cap[i]) {
        free(scratch[i]);
        scratch[i] = prefopt_xmalloc(n * sizeof(float) + 64, "dmat gemm scratch");
        scratch_cap[i] = n;
    }
    return scratch[i];
}

static int cols_of(const prefopt_dmat *a, int p)
{
    int zero = 0, n = a->n, nb = a->nb, np = a->grid->npcol;
    return numroc_(&n, &nb, &p, &zero, &np);
}

/* Per process column: how many floats `rows` rows of its columns are, and where they start in a buffer that
 * holds every process column's in turn. */
static void layout(int *counts, int *displs, const prefopt_dmat *a, int rows)
{
    for (int p = 0, at = 0; p < a->grid->npcol; p++) {
        counts[p] = rows * cols_of(a, p);
        displs[p] = at;
        at += counts[p];
    }
}

/* Between the whole (rows x a->n, ld rows) and the per-process order of layout(): a block of nb columns is
 * contiguous in both. to_whole = 1 copies from by_proc to whole. */
static void reorder(float *whole, float *by_proc, const prefopt_dmat *a, int rows, const int *displs, int to_whole)
{
    const int P = a->grid->npcol, nb = a->nb;
    for (int p = 0; p < P; p++)
        for (int jl = 0, nl = cols_of(a, p); jl < nl; jl += nb) {
            size_t n = sizeof(float) * (size_t)rows * (size_t)(nl - jl < nb ? nl - jl : nb);
            float *w = whole + (size_t)((jl / nb) * P * nb + p * nb) * rows, *q = by_proc + displs[p] + (size_t)jl * rows;
            if (to_whole)
                memcpy(w, q, n);
            else
                memcpy(q, w, n);
        }
}

/* whole (rows x a->n, ld rows) := rows [i0, i0 + rows) of a, from every process column */
static void allgather_rows(float *whole, const prefopt_dmat *a, int i0, int rows)
{
    const prefopt_grid *g = a->grid;
    int counts[g->npcol], displs[g->npcol];
    layout(counts, displs, a, rows);
    float *buf = scratch_get(1, (size_t)rows * a->n);
    for (int jl = 0; jl < a->nloc; jl++)
        memcpy(buf + displs[g->mycol] + (size_t)jl * rows, a->data + (size_t)jl * a->lld + i0, sizeof(float) * rows);
    MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, buf, counts, displs, MPI_FLOAT, g->row);
    reorder(whole, buf, a, rows, displs, 1);
}

/* rows [i0, i0 + rows) of c := beta c + the sum over process columns of part (rows x c->n, ld rows, whole).
 * part is overwritten. */
static void reduce_scatter_rows(prefopt_dmat *c, int i0, int rows, float *part, float beta)
{
    const prefopt_grid *g = c->grid;
    int counts[g->npcol], displs[g->npcol];
    layout(counts, displs, c, rows);
    float *buf = scratch_get(1, (size_t)rows * c->n);
    reorder(part, buf, c, rows, displs, 0);
    MPI_Reduce_scatter(buf, part, counts, MPI_FLOAT, MPI_SUM, g->row);
    for (int jl = 0; jl < c->nloc; jl++) {
        float *cj = c->data + (size_t)jl * c->lld + i0;
        const float *s = part + (size_t)jl * rows;
        if (beta == 0.0f) /* not beta * c: c may hold NaN garbage, as BLAS allows when beta is 0 */
            memcpy(cj, s, sizeof(float) * rows);
        else
            for (int i = 0; i < rows; i++)
                cj[i] = beta * cj[i] + s[i];
    }
}

/* The 1xP products above; 0 when the operands do not fit them (then psgemm_ does it). */
static int gemm_one_row(char ta, char tb, int m, int n, int k, float alpha, const prefopt_dmat *A, int ia, int ja,
                        const prefopt_dmat *B, int ib, int jb, float beta, prefopt_dmat *C, int ic, int jc)
{
    const int tA = ta == 'T' || ta == 't', tB = tb == 'T' || tb == 't';
    if (ja || jb || jc || C->n != n)
        return 0;
    if (!tB && B->n == n && B->nb == C->nb && A->n == (tA ? m : k)) {
        const int arows = tA ? k : m, lda = arows > 1 ? arows : 1;
        float *Aw = scratch_get(0, (size_t)arows * A->n);
        allgather_rows(Aw, A, ia, arows);
        if (C->nloc)
            prefopt_sgemm_local(ta, 'N', m, C->nloc, k, alpha, Aw, lda, B->data + ib, B->lld, beta, C->data + ic, C->lld);
        return 1;
    }
    if (!tA && tB && A->n == k && B->n == k && A->nb == B->nb) {
        float *part = scratch_get(0, (size_t)m * n), zero = 0.0f;
        if (A->nloc)
            prefopt_sgemm_local('N', 'T', m, n, A->nloc, alpha, A->data + ia, A->lld, B->data + ib, B->lld, zero, part, m);
        else
            memset(part, 0, sizeof(float) * (size_t)m * n);
        reduce_scatter_rows(C, ic, m, part, beta);
        return 1;
    }
    return 0;
}

void prefopt_dmat_gemm_sub(char transa, char transb, int m, int n, int k, float alpha, const prefopt_dmat *A, int ia,
                           int ja, const prefopt_dmat *B, int ib, int jb, float beta, prefopt_dmat *C, int ic, int jc)
{
    if (m == 0 || n == 0)
        return;
    const prefopt_grid *g = A->grid;
    if (g->nprow == 1 && g->npcol == 1) {
        const float *a = A->data + (size_t)ja * A->lld + ia, *b = B->data + (size_t)jb * B->lld + ib;
        float *c = C->data + (size_t)jc * C->lld + ic;
        prefopt_sgemm_local(transa, transb, m, n, k, alpha, a, A->lld, b, B->lld, beta, c, C->lld);
        return;
    }
    if (g->nprow == 1 && gemm_one_row(transa, transb, m, n, k, alpha, A, ia, ja, B, ib, jb, beta, C, ic, jc)) {
        row_calls++;
        return;
    }
    int ia1 = ia + 1, ja1 = ja + 1, ib1 = ib + 1, jb1 = jb + 1, ic1 = ic + 1, jc1 = jc + 1;
    psgemm_(&transa, &transb, &m, &n, &k, &alpha, A->data, &ia1, &ja1, A->desc, B->data, &ib1, &jb1, B->desc, &beta,
            C->data, &ic1, &jc1, C->desc);
}

void prefopt_dmat_gemm(char transa, char transb, float alpha, const prefopt_dmat *A, const prefopt_dmat *B,
                       float beta, prefopt_dmat *C)
{
    int k = (transa == 'N' || transa == 'n') ? A->n : A->m;
    prefopt_dmat_gemm_sub(transa, transb, C->m, C->n, k, alpha, A, 0, 0, B, 0, 0, beta, C, 0, 0);
}
