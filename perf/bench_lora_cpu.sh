#!/usr/bin/env bash
# CPU seconds per DPO step, full DPO vs LoRA (r 16, alpha 32, all-linear), GPT-2-small shape, 1 rank x 1 thread:
# the user CPU time of a 4-step bench minus that of a 1-step bench, over 3 (start-up, allocation and the sgemm
# peak measurements cancel). On a shared machine the CPU time of a single-threaded process moves far less with the
# load than its wall time, so this gives the LoRA/full ratio where bench_lora.sh's wall-clock steps cannot.
#   perf/bench_lora_cpu.sh BUILD_DIR [REPS=2]      prints "rep variant steps user_s sys_s wall_s" and the ratios
set -euo pipefail
B=${1:?build dir}; REPS=${2:-2}
export BLIS_NUM_THREADS=1 OMP_NUM_THREADS=1
t=$(mktemp)
out=$(mktemp)
for ((rep = 1; rep <= REPS; rep++)); do
  for v in full lora; do
    extra=""; [ $v = lora ] && extra="--lora-r 16 --lora-alpha 32 --lora-targets all-linear"
    for n in 1 4; do
      # shellcheck disable=SC2086
      /usr/bin/time -o "$t" -f "%U %S %e" "$B/prefopt" bench --shape gpt2-small --steps $n --warmup 0 --table=0 $extra > /dev/null 2>&1
      echo "$rep $v $n $(cat "$t")" | tee -a "$out"
    done
  done
done
/usr/bin/python3 - "$out" <<'PY'
import sys, collections, statistics as st
u = collections.defaultdict(dict)
for l in open(sys.argv[1]):
    rep, v, n, us, ss, ws = l.split()
    u[(rep, v)][int(n)] = float(us)
ratios = []
for rep in sorted({k[0] for k in u}):
    f = (u[(rep, "full")][4] - u[(rep, "full")][1]) / 3
    l = (u[(rep, "lora")][4] - u[(rep, "lora")][1]) / 3
    ratios.append(l / f)
    print(f"rep {rep}: CPU s per step full {f:.2f}, LoRA {l:.2f}, LoRA/full {l / f:.3f}")
print(f"median LoRA/full CPU time per step: {st.median(ratios):.3f}")
PY
rm -f "$t" "$out"
