#!/usr/bin/env bash
# Data-parallel gradient reduction (issue 17): buckets overlapped with backward, the distributed optimizer
# (--zero-stage 1), bf16 communication. On a 3-layer tiny model with one bucket per layer (--grad-bucket-mib 0.01):
#  - overlapped and blocking reduction (same buckets, same collectives) give bit-identical losses, gradient norms
#    and final weights, at dp 2 and at dp 4 (oversubscribed), with zero 0 and 1 and with bf16;
#  - dp 2 and dp 4, with and without overlap and zero, give the losses of one rank within 1e-5 relative (also a
#    2x1 and a 1x2 grid x dp 2);
#  - bf16 communication stays within its bound of the fp32 losses (and is not bit-identical: it does something);
#  - a --zero-stage 1 dp 2 checkpoint resumes on 1 rank, and a 1-rank checkpoint on zero 1 dp 2, with the next
#    steps' losses equal (1e-5) to the uninterrupted runs';
#  - the exposed communication time is in the metrics; bad values of the new options stop with one line.
set -u
source "$(dirname "$0")/lib.sh"
P=${PREFOPT:?}
mpi_env_root
make_workdir d

$PY - <<'PYEOF'
import json, random
r = random.Random(7)
L = "abcdefgh"
with open("train.jsonl", "w") as f:
    for i in range(400):
        p = "".join(r.choice(L) for _ in range(4))
        c, rej = p[0] * 3, r.choice([x for x in L if x != p[0]]) * 3
        f.write(json.dumps({"prompt": p + ":", "chosen": c, "rejected": rej}) + "\n")
PYEOF
"$P" pack --input train.jsonl --output train.h5 --quiet || exit 1
C="--data train.h5 --n-layer 3 --n-embd 32 --n-head 2 --max-position 16 --seed 11 --loss dpo:1,sft:0.5 --lr 1e-3
   --lr-scheduler constant --batch-size 8 --max-steps 6 --log-interval 1000 --grad-bucket-mib 0.01 --weight-decay 0.1"
run() { # run NAME NP ARGS...
  local name=$1 np=$2; shift 2
  $MPI -n $np "$P" train $C --run-dir $name "$@" > $name.log 2>&1 || { echo "FAILED: run $name: $(tail -3 $name.log)"; fail=1; }
}
# same KEY [TOL] A B: the per-step values of KEY agree (TOL 0: bit for bit)
same() { $PY - "$@" <<'PYEOF'
import json, sys
key, tol, a, b = sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4]
def vals(p):
    return [json.loads(l)[key] for l in open(p) if '"%s"' % key in l and '"eval/' not in l]
x, y = vals(a), vals(b)
ok = len(x) == len(y) and len(x) > 0 and all(abs(u - v) <= tol * max(abs(u), 1e-12) for u, v in zip(x, y))
if not ok:
    print(key, x, y)
sys.exit(0 if ok else 1)
PYEOF
}
weights() { h5dump -m "%.9e" -g /model "$1" | grep -v -i "time\|^HDF5" ; }
same_weights() { weights $1/model.h5 > w1.txt; weights $2/model.h5 > w2.txt; cmp -s w1.txt w2.txt; }

run b1 1
for np in 2 4; do
  for z in 0 1; do
    run d${np}z${z}o0 $np --zero-stage $z --overlap-grad-reduce 0
    run d${np}z${z}o1 $np --zero-stage $z --overlap-grad-reduce 1
    check "same loss 0 d${np}z${z}o0/metrics.jsonl d${np}z${z}o1/metrics.jsonl && same grad_norm 0 d${np}z${z}o0/metrics.jsonl d${np}z${z}o1/metrics.jsonl" \
          "dp $np zero $z: overlapped == blocking, bit for bit (losses, norms)"
    check "same_weights d${np}z${z}o0 d${np}z${z}o1" "dp $np zero $z: overlapped == blocking final weights, bit for bit"
    check "same loss 1e-5 b1/metrics.jsonl d${np}z${z}o1/metrics.jsonl && same grad_norm 1e-5 b1/metrics.jsonl d${np}z${z}o1/metrics.jsonl" \
          "dp $np zero $z == one rank (1e-5)"
  done
done
check 'grep -q grad_comm_exposed_s d2z0o1/metrics.jsonl && grep -q param_gather_s d2z1o1/metrics.jsonl' \
      "exposed communication time in the metrics"
# 4 buckets (final norm + layer 2, layer 1, layer 0, embeddings; the head is tied): with overlap each starts
# during backward (the last as backward ends), without overlap none
check 'grep -q "\"grad_buckets\":4,\"grad_buckets_early\":4" d2z1o1/metrics.jsonl && grep -q "\"grad_buckets\":4,\"grad_buckets_early\":0" d2z1o0/metrics.jsonl' \
      "buckets start during backward with overlap only: $(grep -o 'grad_buckets.*' d2z1o1/metrics.jsonl | head -1)"
check 'grep -q "AdamW [0-9.]* (1/dp shard)" d2z1o1.log' "the memory line counts the sharded moments: $(grep memory d2z1o1.log)"
# tensor parallel inside each replica: 2x1 grids x dp 2, zero 1
run g21z1 4 --grid-rows 2 --zero-stage 1
check "same loss 1e-5 b1/metrics.jsonl g21z1/metrics.jsonl" "grid 2x1 x dp 2, zero 1 == one rank (1e-5)"
run g12z1 4 --grid-cols 2 --zero-stage 1 --grad-reduce-dtype fp32
check "same loss 1e-5 b1/metrics.jsonl g12z1/metrics.jsonl" "grid 1x2 x dp 2, zero 1 == one rank (1e-5)"

# bf16 on the wire: each element rounded at most twice (2^-8 relative per contribution, 2^-9 of the sum), so
# a step's update moves by O(2^-8 lr) per weight; over 6 steps the loss stays within 1e-3 relative of fp32
run bf2 2 --grad-reduce-dtype bf16
run bf2o0 2 --grad-reduce-dtype bf16 --overlap-grad-reduce 0
run bf4z1 4 --grad-reduce-dtype bf16 --zero-stage 1
check "same loss 0 bf2/metrics.jsonl bf2o0/metrics.jsonl && same_weights bf2 bf2o0" "bf16: overlapped == blocking, bit for bit"
check "same loss 1e-3 b1/metrics.jsonl bf2/metrics.jsonl && same loss 1e-3 b1/metrics.jsonl bf4z1/metrics.jsonl" \
      "bf16 communication within 1e-3 of fp32"
check "! same grad_norm 0 d2z0o1/metrics.jsonl bf2/metrics.jsonl > /dev/null" "bf16 changes the sums (not a no-op)"

# checkpoints hold whole tensors: zero 1 dp 2 -> 1 rank, and 1 rank -> zero 1 dp 2 (3 steps, then 3 more)
run zc 2 --zero-stage 1 --max-steps 3
cp -r zc zc1
$MPI -n 1 "$P" train $C --run-dir zc1 --resume auto > zc1.log 2>&1 || { echo "FAILED: zc1 $(tail -3 zc1.log)"; fail=1; }
check 'grep -q "resumed from" zc1.log' "zero 1 dp 2 checkpoint resumed on 1 rank"
check "same loss 1e-5 b1/metrics.jsonl zc1/metrics.jsonl" "zero 1 dp 2 -> 1 rank: the next steps' losses (1e-5)"
run oc 1 --max-steps 3
cp -r oc oc2
$MPI -n 2 "$P" train $C --run-dir oc2 --resume auto --zero-stage 1 > oc2.log 2>&1 || { echo "FAILED: oc2 $(tail -3 oc2.log)"; fail=1; }
check 'grep -q "resumed from" oc2.log' "1-rank checkpoint resumed with zero 1 on dp 2"
check "same loss 1e-5 d2z1o1/metrics.jsonl oc2/metrics.jsonl" "1 rank -> zero 1 dp 2: the next steps' losses (1e-5)"

# bad values: one line, exit 2
for bad in "--zero-stage 2" "--grad-reduce-dtype fp16" "--overlap-grad-reduce 3" "--grad-bucket-mib 0"; do
  $MPI -n 2 "$P" train $C --run-dir bad $bad > bad.log 2>&1; rc=$?
  n=$(grep -c "prefopt: error:" bad.log)
  check "[ $rc -eq 2 ] && [ $n -ge 1 ] && ! grep -v 'prefopt: error:' bad.log | grep -q -i 'error'" "$bad: exit 2 with one error line (rc $rc): $(head -2 bad.log)"
done

finish test_dp_sync
