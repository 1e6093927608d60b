/* The blocked attention's products in bf16 (issue 16): bf16 inputs, fp32 accumulation, fp32 results, with the
 * AVX512-BF16 dot-product instruction (vdpbf16ps: each 32-bit lane adds the products of a pair of bf16 values).
 *
 * Why not oneDNN: its matmul primitive costs microseconds per call to execute, and a 64 x 64 x 64 block product
 * is about a microsecond of work; the attention makes seven of them per block pair. Why not per-call packing as
 * BLIS does: each operand is converted to bf16 once per head here (K and V once per KV group; operand forms,
 * below) and every block product reads the converted head in place; only the probability and dS blocks, made inside the loop, are converted
 * per block.
 *
 * Operands are 32-bit words, each a pair of bf16 values (the element of even reduction index in the low half):
 *   rows form    R(X): word (r, p) = (X[r][2p], X[r][2p+1]) at r * ld + p   (X row-major, reduction along a row)
 *   pairs form   P(X): word (p, c) = (X[2p][c], X[2p+1][c]) at p * ld + c   (reduction down the columns)
 *   words^T form W(X): word (p, r) = (X[r][2p], X[r][2p+1]) at p * ld + r   (R(X) transposed by words)
 * The B operand of a product must be in a form whose 16 consecutive words are 16 output columns: P(X) or W(X).
 * The A operand is any form, given by its row and pair strides: R(X) reads rows of X, P(X) read with row stride
 * 1 reads the rows of X^T. Entries beyond the data are zero (never stale): a zero pair times anything finite is
 * zero, so odd reduction lengths and partial tiles need no special case in the kernel.
 *
 * Rounding is to nearest even (vcvtneps2bf16); results are a fixed function of the inputs (no thread or grid
 * dependence). Compiled for AVX512-BF16 whatever -march says; pf_attn_bf16_available() says whether it may run. */
#include "attention_blocked.h"

#include "prefopt/gemm_local.h"

#include <immintrin.h>
#include <string.h>

#define PF_BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")))

int pf_attn_bf16_available(void) { return prefopt_cpu_avx512_bf16(); }

static inline __mmask16 tail_mask(int left) { return left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1); }

/* 16 floats (fewer at the tail, the rest zero) to 16 bf16 */
PF_BF16_TARGET static inline __m256i cvt16(const float *x, int left)
{
    return (__m256i)_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(tail_mask(left), x));
}

PF_BF16_TARGET void pf_bf16_rows(uint32_t *dst, int ld, const float *x, int ldx, int n, int cols, int nrows)
{
    for (int r = 0; r < nrows; r++) {
        uint16_t *d = (uint16_t *)(dst + (size_t)r * ld);
        if (r >= n) {
            memset(d, 0, sizeof(uint32_t) * (size_t)ld);
            continue;
        }
        const float *xr = x + (size_t)r * ldx;
        int c = 0;
        for (; c < cols; c += 16)
            _mm256_mask_storeu_epi16(d + c, tail_mask(cols - c), cvt16(xr + c, cols - c));
        for (c = cols; c < 2 * ld; c++) /* an odd last pair, and the padding words */
            d[c] = 0;
    }
}

PF_BF16_TARGET void pf_bf16_pairs(uint32_t *dst, int ld, const float *x, int ldx, int n, int cols, int npairs)
{
    /* interleave: word i of the result = (element i of the even row, element i of the odd row) */
    static const short idx_init[32] = {0, 16, 1, 17, 2,  18, 3,  19, 4,  20, 5,  21, 6,  22, 7,  23,
                                       8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
    const __m512i idx = _mm512_loadu_si512(idx_init);
    for (int p = 0; p < npairs; p++) {
        uint32_t *d = dst + (size_t)p * ld;
        const int r0 = 2 * p, r1 = 2 * p + 1;
        if (r0 >= n) {
            memset(d, 0, sizeof(uint32_t) * (size_t)ld);
            continue;
        }
        const float *x0 = x + (size_t)r0 * ldx, *x1 = r1 < n ? x + (size_t)r1 * ldx : NULL;
        int c = 0;
        for (; c < ld; c += 16) {
            const int left = c < cols ? cols - c : 0;
            __m256i lo = left ? cvt16(x0 + c, left) : _mm256_setzero_si256();
            __m256i hi = left && x1 ? cvt16(x1 + c, left) : _mm256_setzero_si256();
            __m512i z = _mm512_permutexvar_epi16(idx, _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1));
            _mm512_mask_storeu_epi32(d + c, tail_mask(ld - c), z);
        }
    }
}

PF_BF16_TARGET void pf_bf16_words_t(uint32_t *dst, int ld, const uint32_t *rows, int ldr, int n, int npairs)
{
    /* 16 rows at a time: one gather of word p from each, stored as 16 consecutive words of row p */
    const __m512i step = _mm512_mullo_epi32(_mm512_set1_epi32(ldr),
                                            _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
    for (int r = 0; r < ld; r += 16) {
        const __mmask16 m = tail_mask(n - r > 0 ? n - r : 0), st = tail_mask(ld - r);
        for (int p = 0; p < npairs; p++) {
            __m512i w = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), m, step,
                                                   (const int *)(rows + (size_t)r * ldr + p), 4);
            _mm512_mask_storeu_epi32(dst + (size_t)p * ld + r, st, w);
        }
    }
}

/* One tile: rows i .. i+3 (clamped to m - 1: repeated rows are computed and not stored), NV vectors of 16
 * columns from column j. */
#define TILE(NV)                                                                                                   \
    PF_BF16_TARGET static inline void tile##NV(int m, int n, int i, int j, int kp, float alpha, const uint32_t *a,  \
                                               ptrdiff_t a_rs, ptrdiff_t a_ps, const uint32_t *b, ptrdiff_t ldb,  \
                                               float beta, float *c, int ldc)                                     \
    {                                                                                                              \
        __m512 acc[4][NV];                                                                                         \
        const uint32_t *ar[4];                                                                                     \
        for (int t = 0; t < 4; t++) {                                                                              \
            ar[t] = a + (ptrdiff_t)(i + t < m ? i + t : m - 1) * a_rs;                                             \
            for (int v = 0; v < NV; v++)                                                                           \
                acc[t][v] = _mm512_setzero_ps();                                                                   \
        }                                                                                                          \
        for (int p = 0; p < kp; p++) {                                                                             \
            __m512i bv[NV];                                                                                        \
            for (int v = 0; v < NV; v++)                                                                           \
                bv[v] = _mm512_loadu_si512(b + p * ldb + j + 16 * v);                                              \
            for (int t = 0; t < 4; t++) {                                                                          \
                const __m512i av = _mm512_set1_epi32((int)ar[t][p * a_ps]);                                        \
                for (int v = 0; v < NV; v++)                                                                       \
                    acc[t][v] = _mm512_dpbf16_ps(acc[t][v], (__m512bh)av, (__m512bh)bv[v]);                        \
            }                                                                                                      \
        }                                                                                                          \
        const __m512 al = _mm512_set1_ps(alpha), be = _mm512_set1_ps(beta);                                        \
        for (int t = 0; t < 4 && i + t < m; t++)                                                                   \
            for (int v = 0; v < NV; v++) {                                                                         \
                float *cp = c + (size_t)(i + t) * ldc + j + 16 * v;                                                \
                const __mmask16 mk = tail_mask(n - j - 16 * v);                                                    \
                __m512 r = _mm512_mul_ps(al, acc[t][v]);                                                           \
                if (beta != 0.0f) /* beta 0 never reads C */                                                       \
                    r = _mm512_fmadd_ps(be, _mm512_maskz_loadu_ps(mk, cp), r);                                     \
                _mm512_mask_storeu_ps(cp, mk, r);                                                                  \
            }                                                                                                      \
    }
TILE(4)
TILE(1)

PF_BF16_TARGET void pf_bf16_gemm(int m, int n, int kp, float alpha, const uint32_t *a, ptrdiff_t a_rs,
                                 ptrdiff_t a_ps, const uint32_t *b, ptrdiff_t ldb, float beta, float *c, int ldc)
{
    if (m <= 0 || n <= 0)
        return;
    for (int i = 0; i < m; i += 4) {
        int j = 0;
        for (; j + 64 <= n; j += 64)
            tile4(m, n, i, j, kp, alpha, a, a_rs, a_ps, b, ldb, beta, c, ldc);
        for (; j < n; j += 16)
            tile1(m, n, i, j, kp, alpha, a, a_rs, a_ps, b, ldb, beta, c, ldc);
    }
}
