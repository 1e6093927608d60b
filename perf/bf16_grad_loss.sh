#!/usr/bin/env bash
# The effect of --grad-reduce-dtype bf16 on the loss (README "Scaling"): the synthetic preference task of
# tests/test_train.sh (chosen = the prompt's first letter x3), a 2-layer GPT-2 from scratch, DPO, 200 steps of 16
# pairs on dp 2, fp32 vs bf16 gradient communication from the same seed; printed: the largest and the median
# relative difference of the per-step losses, the mean loss of the last 20 steps, the final held-out reward
# accuracy and margin (prefopt eval, DPO's definition against the initial model).
#   perf/bf16_grad_loss.sh BUILD_DIR [OUT_DIR=perf/results/bf16_loss]
set -euo pipefail
B=${1:?build dir}; OUT=${2:-perf/results/bf16_loss}
P="$(cd "$B" && pwd)/prefopt"
mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd)
export OMPI_ALLOW_RUN_AS_ROOT=${OMPI_ALLOW_RUN_AS_ROOT:-1} OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=${OMPI_ALLOW_RUN_AS_ROOT_CONFIRM:-1}
export BLIS_NUM_THREADS=1 OMP_NUM_THREADS=1
d=$(mktemp -d); trap 'rm -rf "$d"' EXIT; cd "$d"
python3 - <<'PYEOF'
import json, random
r = random.Random(7)
L = "abcdefgh"
for name, n in (("train", 800), ("eval", 200)):
    with open(f"{name}.jsonl", "w") as f:
        for i in range(n):
            p = "".join(r.choice(L) for _ in range(4))
            c, rej = p[0] * 3, r.choice([x for x in L if x != p[0]]) * 3
            f.write(json.dumps({"prompt": p + ":", "chosen": c, "rejected": rej}) + "\n")
PYEOF
for s in train eval; do "$P" pack --input $s.jsonl --output $s.h5 --quiet; done
TINY="--n-layer 2 --n-embd 64 --n-head 4 --max-position 16 --seed 11"
"$P" train --data train.h5 --run-dir init $TINY --epochs 0 > init.log 2>&1
run() { # name np dtype
  mpiexec --oversubscribe --bind-to none -n $2 "$P" train --data train.h5 --init init/model.h5 --loss dpo --lr 3e-3 \
      --batch-size 16 --max-steps 200 --log-interval 1000 --run-dir r_$1 --grad-reduce-dtype $3 > $1.log 2>&1
  "$P" eval --model r_$1/model.h5 --ref init/model.h5 --data eval.h5 --out ev_$1.jsonl --loss dpo > ev_$1.txt 2>&1
  cp r_$1/metrics.jsonl "$OUT/metrics_$1.jsonl"; cp ev_$1.jsonl.summary.json "$OUT/eval_$1.json"
}
run fp32 2 fp32; run bf16 2 bf16
run fp32_np1 1 fp32 # the same fp32 step on one rank: differs from dp 2 only in the order of the sums
python3 - "$OUT" <<'PYEOF' | tee "$OUT/summary.txt"
import json, statistics, sys
o = sys.argv[1]
def rows(n):
    return [json.loads(l) for l in open(f"{o}/metrics_{n}.jsonl") if '"loss"' in l and '"eval/' not in l]
base = rows("fp32")
print("against fp32 on dp 2 (per-step loss relative difference: the largest over steps 1-10 and 1-50; mean loss "
      "over steps 151-200; held-out reward accuracy and margin after 200 steps)")
for n, what in (("fp32", "fp32, dp 2"), ("bf16", "bf16 communication, dp 2"), ("fp32_np1", "fp32, 1 rank")):
    r = rows(n)
    rel = [abs(x["loss"] - y["loss"]) / abs(x["loss"]) for x, y in zip(base, r)]
    ev = json.load(open(f"{o}/eval_{n}.json"))
    print(f"{what}: steps 1-10 {max(rel[:10]):.1e}, 1-50 {max(rel[:50]):.1e}; mean loss 151-200 "
          f"{statistics.mean(x['loss'] for x in r[150:]):.4f}; held-out accuracy {ev['eval/rewards/accuracies']:.3f}, "
          f"margin {ev['eval/rewards/margins']:.3f}")
PYEOF
