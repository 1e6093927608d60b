#!/usr/bin/env bash
# The blocked attention kernel against a float64 reference written from the definition (tests/tools/ref_attention.py:
# NumPy forward, torch autograd gradients where torch is installed, else NumPy's closed form): T not a multiple of
# the block, packed DPO rows (prompt + 2 branches + padding), windows, soft-cap, GQA, a head_dim of 80; output,
# logsumexp and the three gradients; reruns bit-identical. fp32 within 1e-5 of each tensor's largest entry.
#
# bf16 products (where the CPU has AVX512-BF16): q, k, v and dO are rounded to bf16 before the kernel and the
# reference see them, so what is left is the kernel's rounding of the blocks it makes, P (into o and dv) and dS
# (into dq and dk), each a relative u = 2^-9 per entry, under fp32 accumulation. An entry of o is then off by at
# most u sum_j P_ij |v_j| <= u max|v|, and dq, dk, dv likewise by u times a sum of absolute products that exceeds
# the tensor's largest entry only by its cancellation; lse is exact up to fp32 (the products of bf16 values are
# exact in fp32). Bound used: 1e-2 = 5u of each tensor's largest entry (measured: at most 2.5e-3, lse 1e-7).
set -u
source "$(dirname "$0")/lib.sh"
B=$1
requires_python numpy
scratch_dir W "$B/test_attn_kernel.XXXXXX"
$PY "$PREFOPT_SOURCE_DIR/tests/tools/ref_attention.py" "$B/tests/test_attn_kernel" "$W" 1e-5 || fail=1
$PY "$PREFOPT_SOURCE_DIR/tests/tools/ref_attention.py" "$B/tests/test_attn_kernel" "$W" 1e-2 --bf16
rc=$?
[ $rc = 77 ] && echo "skip (bf16 part only): this CPU has no AVX512-BF16" || { [ $rc = 0 ] || fail=1; }
exit $fail
