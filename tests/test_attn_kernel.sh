#!/usr/bin/env bash
# The blocked attention kernel against a float64 reference written from the definition (tests/tools/ref_attention.py:
# NumPy forward, torch autograd gradients): T not a multiple of the block, packed DPO rows (prompt + 2 branches +
# padding), windows, soft-cap, GQA; output, logsumexp and the three gradients; reruns bit-identical.
set -u
source "$(dirname "$0")/lib.sh"
B=$1
requires_python "numpy torch"
scratch_dir W "$B/test_attn_kernel.XXXXXX"
$PY "$PREFOPT_SOURCE_DIR/tests/tools/ref_attention.py" "$B/tests/test_attn_kernel" "$W" 1e-5
