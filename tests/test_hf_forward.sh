#!/usr/bin/env bash
# End to end: tiny HF models (GPT-2; Llama with GQA and an untied head; Qwen2 with QKV biases and a tied head; the
# architectures of issue 20),
# fp16 on disk, imported by prefopt import, loaded on 1x1, 1x2 and 2x1 grids; every token's log-prob matches a
# float64 numpy forward written from the HF modeling code that reads the HF directory itself (1e-4 relative).
set -u
source "$(dirname "$0")/lib.sh"
B=$1
T=$PREFOPT_SOURCE_DIR/tests/tools
requires_python_h5py
scratch_dir W "$B/test_hf_forward.XXXXXX"
# issue 20: Qwen3, Mistral with a window, OLMo 2, Gemma 2, Gemma 3 text, Phi-3, SmolLM3 (windows of 3-4 tokens,
# shorter than the sequences), also on a 2x2 grid
for spec in "gpt2" "llama" "qwen2 --tie" "qwen3" "mistral --set-config sliding_window=3" "olmo2" "gemma2 --tie" \
            "gemma3_text --tie" "phi3" "smollm3 --tie" \
            'llama --set-config rope_scaling={"rope_type":"llama3","factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":8}'; do
  set -- $spec
  d=$W/$1
  $PY "$T/make_tiny_hf.py" $d --arch "$@" --dtype f16 --seed 11 || { echo "FAIL generator $spec"; fail=1; continue; }
  "$PREFOPT" import --hf $d --out $d.h5 > /dev/null || { echo "FAIL import $spec"; fail=1; continue; }
  grids="1 1 1|2 1 2|2 2 1"
  case $1 in gpt2|llama|qwen2) ;; *) grids="$grids|4 2 2" ;; esac
  IFS='|' read -ra GL <<< "$grids"
  for grid in "${GL[@]}"; do
    set -- $grid
    $MPI -n $1 "$B/tests/test_hf_forward" $d.h5 $d.out $2 $3 && $PY "$T/ref_forward.py" $d $d.out 1e-4 \
      || { echo "FAIL $spec on a $2x$3 grid"; fail=1; }
  done
done
exit $fail
