#!/usr/bin/env bash
# perf/scaling_model.py against closed forms (tests/scaling_model_check.py) and its command line: the default
# table, --compare, and bad option values refused with one line.
set -euo pipefail
SRC=${PREFOPT_SOURCE_DIR:-$(cd "$(dirname "$0")/.." && pwd)}
W=$(mktemp -d); trap 'rm -rf "$W"' EXIT
M="python3 $SRC/perf/scaling_model.py --bench-json $SRC/perf/results/native/llama1b_slice.jsonl"
python3 "$SRC/tests/scaling_model_check.py" "$SRC"
out=$($M --compare --buckets layers --shapes llama-7b)
echo "$out" | grep -q '^| 256 | strong |' || { echo "FAIL: --compare has no 256-node strong row"; exit 1; }
out=$($M --overlap 1 --zero-stage 1 --precision bf16 --shapes llama-1b)
echo "$out" | grep -q 'exposed gather' || { echo "FAIL: zero 1 table lacks the gather column"; exit 1; }
if $M --overlap-fraction 1.5 2> "$W/err.txt"; then echo "FAIL: --overlap-fraction 1.5 accepted"; exit 1; fi
grep -q 'overlap-fraction' "$W/err.txt" || { echo "FAIL: no error line for --overlap-fraction"; exit 1; }
echo "test_scaling_model passed"
