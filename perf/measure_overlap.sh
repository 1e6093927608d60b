#!/usr/bin/env bash
# Overlap of the data-parallel gradient reduction with backward (README "Scaling": measured on this machine),
# interleaved so each repetition compares the configurations back to back:
#   for NP in 2 (2 ranks x 1 BLIS thread, dp 2) and 4 (4 ranks on the same cores, oversubscribed, dp 4):
#     o0   --overlap-grad-reduce 0            (buckets reduced after backward: the blocking path)
#     o1   --overlap-grad-reduce 1            (each bucket started as backward passes it, polled between layers)
#     z1   --overlap-grad-reduce 1 --zero-stage 1
#     bf   --overlap-grad-reduce 1 --grad-reduce-dtype bf16
# Reported per configuration (perf/overlap_table.py): median over repetitions of the step time and of the exposed
# communication per step (the slowest rank's time inside the reduction's calls: polls during backward plus the
# wait after it), and the fraction of the blocking path's exposed time that overlap hid.
#   perf/measure_overlap.sh BUILD_DIR [REPS=3] [OUT_DIR=perf/results/overlap] [extra prefopt bench options...]
set -euo pipefail
B=${1:?build dir}; REPS=${2:-3}; OUT=${3:-perf/results/overlap}; shift $(( $# < 3 ? $# : 3 ))
P="$B/prefopt"
mkdir -p "$OUT"
export OMPI_ALLOW_RUN_AS_ROOT=${OMPI_ALLOW_RUN_AS_ROOT:-1} OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=${OMPI_ALLOW_RUN_AS_ROOT_CONFIRM:-1}
export BLIS_NUM_THREADS=1 OMP_NUM_THREADS=1
SHAPE=(--shape custom --arch gpt2 --n-layer 8 --n-embd 256 --n-head 4 --vocab 8192 --max-position 256
       --pairs 2 --prompt-len 64 --chosen-len 32 --rejected-len 32 --grad-bucket-mib 8)
common=(--steps "${STEPS:-4}" --warmup 1 --table=0 "${SHAPE[@]}" "$@")
run() { # name np options...
  local name=$1 np=$2; shift 2
  echo "[$(date +%T) load $(cut -d' ' -f1 /proc/loadavg)] $name" >&2
  mpiexec --oversubscribe --bind-to none -n "$np" "$P" bench "${common[@]}" --dp "$np" "$@" > "$OUT/$name.log" 2>&1 ||
    { echo "$name failed: $(tail -3 "$OUT/$name.log")" >&2; return 1; }
  grep '^{' "$OUT/$name.log" | tail -1 >> "$OUT/$name.jsonl"
}
CONFIGS=${CONFIGS:-o0 o1 z1 bf} # env: a subset of the configurations
declare -A opt=([o0]="--overlap-grad-reduce 0" [o1]="--overlap-grad-reduce 1"
                [z1]="--overlap-grad-reduce 1 --zero-stage 1" [bf]="--overlap-grad-reduce 1 --grad-reduce-dtype bf16")
for ((r = 1; r <= REPS; r++)); do
  for np in 2 4; do
    for c in $CONFIGS; do
      # shellcheck disable=SC2086
      run np${np}_$c $np ${opt[$c]}
    done
  done
done
python3 "$(dirname "$0")/overlap_table.py" "$OUT"
