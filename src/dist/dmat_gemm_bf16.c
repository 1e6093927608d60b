/* prefopt_dmat_gemm_sub_bf16: the distributed products with bf16 inputs, fp32 accumulation and fp32 output, on
 * every grid shape. PSGEMM has no bf16, so this is a SUMMA-style product on the BLACS grid with the local oneDNN
 * bf16 matmul: each operand is brought, in bf16, into the layout the local product needs by all-gathers along one
 * grid dimension (half the bytes of fp32), and a product whose shared dimension is split over ranks leaves fp32
 * partial sums that are reduce-scattered (never rounded to bf16) into C's blocks. With the whole shared dimension
 * in one panel this is SUMMA with a single step: one all-gather per operand instead of a broadcast per panel.
 *
 * The engine's three products, C (m x n) rows over process rows, columns over process columns:
 *   C = A B     (Y = X W, the head's logits): A's columns all-gathered over the process row, B's rows over the
 *               process column (P > 1 only); one local product into C's own blocks;
 *   C = A^T B   (dW = X^T dY): A's columns all-gathered over the process row; the local product over my tokens
 *               is a partial of C's rows, reduce-scattered over the process column (P > 1) into C's row blocks;
 *   C = A B^T   (dX = dY W^T): B's rows all-gathered over the process column (P > 1); the local product over my
 *               part of the shared dimension is a partial of C's columns, reduce-scattered over the process row.
 * On a 1x1 grid nothing moves; on 1xP the first is an all-gather of bf16 activations, the others one all-gather
 * or one fp32 reduce-scatter, like the fp32 path (dmat_gemm.c). An operand that has a bf16 copy (prefopt_dmat
 * half: the model's weights, refreshed once per optimizer step) is used as it is; others (activations,
 * gradients) are rounded to bf16 here. Operands that do not line up this way (no product of the engine) run
 * through psgemm_ in fp32 and are counted. */
#include "prefopt/dmat.h"

#include "prefopt/common.h"
#include "prefopt/gemm_local.h"

#include "blacs.h"

#include <stdlib.h>
#include <string.h>

static long fallbacks, bf16_calls;
long prefopt_dmat_gemm_bf16_fallbacks(void) { return fallbacks; }
long prefopt_dmat_gemm_bf16_calls(void) { return bf16_calls; }

/* scratch reused across calls (never shrunk): bf16 operands and their gather buffers, fp32 partials */
static void *scr[6];
static size_t scr_cap[6];
enum { S_A, S_AW, S_B, S_BW, S_PART, S_RED };

static void *scratch(int i, size_t bytes)
{
    if (bytes > scr_cap[i]) {
        free(scr[i]);
        scr[i] = prefopt_xmalloc(bytes + 64, "bf16 gemm scratch");
        scr_cap[i] = bytes;
    }
    return scr[i];
}

static int count_of(int n, int nb, int p, int np)
{
    int zero = 0;
    return numroc_(&n, &nb, &p, &zero, &np);
}

/* the sub-block of `rows` global rows from i0 starts on process row 0 at a block boundary (so its local rows
 * are a contiguous run of the local piece from row_g2l(i0)) */
static int rows_aligned(const prefopt_dmat *a, int i0)
{
    return a->grid->nprow == 1 || i0 % (a->mb * a->grid->nprow) == 0;
}
static int local_rows(const prefopt_dmat *a, int rows)
{
    return a->grid->nprow == 1 ? rows : count_of(rows, a->mb, a->grid->myrow, a->grid->nprow);
}

/* local rows [l0, l0 + rows) x all local columns of a, in bf16: a's own copy when it has one, else rounded into
 * scratch slot s (ld = rows) */
static const uint16_t *local_bf16(const prefopt_dmat *a, int l0, int rows, int s, int *ld)
{
    if (a->half) {
        *ld = a->lld;
        return a->half + l0;
    }
    uint16_t *h = scratch(s, sizeof(uint16_t) * ((size_t)rows * a->nloc + 1));
    *ld = rows > 1 ? rows : 1;
#pragma omp parallel for schedule(static) if ((size_t)rows * a->nloc > 65536)
    for (int jl = 0; jl < a->nloc; jl++)
        prefopt_bf16_from_f32(h + (size_t)jl * rows, a->data + (size_t)jl * a->lld + l0, (size_t)rows);
    return h;
}

/* whole (rows x a->n, ld rows) := the bf16 block (rows x a->nloc, ld) of every process column of my row */
static const uint16_t *allgather_cols(const prefopt_dmat *a, const uint16_t *mine, int ld, int rows, int s, int sbuf)
{
    const prefopt_grid *g = a->grid;
    const int Q = g->npcol, nb = a->nb;
    if (Q == 1 && ld == rows)
        return mine;
    uint16_t *whole = scratch(s, sizeof(uint16_t) * ((size_t)rows * a->n + 1));
    if (Q == 1) {
        for (int jl = 0; jl < a->nloc; jl++)
            memcpy(whole + (size_t)jl * rows, mine + (size_t)jl * ld, sizeof(uint16_t) * rows);
        return whole;
    }
    int counts[Q], displs[Q];
    for (int p = 0, at = 0; p < Q; p++) {
        counts[p] = rows * count_of(a->n, nb, p, Q);
        displs[p] = at;
        at += counts[p];
    }
    uint16_t *buf = scratch(sbuf, sizeof(uint16_t) * ((size_t)rows * a->n + 1));
    for (int jl = 0; jl < a->nloc; jl++)
        memcpy(buf + displs[g->mycol] + (size_t)jl * rows, mine + (size_t)jl * ld, sizeof(uint16_t) * rows);
    MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, buf, counts, displs, MPI_UINT16_T, g->row);
    for (int p = 0; p < Q; p++) /* a block of nb columns is contiguous in both orders */
        for (int jl = 0, nl = count_of(a->n, nb, p, Q); jl < nl; jl += nb) {
            int w = nl - jl < nb ? nl - jl : nb, j = (jl / nb) * Q * nb + p * nb;
            memcpy(whole + (size_t)j * rows, buf + displs[p] + (size_t)jl * rows, sizeof(uint16_t) * rows * w);
        }
    return whole;
}

/* whole (rows x ncols, ld rows) := the bf16 blocks (its local rows x ncols, ld) of the sub-block of `rows` rows
 * of a (aligned) from every process row of my column */
static const uint16_t *allgather_rows(const prefopt_dmat *a, const uint16_t *mine, int ld, int rows, int ncols, int s,
                                      int sbuf, int *ldw)
{
    const prefopt_grid *g = a->grid;
    const int P = g->nprow, mb = a->mb;
    if (P == 1) {
        *ldw = ld;
        return mine;
    }
    int counts[P], displs[P];
    for (int p = 0, at = 0; p < P; p++) {
        counts[p] = count_of(rows, mb, p, P) * ncols;
        displs[p] = at;
        at += counts[p];
    }
    const int rl = count_of(rows, mb, g->myrow, P);
    uint16_t *buf = scratch(sbuf, sizeof(uint16_t) * ((size_t)rows * ncols + 1));
    for (int j = 0; j < ncols; j++)
        memcpy(buf + displs[g->myrow] + (size_t)j * rl, mine + (size_t)j * ld, sizeof(uint16_t) * rl);
    MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, buf, counts, displs, MPI_UINT16_T, g->col);
    uint16_t *whole = scratch(s, sizeof(uint16_t) * ((size_t)rows * ncols + 1));
    for (int p = 0; p < P; p++) {
        const int rp = count_of(rows, mb, p, P);
        for (int j = 0; j < ncols; j++)
            for (int il = 0; il < rp; il += mb) {
                int h = rp - il < mb ? rp - il : mb, i = (il / mb) * P * mb + p * mb;
                memcpy(whole + (size_t)j * rows + i, buf + displs[p] + (size_t)j * rp + il, sizeof(uint16_t) * h);
            }
    }
    *ldw = rows > 1 ? rows : 1;
    return whole;
}

/* C's local rows [l0, l0 + rows) := beta C + s (rows x C->nloc, ld rows) */
static void add_into(prefopt_dmat *c, int l0, int rows, const float *s, float beta)
{
    for (int jl = 0; jl < c->nloc; jl++) {
        float *cj = c->data + (size_t)jl * c->lld + l0;
        const float *sj = s + (size_t)jl * rows;
        if (beta == 0.0f) /* not beta * c: c may hold NaN garbage */
            memcpy(cj, sj, sizeof(float) * rows);
        else
            for (int i = 0; i < rows; i++)
                cj[i] = beta * cj[i] + sj[i];
    }
}

/* C's local rows [l0, l0 + rows) := beta C + the sum over my process row of part (rows x C->n, whole columns) */
static void reduce_scatter_cols(prefopt_dmat *c, int l0, int rows, float *part, float beta)
{
    const prefopt_grid *g = c->grid;
    const int Q = g->npcol, nb = c->nb;
    int counts[Q], displs[Q];
    for (int p = 0, at = 0; p < Q; p++) {
        counts[p] = rows * count_of(c->n, nb, p, Q);
        displs[p] = at;
        at += counts[p];
    }
    float *buf = scratch(S_RED, sizeof(float) * ((size_t)rows * c->n + 1));
    for (int p = 0; p < Q; p++)
        for (int jl = 0, nl = count_of(c->n, nb, p, Q); jl < nl; jl += nb) {
            int w = nl - jl < nb ? nl - jl : nb, j = (jl / nb) * Q * nb + p * nb;
            memcpy(buf + displs[p] + (size_t)jl * rows, part + (size_t)j * rows, sizeof(float) * rows * w);
        }
    MPI_Reduce_scatter(buf, part, counts, MPI_FLOAT, MPI_SUM, g->row);
    add_into(c, l0, rows, part, beta);
}

/* C's rows of the aligned sub-block [i0, i0 + rows) := beta C + the sum over my process column of part
 * (rows x C->nloc, whole rows) */
static void reduce_scatter_rows(prefopt_dmat *c, int l0, int rows, float *part, float beta)
{
    const prefopt_grid *g = c->grid;
    const int P = g->nprow, mb = c->mb, nc = c->nloc;
    int counts[P], displs[P];
    for (int p = 0, at = 0; p < P; p++) {
        counts[p] = count_of(rows, mb, p, P) * nc;
        displs[p] = at;
        at += counts[p];
    }
    float *buf = scratch(S_RED, sizeof(float) * ((size_t)rows * nc + 1));
    for (int p = 0; p < P; p++) {
        const int rp = count_of(rows, mb, p, P);
        for (int j = 0; j < nc; j++)
            for (int il = 0; il < rp; il += mb) {
                int h = rp - il < mb ? rp - il : mb, i = (il / mb) * P * mb + p * mb;
                memcpy(buf + displs[p] + (size_t)j * rp + il, part + (size_t)j * rows + i, sizeof(float) * h);
            }
    }
    const int rl = count_of(rows, mb, g->myrow, P);
    MPI_Reduce_scatter(buf, part, counts, MPI_FLOAT, MPI_SUM, g->col);
    add_into(c, l0, rl, part, beta);
}

static int gemm_bf16(char ta, char tb, int m, int n, int k, float alpha, const prefopt_dmat *A, int ia, int ja,
                     const prefopt_dmat *B, int ib, int jb, float beta, prefopt_dmat *C, int ic, int jc)
{
    const prefopt_grid *g = C->grid;
    const int tA = ta == 'T' || ta == 't', tB = tb == 'T' || tb == 't', P = g->nprow, Q = g->npcol;
    if (ja || jb || jc || C->n != n || (tA && tB))
        return 0;
    if (!tB) {
        if (B->n != n || B->nb != C->nb || A->n != (tA ? m : k) || !rows_aligned(A, ia) || !rows_aligned(B, ib))
            return 0;
        if (!tA) { /* C = A B */
            if (!rows_aligned(C, ic) || (P > 1 && A->mb != C->mb))
                return 0;
            const int ml = local_rows(C, m), kl = local_rows(B, k);
            int lda, ldb, ldbw;
            const uint16_t *al = local_bf16(A, prefopt_dmat_row_g2l(A, ia), ml, S_A, &lda);
            const uint16_t *aw = allgather_cols(A, al, lda, ml, S_AW, S_PART);
            const uint16_t *bl = local_bf16(B, prefopt_dmat_row_g2l(B, ib), kl, S_B, &ldb);
            const uint16_t *bw = allgather_rows(B, bl, ldb, k, B->nloc, S_BW, S_RED, &ldbw);
            int ldaw = aw == al ? lda : (ml > 1 ? ml : 1);
            if (ml && C->nloc)
                prefopt_gemm_bf16('N', 'N', ml, C->nloc, k, alpha, aw, ldaw, bw, ldbw, beta,
                                  C->data + prefopt_dmat_row_g2l(C, ic), C->lld);
            return 1;
        }
        /* C = A^T B: the shared dimension is A's and B's rows */
        if (P > 1 && (A->mb != B->mb || !rows_aligned(C, ic)))
            return 0;
        const int kl = local_rows(A, k);
        int lda, ldb;
        const uint16_t *al = local_bf16(A, prefopt_dmat_row_g2l(A, ia), kl, S_A, &lda);
        const uint16_t *aw = allgather_cols(A, al, lda, kl, S_AW, S_PART);
        const uint16_t *bl = local_bf16(B, prefopt_dmat_row_g2l(B, ib), kl, S_B, &ldb);
        int ldaw = aw == al ? lda : (kl > 1 ? kl : 1);
        if (P == 1) {
            if (C->nloc)
                prefopt_gemm_bf16('T', 'N', m, C->nloc, kl, alpha, aw, ldaw, bl, ldb, beta, C->data + ic, C->lld);
            return 1;
        }
        float *part = scratch(S_PART, sizeof(float) * ((size_t)m * C->nloc + 1));
        if (C->nloc)
            prefopt_gemm_bf16('T', 'N', m, C->nloc, kl, alpha, aw, ldaw, bl, ldb, 0.0f, part, m > 1 ? m : 1);
        reduce_scatter_rows(C, prefopt_dmat_row_g2l(C, ic), m, part, beta);
        return 1;
    }
    /* C = A B^T: the shared dimension is A's and B's columns */
    if (A->n != k || B->n != k || A->nb != B->nb || !rows_aligned(A, ia) || !rows_aligned(B, ib) ||
        !rows_aligned(C, ic) || (P > 1 && A->mb != C->mb))
        return 0;
    const int ml = local_rows(C, m), nlr = local_rows(B, n), kl = A->nloc;
    int lda, ldb, ldbw;
    const uint16_t *al = local_bf16(A, prefopt_dmat_row_g2l(A, ia), ml, S_A, &lda);
    const uint16_t *bl = local_bf16(B, prefopt_dmat_row_g2l(B, ib), nlr, S_B, &ldb);
    const uint16_t *bw = allgather_rows(B, bl, ldb, n, B->nloc, S_BW, S_AW, &ldbw);
    const int lc0 = prefopt_dmat_row_g2l(C, ic);
    if (Q == 1) {
        if (ml)
            prefopt_gemm_bf16('N', 'T', ml, n, kl, alpha, al, lda, bw, ldbw, beta, C->data + lc0, C->lld);
        return 1;
    }
    float *part = scratch(S_PART, sizeof(float) * ((size_t)ml * n + 1));
    if (ml)
        prefopt_gemm_bf16('N', 'T', ml, n, kl, alpha, al, lda, bw, ldbw, 0.0f, part, ml);
    reduce_scatter_cols(C, lc0, ml, part, beta);
    return 1;
}

void prefopt_dmat_gemm_sub_bf16(char transa, char transb, int m, int n, int k, float alpha, const prefopt_dmat *A,
                                int ia, int ja, const prefopt_dmat *B, int ib, int jb, float beta, prefopt_dmat *C,
                                int ic, int jc)
{
    if (m == 0 || n == 0)
        return;
    if (gemm_bf16(transa, transb, m, n, k, alpha, A, ia, ja, B, ib, jb, beta, C, ic, jc)) {
        bf16_calls++;
        return;
    }
    if (!A->data || !B->data)
        prefopt_die("bf16 product %c%c (%d x %d x %d) does not fit the bf16 layouts and an operand has no fp32 copy",
                    transa, transb, m, n, k);
    fallbacks++;
    prefopt_dmat_gemm_sub(transa, transb, m, n, k, alpha, A, ia, ja, B, ib, jb, beta, C, ic, jc);
}

void prefopt_dmat_gemm_bf16(char transa, char transb, float alpha, const prefopt_dmat *A, const prefopt_dmat *B,
                            float beta, prefopt_dmat *C)
{
    int k = (transa == 'N' || transa == 'n') ? A->n : A->m;
    prefopt_dmat_gemm_sub_bf16(transa, transb, C->m, C->n, k, alpha, A, 0, 0, B, 0, 0, beta, C, 0, 0);
}
