/* prefopt: distributed matrices. A prefopt_dmat is a ScaLAPACK block-cyclic matrix on one TP grid:
 * a global m x n column-major matrix cut into mb x nb blocks dealt round-robin over process rows and
 * columns (source process 0,0). Each rank stores its blocks as one column-major lld x nloc array.
 *
 * Row vectors (biases, norm weights) are 1 x n dmats with rep_rows = 1: distributed over process columns
 * like the matrix columns they scale and replicated on every process row (their gradients are summed over
 * the process-column communicator). They never enter psgemm.
 *
 * Conventions used across prefopt (model, checkpoint, import/export):
 * - a linear weight that HF stores as PyTorch [out][in] row-major is the column-major (in x out) matrix W,
 *   so the layer is Y = X W with X (tokens x in); same bytes, no transpose;
 * - activations are (tokens x features) with mb = padded sequence length T, so a sequence never straddles
 *   process rows.
 */
#ifndef PREFOPT_DMAT_H
#define PREFOPT_DMAT_H

#include "prefopt/grid.h"

#include <stdint.h>

typedef struct {
    int m, n;        /* global rows, columns */
    int mb, nb;      /* block sizes */
    int mloc, nloc;  /* local rows, columns held by this rank */
    int lld;         /* local leading dimension, max(1, mloc) */
    int rep_rows;    /* 1: a row vector replicated on every process row */
    int desc[9];     /* ScaLAPACK descriptor {1, ctxt, m, n, mb, nb, 0, 0, lld} */
    float *data;     /* lld x nloc local piece; not owned: points into a buffer the caller manages */
    const uint16_t *half; /* NULL, or a bf16 copy of the local piece with the same layout (weights in a bf16
                           * run): the bf16 products use it instead of rounding data (not owned either) */
    const prefopt_grid *grid;
} prefopt_dmat;

/* Fills sizes and descriptor; data is left NULL. */
void prefopt_dmat_init(prefopt_dmat *a, const prefopt_grid *g, int m, int n, int mb, int nb);
void prefopt_dmat_init_rowvec(prefopt_dmat *a, const prefopt_grid *g, int n, int nb);

/* Number of floats of the local piece (lld * nloc), the size to reserve in a buffer. */
size_t prefopt_dmat_local_size(const prefopt_dmat *a);

/* Global index of local row il / local column jl (0-based), and owner/local index of a global one. */
int prefopt_dmat_row_l2g(const prefopt_dmat *a, int il);
int prefopt_dmat_col_l2g(const prefopt_dmat *a, int jl);
int prefopt_dmat_row_owner(const prefopt_dmat *a, int i);   /* process row owning global row i (0 for rep_rows) */
int prefopt_dmat_col_owner(const prefopt_dmat *a, int j);
int prefopt_dmat_row_g2l(const prefopt_dmat *a, int i);     /* local index on the owner */
int prefopt_dmat_col_g2l(const prefopt_dmat *a, int j);

/* C := alpha * op(A) * op(B) + beta * C on whole matrices, through psgemm_. Collective over the grid. */
void prefopt_dmat_gemm(char transa, char transb, float alpha, const prefopt_dmat *A, const prefopt_dmat *B,
                       float beta, prefopt_dmat *C);
/* The same on submatrices: op(A) is m x k from A's global row ia, column ja (0-based), and so on; C's block is
 * m x n. The LM head multiplies one chunk of batch rows at a time. */
void prefopt_dmat_gemm_sub(char transa, char transb, int m, int n, int k, float alpha, const prefopt_dmat *A, int ia,
                           int ja, const prefopt_dmat *B, int ib, int jb, float beta, prefopt_dmat *C, int ic, int jc);

/* The same products with bf16 inputs (A's and B's half copies when they have one, else data rounded to nearest
 * even), fp32 accumulation and fp32 C, on every grid shape (dmat_gemm_bf16.c: all-gathers of bf16 operands,
 * reduce-scatters of fp32 partial sums, one local oneDNN product). Operands that do not line up as the engine's
 * products do run through psgemm_ in fp32 and are counted (a test proves the engine never does). */
void prefopt_dmat_gemm_bf16(char transa, char transb, float alpha, const prefopt_dmat *A, const prefopt_dmat *B,
                            float beta, prefopt_dmat *C);
void prefopt_dmat_gemm_sub_bf16(char transa, char transb, int m, int n, int k, float alpha, const prefopt_dmat *A,
                                int ia, int ja, const prefopt_dmat *B, int ib, int jb, float beta, prefopt_dmat *C,
                                int ic, int jc);
long prefopt_dmat_gemm_bf16_calls(void);
long prefopt_dmat_gemm_bf16_fallbacks(void);

/* How many products went through the one-process-row path (all-gather or reduce-scatter plus a local GEMM,
 * dmat_gemm.c) instead of psgemm_: tests prove the path runs. */
long prefopt_dmat_gemm_row_calls(void);

/* Whole-matrix copies for tests, import and small tensors: full is m x n column-major on every rank of the
 * grid. gather is collective over the grid; scatter is local (each rank copies its blocks out of full). */
void prefopt_dmat_gather(const prefopt_dmat *a, float *full);
void prefopt_dmat_scatter(prefopt_dmat *a, const float *full);

/* The PBLAS panel width used by psgemm (pilaenv_ override, same value on every rank). 0 keeps the default. */
void prefopt_dmat_set_panel_width(int kb);
int prefopt_dmat_panel_width(void);
/* How many times ScaLAPACK asked our pilaenv_ for the panel width: non-zero after a psgemm proves the
 * override is the one that runs. */
long prefopt_dmat_pilaenv_calls(void);

#endif
