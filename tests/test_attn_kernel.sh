#!/usr/bin/env bash
# The blocked attention kernel against a float64 reference written from the definition (tests/tools/ref_attention.py:
# NumPy forward, torch autograd gradients): T not a multiple of the block, packed DPO rows (prompt + 2 branches +
# padding), windows, soft-cap, GQA; output, logsumexp and the three gradients; reruns bit-identical.
set -u
B=$1
PY=/usr/bin/python3
$PY -c "import numpy, torch" 2>/dev/null || { echo "skip: /usr/bin/python3 lacks numpy/torch"; exit 77; }
W=$(mktemp -d "$B/test_attn_kernel.XXXXXX")
trap 'rm -rf "$W"' EXIT
$PY "$PREFOPT_SOURCE_DIR/tests/tools/ref_attention.py" "$B/tests/test_attn_kernel" "$W" 1e-5
