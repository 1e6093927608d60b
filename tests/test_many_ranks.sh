#!/usr/bin/env bash
# Many ranks on one machine (issue 17): a tiny DPO run on 8, 16, 32 and 64 oversubscribed ranks, grids up to 4x4
# and up to 32 data-parallel replicas, gives the losses and gradient norms of one rank within 1e-5 relative at
# every step (a step's loss depends on every weight the steps before it wrote); every run writes its final
# checkpoint and model file (the I/O paths of a large job), and one rank loads that model file back with every
# tensor's checksum verified (prefopt eval). Weights themselves are not compared: AdamW turns a gradient that is
# zero up to rounding (the key bias) into a step of +-lr, so they differ at the 1e-3 level by construction.
# Prints each run's start-up and checkpoint time so that the figures against P come from the same test.
# With the distributed optimizer too: 64 ranks with --zero-stage 1 (overlap on, the default with dp > 1), and
# checkpoints resharded across rank counts: 1 step on 32 ranks (zero 1, overlap off) resumed on 2 ranks, and 1
# step on 1 rank resumed on 64 (4x4 x 4, zero 1), each run's 3 steps equal to one rank's within 1e-5. Resuming
# after step 1 makes step 3's loss depend on the AdamW moments the checkpoint carried (step 2's update uses them),
# not only on its weights.
# usage: test_many_ranks.sh BUILD_DIR   (PREFOPT: the prefopt executable; default BUILD_DIR/prefopt)
set -uo pipefail
source "$(dirname "$0")/lib.sh"
build=${1:?usage: test_many_ranks.sh BUILD_DIR}
mpi_script_env "$build"
make_workdir w "${TMPDIR:-/tmp}/prefopt_many_ranks.XXXXXX"

$PY - <<'EOF'
import json, random
r = random.Random(7)
L = "abcdefgh"
with open("train.jsonl", "w") as f:
    for i in range(256):
        p = "".join(r.choice(L) for _ in range(4))
        c, rej = p[0] * 3, r.choice([x for x in L if x != p[0]]) * 3
        f.write(json.dumps({"prompt": p + ":", "chosen": c, "rejected": rej}) + "\n")
EOF
"$P" pack --input train.jsonl --output train.h5 --quiet || { echo "FAIL: pack"; exit 1; }
# 4 heads so that a 4-column grid holds one head per column; 2 layers so that stacked datasets have layers
"$P" train --data train.h5 --run-dir init --n-layer 2 --n-embd 32 --n-head 4 --max-position 16 --seed 11 \
  --epochs 0 > init.log 2>&1 || { cat init.log; echo "FAIL: the initial model"; exit 1; }
COMMON=(--data train.h5 --init init/model.h5 --loss dpo --lr 1e-3 --lr-scheduler constant --batch-size 64
        --max-steps 3 --log-interval 1000 --peak-gflops 1 --resume never)
timeout 120 "$P" train "${COMMON[@]}" --run-dir r1 > r1.log 2>&1 || { cat r1.log; echo "FAIL: one rank"; exit 1; }

compare() { # compare RUN: losses, grad_norm, margins and logps per step against r1 (1e-5 relative)
  $PY - "$1" <<'EOF'
import json, sys, h5py, numpy as np
def rows(p):
    return [json.loads(l) for l in open(p) if '"loss"' in l]
a, b = rows("r1/metrics.jsonl"), rows(sys.argv[1] + "/metrics.jsonl")
bad = []
if len(a) != 3 or len(b) != 3:
    bad.append(f"{len(b)} steps, expected 3")
for x, y in zip(a, b):
    for k in ("loss", "grad_norm", "rewards/margins", "logps/chosen"):
        if abs(x[k] - y[k]) > 1e-5 * max(abs(x[k]), 1e-3):
            bad.append(f"step {x['step']} {k}: {y[k]!r} vs {x[k]!r}")
print("; ".join(bad[:5]))
sys.exit(1 if bad else 0)
EOF
}

printf '%-6s %-10s %-5s %8s %10s %10s\n' ranks grid dp wall_s startup_s ckpt_s
# CONFIG: ranks, grid rows, grid cols, dp, then train options; a run resuming from FROM's checkpoint after
# "from=FROM" starts from a copy of that run's directory
for cfg in "8 2 2 2" "16 4 4 1" "32 1 1 32" "64 4 4 4" "64 2 1 32" "64 2 1 32 --zero-stage 1" \
           "32 1 1 32 --zero-stage 1 --overlap-grad-reduce 0 --max-steps 1" "2 1 1 2 from=r32_1x1z" \
           "1 1 1 1 --max-steps 1" "64 4 4 4 --zero-stage 1 from=r1_1x1"; do
  set -- $cfg
  np=$1 rows=$2 cols=$3 dp=$4 run=r$1_$2x$3
  shift 4
  extra=() from=
  for a in "$@"; do case $a in from=*) from=${a#from=} ;; *) extra+=("$a") ;; esac; done
  case " $* " in *" --zero-stage 1 "*) run=${run}z ;; esac
  [ -n "$from" ] && { run=${run}_from_$from; rm -rf "$run"; cp -r "$from" "$run"; extra+=(--resume auto); }
  t0=$(date +%s.%N)
  timeout 300 mpiexec -n "$np" --oversubscribe --bind-to none "$P" train "${COMMON[@]}" --run-dir "$run" \
    --grid-rows "$rows" --grid-cols "$cols" --dp "$dp" "${extra[@]}" < /dev/null > "$run.log" 2>&1
  rc=$?
  wall=$($PY -c "import sys; print('%.1f' % ($(date +%s.%N) - $t0))")
  su=$(sed -n 's/^start-up: \([0-9.]*\) s.*/\1/p' "$run.log")
  ck=$(sed -n 's/^checkpoint: .* (\([0-9.]*\) s)$/\1/p' "$run.log" | tail -1)
  printf '%-6s %-10s %-5s %8s %10s %10s\n' "$np" "${rows}x$cols" "$dp" "$wall" "${su:-?}" "${ck:-?}"
  case " ${extra[*]} " in *" --max-steps 1 "*) # the first part of a resharded run: compared once resumed
    [ "$rc" = 0 ] || { echo "FAIL: $run (its first step): exit $rc: $(tail -2 "$run.log")"; fails=$((fails + 1)); }
    continue ;;
  esac
  if [ -n "$from" ] && ! grep -q "resumed from" "$run.log"; then
    echo "FAIL: $run did not resume from $from's checkpoint: $(tail -2 "$run.log")"
    fails=$((fails + 1))
  elif [ "$rc" != 0 ]; then
    echo "FAIL: $np ranks, grid ${rows}x$cols, dp $dp: exit $rc"
    tail -5 "$run.log" | sed 's/^/    /'
    fails=$((fails + 1))
  elif ! msg=$(compare "$run"); then
    echo "FAIL: $np ranks, grid ${rows}x$cols, dp $dp differs from one rank: $msg"
    fails=$((fails + 1))
  elif ! "$P" eval --model "$run/model.h5" --data train.h5 --out "$run.eval.jsonl" --loss dpo > "$run.eval.log" 2>&1; then
    echo "FAIL: the model file written by $np ranks does not load on one rank: $(tail -1 "$run.eval.log")"
    fails=$((fails + 1))
  fi
done
if [ "$fails" -gt 0 ]; then
  echo "test_many_ranks: $fails run(s) failed"
  exit 1
fi
echo "test_many_ranks: 8-64 ranks equal one rank within 1e-5 (losses, grad norms, model files), with zero 1 and" \
     "with checkpoints resharded 32 -> 2 and 1 -> 64 ranks"
