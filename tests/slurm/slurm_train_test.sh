#!/usr/bin/env bash
# The job scripts with the real trainer on a real single-node SLURM (harness: slurm_env.sh):
#   1. jobs/pipeline.sh on the demo task (prefopt_demo_task gen): pack x2 -> SFT (tiny byte-level model from
#      scratch) -> DPO from the SFT checkpoint -> eval; every stage COMPLETED and its output present
#   2. DPO under --time=1 --signal=USR1@50: it gets the signal mid-run, checkpoints, exits 99, is requeued,
#      resumes (SLURM_RESTART_COUNT=1) and ends with the same final metrics as an uninterrupted run
# Skips (77) while `prefopt train --help` fails. The [train] keys of the two configs are in train_ini() below.
set -euo pipefail
B=$(cd "${1:?build dir}" && pwd)
SRC=${PREFOPT_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
export PREFOPT=${PREFOPT:-$B/prefopt}
HERE=$SRC/tests/slurm
# shellcheck source=slurm_env.sh
source "$HERE/slurm_env.sh"
W=
fail() { echo "FAIL: $*"; [ -n "$W" ] && for f in "$W"/p/logs/*.out "$W"/logs/*.out; do [ -f "$f" ] && { echo "--- $f"; tail -25 "$f"; }; done; exit 1; }

if ! "$PREFOPT" train --help > /dev/null 2>&1; then
  echo "SKIP: \`$PREFOPT train --help\` fails: prefopt train is not built yet (the job scripts' plumbing is tested" \
       "with a stand-in trainer by jobs_slurm)"
  exit 77
fi
"$PREFOPT" pack --help > /dev/null 2>&1 || { echo "SKIP: prefopt pack is not built yet"; exit 77; }
have_eval=1
"$PREFOPT" eval --help > /dev/null 2>&1 || { have_eval=0; echo "note: prefopt eval is not built yet: the pipeline runs without its eval stage"; }
[ -x "$B/prefopt_demo_task" ] || fail "$B/prefopt_demo_task not built"
why=$(slurm_can_run) || { echo "SKIP: this machine cannot run the SLURM daemons: $why"; exit 77; }

W=$(mktemp -d /tmp/prefopt-slurm-train.XXXXXX)
chmod 755 "$W"
trap 'slurm_stop; rm -rf "$W"' EXIT
trap 'exit 1' INT TERM
slurm_start "$W/slurm" || fail "could not start SLURM"
export PREFOPT_JOBS_DIR=$SRC/jobs
J=$SRC/jobs
t_start=$SECONDS

"$B/prefopt_demo_task" gen --out-dir "$W/data" --seed 3 --n-sft 2000 --n-pairs 1000 --n-eval 50 > /dev/null

train_ini() {  # loss max-steps lr file [extra lines]
  cat > "$4" <<INI
[train]
loss = $1
max-steps = $2
lr = $3
batch-size = 16
seed = 1
save-interval = 20
log-interval = 10
n-layer = 2
n-embd = 64
n-head = 4
max-position = 64
${5:-}
INI
}
train_ini sft 60 1e-3 "$W/sft.ini"
train_ini dpo 40 1e-4 "$W/dpo.ini" "beta = 0.1"
"$PREFOPT" train --config "$W/sft.ini" --print-config > /dev/null || fail "prefopt train rejects the test's sft.ini"
"$PREFOPT" train --config "$J/example.ini" --print-config > /dev/null || fail "prefopt train rejects jobs/example.ini"
"$PREFOPT" train --config "$J/example-sft.ini" --print-config > /dev/null || fail "prefopt train rejects jobs/example-sft.ini"

P=$W/p
cat > "$W/p.env" <<ENV
RUN_ROOT=$P
SBATCH_ARGS=(--ntasks=1)
PACK=("--input $W/data/sft.jsonl --output $P/sft.h5" "--input $W/data/pairs.jsonl --output $P/pairs.h5")
SFT_CONFIG=$W/sft.ini
SFT_SBATCH_ARGS=(--ntasks-per-node=2)
DPO_CONFIG=$W/dpo.ini
DPO_SBATCH_ARGS=(--ntasks-per-node=2)
ENV
[ $have_eval = 1 ] && echo "EVAL=(--model $P/dpo/model.h5 --data $P/pairs.h5 --out $P/eval-logps.jsonl)" >> "$W/p.env"
# the data paths go into the configs (the pipeline passes only CONFIG and RUN_DIR to train)
echo "data = $P/sft.h5" >> "$W/sft.ini"
echo "data = $P/pairs.h5" >> "$W/dpo.ini"
"$J/pipeline.sh" "$W/p.env" > /dev/null
end=$((SECONDS + 420))
while :; do
  busy=0
  while read -r stage id; do
    case $(slurm_job_state "$id") in PENDING|RUNNING|CONFIGURING|COMPLETING|REQUEUED) busy=1 ;; esac
  done < "$P/jobs.txt"
  [ $busy = 0 ] && break
  [ $SECONDS -lt $end ] || fail "pipeline still running after 420 s"
  sleep 2
done
while read -r stage id; do
  s=$(slurm_job_state "$id"); [ "$s" = COMPLETED ] || fail "pipeline stage $stage (job $id) ended $s"
done < "$P/jobs.txt"
outs="sft.h5 pairs.h5 sft/metrics.jsonl sft/model.h5 dpo/metrics.jsonl dpo/model.h5"
[ $have_eval = 1 ] && outs="$outs eval-logps.jsonl"
for f in $outs; do
  [ -e "$P/$f" ] || fail "pipeline output $f missing"
done
echo "ok: pipeline pack x2 -> SFT -> DPO$([ $have_eval = 1 ] && echo " -> eval") completed with the real trainer ($((SECONDS - t_start)) s)"

# DPO resume check. The interrupted run gets the real time-limit signal (--time=2 --signal=USR1@50: slurmctld may send it up to 60 s early;
# so it comes 10-70 s after the start), so how many steps it has done by then depends on the machine's load. With a
# constant learning rate the trajectory does not depend on max-steps, so: run with a huge max-steps; when the
# job is requeued (checkpoint at step K), hold it, set max-steps = K + 30 in its config, release it; it resumes
# and ends at K + 30. The reference is the same config run uninterrupted to K + 30.
sed -i '/^lr = /d' "$W/dpo.ini"
printf 'lr = 1e-4\nlr-scheduler = constant\nwarmup-steps = 0\n' >> "$W/dpo.ini"
cp "$W/dpo.ini" "$W/dpo-int.ini"
echo "max-steps = 100000" >> "$W/dpo-int.ini"
mkdir -p "$W/logs"
id=$(PREFOPT_INIT=$P/sft/model.h5 sbatch --parsable --ntasks-per-node=2 --time=2 --signal=USR1@50 \
       --output="$W/logs/dpo-int-%j.out" "$J/dpo.sbatch" "$W/dpo-int.ini" "$W/dpo-int")
end=$((SECONDS + 180))
while [ "$(scontrol show job "$id" | sed -n 's/.*Restarts=\([0-9]*\).*/\1/p')" = 0 ]; do
  st=$(slurm_job_state "$id")
  case $st in COMPLETED|FAILED|CANCELLED|TIMEOUT) fail "interrupted DPO job ended $st instead of being requeued";; esac
  [ $SECONDS -lt $end ] || fail "no requeue within 180 s"
  sleep 0.5
done
scontrol hold "$id" || fail "scontrol hold"
K=$(python3 -c 'import json,sys; print(max(r["step"] for r in map(json.loads, open(sys.argv[1])) if "step" in r))' "$W/dpo-int/metrics.jsonl")
N=$((K + 30))
sed -i "s/^max-steps = .*/max-steps = $N/" "$W/dpo-int.ini"
scontrol update JobId="$id" TimeLimit=10 || fail "scontrol update TimeLimit"   # no second signal
scontrol release "$id" || fail "scontrol release"
echo "DPO interrupted at step $K by the time-limit signal; resuming to step $N"
ref=$(PREFOPT_INIT=$P/sft/model.h5 sbatch --parsable --ntasks-per-node=2 --output="$W/logs/dpo-ref-%j.out" \
       "$J/dpo.sbatch" "$W/dpo.ini" "$W/dpo-ref" --max-steps "$N")
st=$(slurm_wait_state "$id" 240 COMPLETED FAILED CANCELLED TIMEOUT) || fail "resumed DPO still $st after 240 s"
[ "$st" = COMPLETED ] || fail "resumed DPO ended $st"
st=$(slurm_wait_state "$ref" 240 COMPLETED FAILED CANCELLED TIMEOUT) || fail "reference DPO still $st after 240 s"
[ "$st" = COMPLETED ] || fail "reference DPO ended $st"
grep -q "checkpointed (exit 99): scontrol requeue $id" "$W/logs/dpo-int-$id.out" || fail "no checkpoint/requeue in the log"
grep -q "restart 1" "$W/logs/dpo-int-$id.out" || fail "no restart with SLURM_RESTART_COUNT=1 in the log"
python3 - "$W/dpo-ref/metrics.jsonl" "$W/dpo-int/metrics.jsonl" <<'PY' || fail "final metrics differ"
import json, sys, re, math
def last(f):
    rows = [json.loads(l) for l in open(f) if l.strip()]
    rows = [r for r in rows if "loss" in r]
    assert rows, f"{f}: no metrics with a loss"
    return rows[-1]
a, b = last(sys.argv[1]), last(sys.argv[2])
skip = re.compile(r"time|_s$|per_s|per_sec|wall|elapsed|mem|mfu|flop|tokens_per|restart", re.I)
keys = sorted(k for k in a if not skip.search(k) and isinstance(a[k], (int, float)))
bad = [k for k in keys if k not in b or not math.isclose(a[k], b[k], rel_tol=1e-6, abs_tol=1e-9)]
print("final metrics, uninterrupted vs interrupted+resumed:", {k: (a[k], b.get(k)) for k in keys[:8]})
assert not bad, f"differ: {[(k, a[k], b.get(k)) for k in bad]}"
steps = [r["step"] for r in map(json.loads, open(sys.argv[2])) if "step" in r]
assert steps.count(1) == 1, "the interrupted run started again from step 1 instead of resuming"
assert any(y <= x for x, y in zip(steps, steps[1:])) or len(steps) == len(set(steps)), steps
print(f"interrupted run: {len(steps)} metric rows, resumed without repeating step 1")
PY
echo "ok: DPO interrupted by USR1, requeued, resumed: final metrics equal the uninterrupted run's"
echo "all real-trainer SLURM checks passed in $((SECONDS - t_start)) s"
