#!/usr/bin/env bash
# Issue 20's architectures in the engine (Qwen3, Mistral with a window, OLMo 2, Gemma 2, Gemma 3 text, Phi-3,
# SmolLM3), from tiny HF models of the independent writer with windows (3-4) shorter than the rows: packed DPO
# rows against the float64 numpy reference (ref_packed.py), gradients on 1x2, 2x1, 2x2 equal to 1x1 and, on 1x1,
# to finite differences, and KV-cache generation equal to recomputation (tests/test_arch.c).
set -u
source "$(dirname "$0")/lib.sh"
B=$1
T=$PREFOPT_SOURCE_DIR/tests/tools
requires_python_h5py
scratch_dir W "$B/test_arch.XXXXXX"
for spec in "qwen3" "mistral --set-config sliding_window=3" "olmo2" "gemma2 --tie" "gemma3_text --tie" "phi3" \
            "smollm3 --tie"; do
  set -- $spec
  d=$W/$1
  $PY "$T/make_tiny_hf.py" $d --arch "$@" --seed 5 || { echo "FAIL generator $spec"; fail=1; continue; }
  "$PREFOPT" import --hf $d --out $d.h5 > /dev/null || { echo "FAIL import $spec"; fail=1; continue; }
  outs=""
  for grid in "1 1 1" "2 1 2" "2 2 1" "4 2 2"; do
    set -- $grid
    $MPI -n $1 "$B/tests/test_arch" $d.h5 $d.$2x$3.out $2 $3 > $d.log 2>&1 || { echo "FAIL $spec on a $2x$3 grid"; cat $d.log; fail=1; }
    grep -h "^test_arch:" $d.log | sed "s|^|  $spec $2x$3: |"
    outs="$outs $d.$2x$3.out"
  done
  $PY "$T/ref_packed.py" $d $outs || { echo "FAIL $spec: packed rows"; fail=1; }
done
exit $fail
