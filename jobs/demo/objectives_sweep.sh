#!/usr/bin/env bash
# Which objective wins on a small verifiable task, and what plain DPO does to the chosen answers' likelihood.
#   task data (prefopt_demo_task gen --task add: "14+39=" -> "53"; pairs are (correct, off-by-ten wrong))
#   -> SFT a 2-layer 64-wide byte-level GPT-2 from scratch (2000 steps) -> from that SFT model, 200 steps of each objective
#   below (same data order, batch 32) -> greedy generation on 500 held-out prompts, checked -> one table row
#   each: held-out accuracy, KL to the SFT reference, held-out reward accuracy, logps/chosen at the end.
# usage: jobs/demo/objectives_sweep.sh           (after a build; about a minute on 2 cores; artefacts in runs/sweep/)
# Environment: SWEEP_BUILD_DIR (build), SWEEP_RUN_DIR (runs/sweep), SWEEP_SEED (1), SWEEP_PRECISION (auto: bf16
# where the CPU has it; fp32 or bf16 to choose) for every train and generate.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
B=$(realpath -m "${SWEEP_BUILD_DIR:-build}")
R=${SWEEP_RUN_DIR:-runs/sweep}
SEED=${SWEEP_SEED:-1}
PREC=${SWEEP_PRECISION:-auto}
P=$B/prefopt
T=$B/prefopt_demo_task
[ -x "$P" ] && [ -x "$T" ] || { echo "sweep: error: build first ($P, $T missing)" >&2; exit 1; }
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)} BLIS_NUM_THREADS=${BLIS_NUM_THREADS:-$(nproc)}

rm -rf "$R"; mkdir -p "$R"
"$T" gen --out-dir "$R/data" --seed "$SEED" --task add --n-sft 20000 --n-pairs 10000 --n-eval 500 --wrong-frac 0.35
for f in sft pairs eval_pairs; do "$P" pack --input "$R/data/$f.jsonl" --output "$R/$f.h5" --quiet; done
"$P" train --loss sft --data "$R/sft.h5" --run-dir "$R/sft" --resume never --arch gpt2 --n-layer 2 --n-embd 64 \
    --n-head 4 --max-position 32 --max-steps 2000 --batch-size 64 --lr 3e-3 --warmup-steps 20 --log-interval 200 \
    --seed "$SEED" --precision "$PREC" > "$R/sft.log"
PROMPTS=$R/data/eval_prompts.jsonl

row() {   # name, then train options
  local name=$1; shift
  local d=$R/$name
  if [ "$name" = sft ]; then
    "$P" generate --model "$R/sft/model.h5" --prompts "$PROMPTS" --out "$R/gen-sft.jsonl" --max-new-tokens 8 \
        --precision "$PREC" 2>/dev/null
  else
    "$P" train --init "$R/sft/model.h5" --data "$R/pairs.h5" --eval-data "$R/eval_pairs.h5" --run-dir "$d" \
        --resume never --batch-size 32 --max-steps 200 --log-interval 1000 --seed "$SEED" --precision "$PREC" "$@" > "$R/$name.log"
    "$P" generate --model "$d/model.h5" --ref "$R/sft/model.h5" --prompts "$PROMPTS" --out "$R/gen-$name.jsonl" \
        --max-new-tokens 8 --precision "$PREC" 2>/dev/null
  fi
  "$T" check --prompts "$PROMPTS" --generations "$R/gen-$name.jsonl" --label "$name" | tail -1 > "$R/check-$name.json"
  python3 - "$R" "$name" "$*" <<'PY' | tee -a "$R/table.md"
import json, os, sys
r, name, opts = sys.argv[1:4]
c = json.load(open(f"{r}/check-{name}.json"))
ev = last = first = None
if os.path.exists(f"{r}/{name}/metrics.jsonl"):
    rows = [json.loads(l) for l in open(f"{r}/{name}/metrics.jsonl") if l.strip()]
    evs = [x for x in rows if "eval/rewards/accuracies" in x]
    ev = evs[-1] if evs else None
    steps = [x for x in rows if "logps/chosen" in x]
    first = steps[0]["logps/chosen"] if steps else None
    last = ev.get("eval/logps/chosen") if ev else None
f = lambda v, fmt: "" if v is None else format(v, fmt)
print(f"| {name} | `{opts}` | {c['accuracy']:.3f} | {f(c.get('kl'), '.2f')} | "
      f"{f(ev and ev['eval/rewards/accuracies'], '.3f')} | {f(first, '.2f')} -> {f(last, '.2f')} |")
PY
}

printf '| run | options | held-out accuracy (greedy) | KL to SFT (nats) | held-out reward acc | logps/chosen (train step 1 -> held-out end; per-token mean for simpo, orpo as in TRL) |\n|---|---|---:|---:|---:|---|\n' > "$R/table.md"
cat "$R/table.md"
row sft
row dpo_lr3e-5 --loss dpo --lr 3e-5
row dpo_lr1e-4 --loss dpo --lr 1e-4
row dpo_beta0.5 --loss dpo --beta 0.5 --lr 1e-4
row ipo --loss ipo --lr 1e-4
row simpo --loss simpo --beta 2 --lr 1e-4
row orpo --loss orpo --lr 1e-3
row rpo_lr1e-4 --loss dpo:1,sft:1 --lr 1e-4
row rpo_lr1e-3 --loss dpo:1,sft:1 --lr 1e-3
row sft_chosen --loss sft --lr 1e-3
