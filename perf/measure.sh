#!/usr/bin/env bash
# The measurement set behind perf/README.md's figures, interleaved so each repetition compares configurations
# measured back to back (ratios are taken within a repetition, then the median over repetitions):
#   A  prefopt bench --precision fp32, 1 rank x 2 BLIS threads     (GPT-2 small shape, 2 pairs x [128|64|64])
#      (the LM head at completion positions only, as train does for DPO: --completion-logits 1)
#   T  torch_dpo_step.py, packed rows, 2 threads (same BLIS, skx)  (the identical step: --logits-to-keep 1)
#   F  prefopt bench as A with the LM head at every position     (--completion-logits 0)
#   G  torch_dpo_step.py as T with the head at every position     (the identical step to F)
#   U  torch_dpo_step.py, TRL layout, 2 threads, head everywhere  (TRL's default)
#   B  prefopt bench, 2 ranks x 1 thread, grid 1x2
#   C  prefopt bench, 2 ranks x 1 thread, grid 2x1
#   D  prefopt bench, 1 rank x 2 threads, --activation-checkpoint
#   H  prefopt bench --precision bf16, 1 rank x 2 threads         (only where the CPU has AVX512-BF16 or AMX-BF16)
#   K  torch_dpo_step.py --amp bf16 (autocast around both forwards), as T
#  (every prefopt row but H runs --precision fp32, the figures of before bf16 existed)
#
#   perf/measure.sh BUILD_DIR [REPS=3] [OUT_DIR=perf-results] [extra prefopt bench options...]
#   (env STEPS=3 measured steps; TORCH_ARGS: extra torch_dpo_step.py options for other shapes; ROWS=AHKT runs
#    only those rows, in the order above; BF16=0|1 overrides the CPU check for H and K)
set -euo pipefail
B=${1:?build dir}; REPS=${2:-3}; OUT=${3:-perf-results}; shift $(( $# < 3 ? $# : 3 ))
HERE=$(cd "$(dirname "$0")" && pwd)
P="$B/prefopt"
mkdir -p "$OUT"
export OMPI_ALLOW_RUN_AS_ROOT=${OMPI_ALLOW_RUN_AS_ROOT:-1} OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=${OMPI_ALLOW_RUN_AS_ROOT_CONFIRM:-1}
STEPS=${STEPS:-3}
common=(--steps "$STEPS" --warmup 1 --table=0 --precision fp32 "$@")
BF16=${BF16:-$(grep -qwE 'avx512_bf16|amx_bf16' /proc/cpuinfo && echo 1 || echo 0)}
run() { # name, then the command; appends the JSON line to OUT/name.jsonl and keeps the log
  local name=$1; shift
  case "${ROWS:-ATFGUBCDHK}" in *"$name"*) ;; *) return 0 ;; esac
  echo "[$(date +%T) load $(cut -d' ' -f1 /proc/loadavg)] $name: $*" >&2
  "$@" > "$OUT/$name.log" 2>&1 || { echo "$name failed: $(tail -3 "$OUT/$name.log")" >&2; return 1; }
  grep '^{' "$OUT/$name.log" | tail -1 >> "$OUT/$name.jsonl"
}
for ((r = 1; r <= REPS; r++)); do
  run A env BLIS_NUM_THREADS=2 OMP_NUM_THREADS=2 "$P" bench "${common[@]}"
  run T env BLIS_NUM_THREADS=2 OMP_NUM_THREADS=2 /usr/bin/python3 "$HERE/torch_dpo_step.py" --threads 2 --steps "$STEPS" ${TORCH_ARGS:-}
  run F env BLIS_NUM_THREADS=2 OMP_NUM_THREADS=2 "$P" bench "${common[@]}" --completion-logits 0
  run G env BLIS_NUM_THREADS=2 OMP_NUM_THREADS=2 /usr/bin/python3 "$HERE/torch_dpo_step.py" --threads 2 --steps "$STEPS" ${TORCH_ARGS:-} --logits-to-keep 0
  run U env BLIS_NUM_THREADS=2 OMP_NUM_THREADS=2 /usr/bin/python3 "$HERE/torch_dpo_step.py" --threads 2 --steps "$STEPS" ${TORCH_ARGS:-} --layout trl --logits-to-keep 0
  run B mpiexec -n 2 --bind-to core -x BLIS_NUM_THREADS=1 -x OMP_NUM_THREADS=1 "$P" bench --grid-cols 2 "${common[@]}"
  run C mpiexec -n 2 --bind-to core -x BLIS_NUM_THREADS=1 -x OMP_NUM_THREADS=1 "$P" bench --grid-rows 2 "${common[@]}"
  run D env BLIS_NUM_THREADS=2 OMP_NUM_THREADS=2 "$P" bench --activation-checkpoint "${common[@]}"
  if [ "$BF16" = 1 ]; then
    run H env BLIS_NUM_THREADS=2 OMP_NUM_THREADS=2 "$P" bench "${common[@]}" --precision bf16
    run K env BLIS_NUM_THREADS=2 OMP_NUM_THREADS=2 /usr/bin/python3 "$HERE/torch_dpo_step.py" --threads 2 --steps "$STEPS" ${TORCH_ARGS:-} --amp bf16
  fi
done
/usr/bin/python3 - "$OUT" <<'PYEOF'
import json, os, statistics, sys
out = sys.argv[1]
def load(n):
    p = os.path.join(out, n + ".jsonl")
    return [json.loads(l) for l in open(p)] if os.path.exists(p) else []
R = {n: load(n) for n in "ATFGUBCDHK"}
med = statistics.median
def col(n, k): return [j[k] for j in R[n]]
print(f"{len(R['A'])} repetitions; medians over repetitions (each value itself a median over steps)")
for n, what in [("A", "prefopt 1 rank x 2 threads"), ("T", "torch packed, 2 threads"),
                ("F", "prefopt 1 rank x 2 threads, head everywhere"), ("G", "torch packed, head everywhere"),
                ("U", "torch TRL layout, 2 threads"),
                ("B", "prefopt 2 ranks x 1 thread, grid 1x2"), ("C", "prefopt 2 ranks x 1 thread, grid 2x1"),
                ("D", "prefopt 1 rank x 2 threads, activation checkpointing"),
                ("H", "prefopt bf16, 1 rank x 2 threads"), ("K", "torch packed, autocast bf16, 2 threads")]:
    if not R[n]:
        continue
    j = R[n][0]
    peak = med([x.get("sgemm_peak_gflops_per_rank", x.get("sgemm_peak_gflops", 0)) for x in R[n]])
    print(f"  {n} {what:52s} step {med(col(n, 'step_s')):.3f} s | {med(col(n, 'tokens_per_s')):7.1f} pair-tokens/s | "
          f"{med(col(n, 'gflops')):6.1f} GFLOP/s | peak {peak:6.1f}/rank | MFU {med(col(n, 'mfu')):.3f}")
def ratio(a, b, k="tokens_per_s"):
    n = min(len(R[a]), len(R[b]))
    return med([R[a][i][k] / R[b][i][k] for i in range(n)]) if n else float("nan")
print(f"  prefopt / torch packed (same step), tokens/s:        {ratio('A', 'T'):.2f}x")
print(f"  same, LM head at every position (F / G):             {ratio('F', 'G'):.2f}x")
print(f"  prefopt completion head / every position (A / F):    {ratio('A', 'F'):.2f}x")
print(f"  prefopt / torch TRL layout, pair tokens/s:           {ratio('A', 'U'):.2f}x")
print(f"  2 ranks 1x2 / 1 rank 2 threads, tokens/s:            {ratio('B', 'A'):.3f}")
if R["H"]:
    print(f"  prefopt bf16 / torch autocast bf16 (H / K), tokens/s: {ratio('H', 'K'):.2f}x")
    print(f"  prefopt bf16 / prefopt fp32 (H / A), tokens/s:       {ratio('H', 'A'):.2f}x")
    print(f"  torch autocast bf16 / torch fp32 (K / T), tokens/s:  {ratio('K', 'T'):.2f}x")
print(f"  2 ranks 2x1 / 1 rank 2 threads, tokens/s:            {ratio('C', 'A'):.3f}")
if R["D"]:
    n = min(len(R["A"]), len(R["D"]))
    mem = med([R["A"][i]["memory_mib"]["activations_policy"]["max"] / R["D"][i]["memory_mib"]["activations_policy"]["max"] for i in range(n)])
    t = med([R["D"][i]["step_s"] / R["A"][i]["step_s"] for i in range(n)])
    print(f"  activation checkpointing: policy activation memory / {mem:.2f}, step time x {t:.3f}")
    print(f"    policy activations MiB: off {med([x['memory_mib']['activations_policy']['max'] for x in R['A']]):.1f}, "
          f"on {med([x['memory_mib']['activations_policy']['max'] for x in R['D']]):.1f}; peak RSS off "
          f"{med([x['memory_mib']['peak_rss']['max'] for x in R['A']]):.1f}, on {med([x['memory_mib']['peak_rss']['max'] for x in R['D']]):.1f}"
          f"; state lower bound {R['A'][0]['memory_mib']['state_lower_bound']['max']:.1f}")
for n in "ABCD":
    if R[n]:
        ph = R[n][-1]["phases_s"]
        print(f"  {n} phases (last rep, avg over ranks, s/step): " +
              ", ".join(f"{k} {v['avg']:.3f} [{v['min']:.3f}-{v['max']:.3f}]" for k, v in ph.items()))
PYEOF
