/* prefopt: the local GEMM backends under the distributed products (src/dist/gemm_local.c).
 *
 * Every matrix here is column-major (BLAS convention), C := alpha op(A) op(B) + beta C with op(A) m x k,
 * op(B) k x n. Two kinds of product:
 *   fp32 x fp32 -> fp32: BLIS sgemm_ or oneDNN's dnnl_sgemm, chosen once per process
 *                        (prefopt_gemm_set_backend; `--gemm-backend`); ScaLAPACK's own products keep BLIS.
 *   bf16 x bf16 -> fp32: oneDNN's matmul primitive (it has no BLAS-like bf16 call): transposes and leading
 *                        dimensions are memory-descriptor strides, and the primitive of each shape is created once
 *                        and cached, since creation costs far more than one execution.
 * bf16 values are uint16_t: the upper half of the IEEE fp32 bit pattern. */
#ifndef PREFOPT_GEMM_LOCAL_H
#define PREFOPT_GEMM_LOCAL_H

#include <stddef.h>
#include <stdint.h>

typedef enum { PREFOPT_GEMM_BLIS = 0, PREFOPT_GEMM_ONEDNN = 1, PREFOPT_GEMM_AUTO = 2 } prefopt_gemm_backend;

/* "blis", "onednn", "auto" -> the enum; -1 for anything else. */
int prefopt_gemm_backend_parse(const char *s);
const char *prefopt_gemm_backend_name(prefopt_gemm_backend b);

/* The backend of prefopt_sgemm_local (BLIS until set). AUTO is resolved by the caller (it needs the ranks to
 * agree: prefopt_gemm_time_backends). */
void prefopt_gemm_set_backend(prefopt_gemm_backend b);
prefopt_gemm_backend prefopt_gemm_get_backend(void);

/* Column-major sgemm through the chosen backend. */
void prefopt_sgemm_local(char ta, char tb, int m, int n, int k, float alpha, const float *a, int lda,
                         const float *b, int ldb, float beta, float *c, int ldc);
/* The same with the backend named. */
void prefopt_sgemm_with(prefopt_gemm_backend be, char ta, char tb, int m, int n, int k, float alpha, const float *a,
                        int lda, const float *b, int ldb, float beta, float *c, int ldc);

/* Column-major bf16 x bf16 -> fp32 product with fp32 accumulation (oneDNN matmul primitive). beta == 0 never reads
 * C (NaN garbage allowed, as in BLAS). Dies with one line if oneDNN cannot make the primitive. */
void prefopt_gemm_bf16(char ta, char tb, int m, int n, int k, float alpha, const uint16_t *a, int lda,
                       const uint16_t *b, int ldb, float beta, float *c, int ldc);
/* The oneDNN implementation the last created bf16 primitive uses (e.g. "brg:avx512_core_bf16"), "" before any. */
const char *prefopt_gemm_bf16_impl(void);
/* Primitives created so far (the cache's misses) and products run: a test proves shapes are cached. */
long prefopt_gemm_bf16_created(void);
long prefopt_gemm_bf16_calls(void);

/* fp32 -> bf16 by round to nearest even (NaN stays NaN, quieted), and back (exact). */
void prefopt_bf16_from_f32(uint16_t *dst, const float *src, size_t n);
void prefopt_bf16_to_f32(float *dst, const uint16_t *src, size_t n);
static inline uint16_t prefopt_bf16_round(float f)
{
    union { float f; uint32_t u; } v = {f};
    if ((v.u & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((v.u >> 16) | 0x40u);
    return (uint16_t)((v.u + 0x7fffu + ((v.u >> 16) & 1u)) >> 16);
}
static inline float prefopt_bf16_value(uint16_t h)
{
    union { uint32_t u; float f; } v = {(uint32_t)h << 16};
    return v.f;
}

/* Whether this CPU has bf16 matrix instructions (cpuid: AMX-BF16 or AVX512-BF16); PREFOPT_BF16_PRETEND_MISSING=1
 * in the environment (tests) makes it answer no. `what` receives a short description ("amx_bf16 avx512_bf16",
 * "avx512_bf16", or the missing feature: "avx512_bf16 and amx_bf16 missing"). */
int prefopt_cpu_has_bf16(char *what, size_t len);
/* Whether the hardware has AVX512_BF16 (the instruction itself, ignoring PREFOPT_BF16_PRETEND_MISSING: kernels
 * compiled for it ask this before they run). */
int prefopt_cpu_avx512_bf16(void);

/* Rate (FLOP/s) of one square-ish product C(m x n) = A(m x k) B(k x n) on this rank: the best of `reps` after a
 * warm-up. kind: 0 BLIS sgemm, 1 oneDNN sgemm, 2 oneDNN bf16 matmul. */
double prefopt_gemm_rate(int kind, int m, int n, int k, int reps);

#endif
