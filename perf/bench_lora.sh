#!/usr/bin/env bash
# LoRA DPO against full DPO, interleaved A/B (each repetition runs the pair back to back; ratios are taken within
# a repetition, then the median over repetitions), 1 rank x 2 BLIS threads, on
#   gpt2-small   prefopt bench defaults (2 pairs x [128 | 64 | 64])
#   llama-1b     the Llama-3.2-1B slice of perf/README.md (2 of 16 layers, vocab 32000, 1 pair x [512 | 256 | 256])
# LoRA: r 16, alpha 32, every linear (all-linear); full DPO holds a reference model, LoRA uses the base with its
# adapters off. Reports per-rank peak RSS, the model-state lower bound, activations and the median step time.
#   perf/bench_lora.sh BUILD_DIR [REPS=3] [OUT_DIR=perf-results/lora]
set -euo pipefail
B=${1:?build dir}; REPS=${2:-3}; OUT=${3:-perf-results/lora}
P="$B/prefopt"
mkdir -p "$OUT"
export BLIS_NUM_THREADS=${BLIS_NUM_THREADS:-2} OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
STEPS=${STEPS:-3}
declare -A SHAPE=([gpt2-small]="--shape gpt2-small"
                  [llama-1b]="--shape llama-1b --n-layer 2 --vocab 32000 --pairs 1 --prompt-len 512 --chosen-len 256 --rejected-len 256")
LORA="--lora-r 16 --lora-alpha 32 --lora-targets all-linear"
for s in gpt2-small llama-1b; do rm -f "$OUT/$s-full.jsonl" "$OUT/$s-lora.jsonl"; done
for ((r = 1; r <= REPS; r++)); do
  for s in gpt2-small llama-1b; do
    for v in full lora; do
      extra=""; [ $v = lora ] && extra=$LORA
      echo "[$(date +%T) load $(cut -d' ' -f1 /proc/loadavg)] $s $v rep $r" >&2
      # shellcheck disable=SC2086
      "$P" bench ${SHAPE[$s]} $extra --steps "$STEPS" --warmup 1 --table=0 > "$OUT/$s-$v.log" 2>&1 ||
        { echo "$s $v failed: $(tail -3 "$OUT/$s-$v.log")" >&2; exit 1; }
      grep '^{' "$OUT/$s-$v.log" | tail -1 >> "$OUT/$s-$v.jsonl"
    done
  done
done
/usr/bin/python3 - "$OUT" <<'PY'
import json, statistics as st, sys
out = sys.argv[1]
def rows(n): return [json.loads(l) for l in open(f"{out}/{n}.jsonl")]
def g(o, k):
    if k == "step_s": return o["step_s"]
    return o["memory_mib"]["peak_rss" if k == "peak_rss_mib" else "state_lower_bound"]["max"]
print("| shape | run | step s (median) | peak RSS MiB | model state MiB | LoRA/full step | full/LoRA peak RSS | full/LoRA state |")
print("|---|---|---|---|---|---|---|---|")
for s in ("gpt2-small", "llama-1b"):
    f, l = rows(f"{s}-full"), rows(f"{s}-lora")
    rs = [g(b, "step_s") / g(a, "step_s") for a, b in zip(f, l)]
    rm = [g(a, "peak_rss_mib") / g(b, "peak_rss_mib") for a, b in zip(f, l)]
    rst = [g(a, "state_mib") / g(b, "state_mib") for a, b in zip(f, l)]
    for name, x in (("full DPO + reference", f), ("LoRA r16 all-linear", l)):
        print(f"| {s} | {name} | {st.median(g(o, 'step_s') for o in x):.3f} | {st.median(g(o, 'peak_rss_mib') for o in x):.0f} | "
              f"{st.median(g(o, 'state_mib') for o in x):.0f} | | | |")
    print(f"| {s} | ratio (median of {len(rs)} pairs) | | | | {st.median(rs):.3f} | {st.median(rm):.2f} | {st.median(rst):.2f} |")
PY
