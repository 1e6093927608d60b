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
} pf_attn_row;

/* floats of scratch the kernels need (forward, backward), independent of T except backward's T floats */
size_t pf_attn_fwd_work(const pf_attn_row *r);
size_t pf_attn_bwd_work(const pf_attn_row *r);

/* o (T x D) and lse (T) of one head: o_i = sum_j softmax_j(s_ij) v_j over the keys visible from i; padded
 * queries get o = 0, lse = 0. q, k, v: T x D row-major. */
void pf_attn_forward_head(const pf_attn_row *r, const float *q, const float *k, const float *v, float *o,
                          float *lse, float *work);

/* the gradients of one head from o and lse of forward and dO: dq = (overwritten), dk and dv += (so that the G
 * query heads of a KV group accumulate into the group's K and V) */
void pf_attn_backward_head(const pf_attn_row *r, const float *q, const float *k, const float *v, const float *o,
                           const float *dout, const float *lse, float *dq, float *dk, float *dv, float *work);

#endif
