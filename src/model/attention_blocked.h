/* prefopt internal: the blocked (flash-attention-2 style) causal attention kernel of one sequence and one head,
 * on row-major T x D buffers. attention.c moves heads between the distributed matrices and these buffers and
 * runs one (sequence, KV group) per worker; tests/test_attn_kernel.c calls the kernel directly. Not a public
 * header. */
#ifndef PREFOPT_ATTENTION_BLOCKED_H
#define PREFOPT_ATTENTION_BLOCKED_H

#include <stddef.h>
#include <stdint.h>

/* Query and key blocks are PF_ATT_B rows. 64: a 64 x 64 score block is 16 KiB and the Q, K, V, dO blocks of
 * head_dim 64-128 are 16-32 KiB each, so one step's operands stay in L2 (1-2 MiB) and the score block in L1/L2
 * while it is exponentiated; the diagonal blocks, computed in full and masked, waste B/(2T) of the causal work
 * (1.6% at T = 2048). perf/README.md has the 64-versus-128 measurement. */
#define PF_ATT_B 64

/* one row (sequence) of the batch and one layer's attention parameters */
typedef struct {
    int T, D;
    const int8_t *seg;  /* per token: -1 padding, 0 shared prefix (visible to all), > 0 a branch (visible to itself) */
    const int32_t *pos; /* per token: the position (windows compare positions, not row indices) */
    float scale, softcap; /* score scale; tanh soft-cap of the scores (0: none) */
    int window;           /* key j visible from query i only when pos_i - pos_j < window (0: no window) */
    int bf16;             /* products with bf16 inputs and fp32 accumulation (attention_bf16.c); needs
                           * pf_attn_bf16_available() and an even D */
} pf_attn_row;

/* floats of scratch the kernels need (forward, backward), independent of T except backward's T floats */
size_t pf_attn_fwd_work(const pf_attn_row *r);
size_t pf_attn_bwd_work(const pf_attn_row *r);

/* o (T x D) and lse (T) of one head: o_i = sum_j softmax_j(s_ij) v_j over the keys visible from i; padded
 * queries get o = 0, lse = 0. q, k, v: T x D row-major. kv_new: k and v are not those of the previous call on
 * this work buffer (a bf16 row keeps their bf16 forms there, for the next query head of the KV group; fp32 ignores
 * it). */
void pf_attn_forward_head(const pf_attn_row *r, const float *q, const float *k, const float *v, float *o,
                          float *lse, float *work, int kv_new);

/* the gradients of one head from o and lse of forward and dO: dq = (overwritten), dk and dv += (so that the G
 * query heads of a KV group accumulate into the group's K and V); kv_new as in forward */
void pf_attn_backward_head(const pf_attn_row *r, const float *q, const float *k, const float *v, const float *o,
                           const float *dout, const float *lse, float *dq, float *dk, float *dv, float *work,
                           int kv_new);

/* ---- attention_bf16.c: the products of a bf16 row (operand forms and the kernel are described there) ---- */
int pf_attn_bf16_available(void); /* this CPU has AVX512-BF16 */
/* R(X) of the n x cols row-major X (leading dimension ldx): nrows rows of ld words, zero beyond the data */
void pf_bf16_rows(uint32_t *dst, int ld, const float *x, int ldx, int n, int cols, int nrows);
/* P(X): npairs rows of ld words (ld a multiple of 16, >= cols), zero beyond the data */
void pf_bf16_pairs(uint32_t *dst, int ld, const float *x, int ldx, int n, int cols, int npairs);
/* W(X) from R(X) (n rows of leading dimension ldr): npairs rows of ld >= n words, zero beyond n */
void pf_bf16_words_t(uint32_t *dst, int ld, const uint32_t *rows, int ldr, int n, int npairs);
/* C (m x n, row-major, ldc) = alpha A B + beta C over kp pairs: A word (i, p) at a[i * a_rs + p * a_ps], B words
 * (p, j .. j+15) at b + p * ldb + j, readable up to n rounded up to 16. beta 0 never reads C. */
void pf_bf16_gemm(int m, int n, int kp, float alpha, const uint32_t *a, ptrdiff_t a_rs, ptrdiff_t a_ps,
                  const uint32_t *b, ptrdiff_t ldb, float beta, float *c, int ldc);

#endif
