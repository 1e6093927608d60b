#!/usr/bin/env bash
# End to end: tiny HF models (GPT-2; Llama with GQA and an untied head; Qwen2 with QKV biases and a tied head),
# fp16 on disk, imported by prefopt import, loaded on 1x1, 1x2 and 2x1 grids; every token's log-prob matches a
# float64 numpy forward written from the HF modeling code that reads the HF directory itself (1e-4 relative).
set -u
B=$1
PY=/usr/bin/python3
T=$PREFOPT_SOURCE_DIR/tests/tools
$PY -c "import numpy, h5py" 2>/dev/null || { echo "skip: /usr/bin/python3 lacks numpy/h5py"; exit 77; }
W=$(mktemp -d "$B/test_hf_forward.XXXXXX")
trap 'rm -rf "$W"' EXIT
MPI="mpiexec --oversubscribe --bind-to none"
fail=0
for spec in "gpt2" "llama" "qwen2 --tie"; do
  set -- $spec
  d=$W/$1
  $PY "$T/make_tiny_hf.py" $d --arch "$@" --dtype f16 --seed 11 || { echo "FAIL generator $spec"; fail=1; continue; }
  "$PREFOPT" import --hf $d --out $d.h5 > /dev/null || { echo "FAIL import $spec"; fail=1; continue; }
  for grid in "1 1 1" "2 1 2" "2 2 1"; do
    set -- $grid
    $MPI -n $1 "$B/tests/test_hf_forward" $d.h5 $d.out $2 $3 && $PY "$T/ref_forward.py" $d $d.out 1e-4 \
      || { echo "FAIL $spec on a $2x$3 grid"; fail=1; }
  done
done
exit $fail
