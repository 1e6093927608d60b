#!/usr/bin/env bash
# Per-step data time (metrics.jsonl "data_s": the slowest rank's wait for its batch) at dp 1, 2 and 4, with and
# without --data-prefetch (issue 17). A tiny DPO model on a pairs dataset of longer examples, so that a step's read
# is visible beside its compute; ranks oversubscribed on this machine, so the figures are indicative.
# usage: perf/data_prefetch.sh [PREFOPT] [STEPS]     prints: dp prefetch median_data_s median_step_s
set -euo pipefail
P=${1:-build/prefopt}
STEPS=${2:-20}
case $P in /*) ;; *) P=$PWD/$P ;; esac
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export OMPI_MCA_mpi_yield_when_idle=1 BLIS_NUM_THREADS=1 OMP_NUM_THREADS=1
w=$(mktemp -d "${TMPDIR:-/tmp}/prefopt_prefetch.XXXXXX")
trap 'rm -rf "$w"' EXIT
cd "$w"
/usr/bin/python3 - <<'PY'
import json, random
r = random.Random(3)
L = "abcdefghijklmnop "
with open("train.jsonl", "w") as f:
    for i in range(40000):
        p = "".join(r.choice(L) for _ in range(r.randint(20, 60)))
        f.write(json.dumps({"prompt": p, "chosen": p[:r.randint(10, 60)], "rejected": p[::-1][:r.randint(10, 60)]}) + "\n")
PY
"$P" pack --input train.jsonl --output train.h5 --quiet
"$P" train --data train.h5 --run-dir init --n-layer 2 --n-embd 64 --n-head 4 --max-position 192 --seed 5 \
  --epochs 0 > init.log 2>&1
printf '%-3s %-9s %14s %14s\n' dp prefetch median_data_s median_step_s
for dp in 1 2 4; do
  for pf in 0 1; do
    mpiexec -n $dp --bind-to none "$P" train --data train.h5 --init init/model.h5 --loss dpo --lr 1e-4 \
      --batch-size 16 --micro-batch-size 4 --dp $dp --max-steps "$STEPS" --log-interval 1000 --peak-gflops 1 \
      --resume never --save-interval 0 --data-prefetch $pf --run-dir r$dp$pf > r$dp$pf.log 2>&1 ||
      { cat r$dp$pf.log; exit 1; }
    /usr/bin/python3 - r$dp$pf/metrics.jsonl $dp $pf <<'PY'
import json, sys, statistics as s
rows = [json.loads(l) for l in open(sys.argv[1]) if '"data_s"' in l][1:]  # the first step waits for start-up
print(f"{sys.argv[2]:<3} {sys.argv[3]:<9} {s.median(r['data_s'] for r in rows):14.5f} "
      f"{s.median(r['step_time'] for r in rows):14.5f}")
PY
  done
done
