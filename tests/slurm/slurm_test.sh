#!/usr/bin/env bash
# The SLURM job scripts (jobs/) on a real single-node SLURM started here (munged, slurmctld, slurmd; stopped
# and removed at exit). Checks, with the real job scripts:
#   1. the node comes up idle; step.sbatch runs `srun --mpi=pmix` of prefopt inspect with 2 ranks (grid 1x2)
#   2. dpo.sbatch under --time=1 --signal=USR1@50 with a stand-in trainer: the step gets USR1 mid-run, exits 99,
#      the script requeues, the job restarts with SLURM_RESTART_COUNT=1 and resumes from the checkpoint; one
#      log (--open-mode=append); threads/binding variables reach the ranks
#   3. jobs/pipeline.sh (stand-in prefopt): every stage runs in order and its output is present
#   4. a failing stage: its afterok dependents are cancelled (--kill-on-invalid-dep), nothing stays pending
# The same checks with the real trainer (pipeline, DPO resume equality) are in slurm_train_test.sh, which
# skips while `prefopt train --help` fails.
# Usage: slurm_test.sh BUILD_DIR   (PREFOPT = the prefopt binary). Exit 77 where the daemons cannot run.
set -euo pipefail
B=$(cd "${1:?build dir}" && pwd)
SRC=${PREFOPT_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
PREFOPT=${PREFOPT:-$B/prefopt}
HERE=$SRC/tests/slurm
# shellcheck source=slurm_env.sh
source "$HERE/slurm_env.sh"
fail() { echo "FAIL: $*"; dump_logs; exit 1; }
dump_logs() { [ -n "${W:-}" ] && for f in "$W"/logs/*.out; do [ -f "$f" ] && { echo "--- $f"; tail -20 "$f"; }; done; true; }

if ! command -v slurmctld >/dev/null 2>&1 || ! command -v munged >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing slurm-wlm and munge (tests/deps.sh)"; bash "$SRC/tests/deps.sh" >/dev/null || true
  fi
fi
why=$(slurm_can_run) || { echo "SKIP: this machine cannot run the SLURM daemons: $why"; exit 77; }

W=$(mktemp -d /tmp/prefopt-slurm.XXXXXX)
chmod 755 "$W"    # munged (user munge) needs to reach its socket directory inside
cleanup() { slurm_stop; rm -rf "$W"; }
trap cleanup EXIT
trap 'exit 1' INT TERM
slurm_start "$W/slurm" || fail "could not start SLURM"
sinfo -h -o "%P %a %T" | grep -q "up idle" || fail "node not idle: $(sinfo)"
echo "ok: slurmctld + slurmd up, node idle ($(sinfo -h -o '%N %c CPUs'))"
mkdir -p "$W/logs"
export PREFOPT_JOBS_DIR=$SRC/jobs
J=$SRC/jobs
t_start=$SECONDS

# ---- 1. banner under srun --mpi=pmix with 2 ranks ---------------------------------------------------------
id=$(PREFOPT=$PREFOPT sbatch --parsable --ntasks=2 --output="$W/logs/inspect-%j.out" "$J/step.sbatch" inspect --grid-cols 2)
st=$(slurm_wait_state "$id" 60 COMPLETED FAILED CANCELLED TIMEOUT) || fail "inspect job $id: still $st after 60 s"
[ "$st" = COMPLETED ] || fail "inspect job $id ended $st"
grep -q "2 ranks" "$W/logs/inspect-$id.out" && grep -q "grid 1x2" "$W/logs/inspect-$id.out" ||
  fail "banner with 2 ranks and grid 1x2 not found: $(cat "$W/logs/inspect-$id.out")"
echo "ok: step.sbatch: srun --mpi=pmix prefopt inspect printed the banner with 2 ranks, grid 1x2"

# ---- 2. time-limit signal -> checkpoint -> exit 99 -> requeue -> resume (stand-in trainer) -----------------
FAKE=$HERE/fake_prefopt.sh
printf '[train]\nloss = dpo\n' > "$W/dpo.ini"
id=$(PREFOPT=$FAKE FAKE_TRAIN=wait-signal PREFOPT_INIT=$W/sft-ckpt sbatch --parsable --time=1 --signal=USR1@50 \
       --output="$W/logs/dpo-%j.out" "$J/dpo.sbatch" "$W/dpo.ini" "$W/run-dpo")
t0=$SECONDS
st=$(slurm_wait_state "$id" 150 COMPLETED FAILED CANCELLED TIMEOUT) || fail "requeue job $id: still $st after 150 s"
[ "$st" = COMPLETED ] || fail "requeue job $id ended $st"
R=$W/run-dpo
[ -f "$R/signalled" ] || fail "the stand-in trainer never got the time-limit signal"
grep -q "^restart=1$" "$R/start-1-0.txt" 2>/dev/null || fail "no second start with SLURM_RESTART_COUNT=1"
grep -q '"restart":1,"resumed_from":"step=' "$R/metrics.jsonl" || fail "second run did not resume: $(cat "$R/metrics.jsonl")"
restarts=$(scontrol show job "$id" | sed -n 's/.*Restarts=\([0-9]*\).*/\1/p')
[ "$restarts" = 1 ] || fail "Restarts=$restarts, expected 1"
log=$W/logs/dpo-$id.out
[ "$(grep -c 'step: srun --mpi=pmix' "$log")" = 2 ] || fail "expected both runs in one appended log: $(cat "$log")"
grep -q "checkpointed (exit 99): scontrol requeue $id" "$log" || fail "no requeue line in $log"
for f in "$R"/start-0-0.txt "$R"/start-0-1.txt; do
  grep -q "^blis=1$" "$f" && grep -q "^srun_cpus=1$" "$f" && grep -q "^hdf5_lock=FALSE$" "$f" &&
    grep -q -- "--resume auto --grid-rows 1 --grid-cols 2 --dp 1 --init $W/sft-ckpt" "$f" ||
    fail "environment/arguments of a rank: $(cat "$f")"
done
c0=$(sed -n 's/^cpus=//p' "$R/start-0-0.txt"); c1=$(sed -n 's/^cpus=//p' "$R/start-0-1.txt")
[ "$c0" != "$c1" ] || fail "both ranks bound to the same CPUs ($c0)"
echo "ok: dpo.sbatch: USR1 before the time limit -> exit 99 -> requeued -> restarted with SLURM_RESTART_COUNT=1," \
     "resumed from $(cat "$R/checkpoints/ckpt-1"); ranks on cpus $c0 / $c1; $((SECONDS - t0)) s"

# ---- 3. the pipeline submitter, every stage succeeding (stand-in) ----------------------------------------
write_pipeline() {  # file run_root
  cat > "$1" <<ENV
RUN_ROOT=$2
SBATCH_ARGS=(--ntasks=1)
IMPORT=(--hf $W/hf --out $2/model.h5)
PACK=("--input $W/sft.jsonl --output $2/sft.h5" "--input $W/pairs.jsonl --output $2/pairs.h5")
SFT_CONFIG=$W/dpo.ini
SFT_SBATCH_ARGS=(--ntasks-per-node=2)
DPO_CONFIG=$W/dpo.ini
DPO_SBATCH_ARGS=(--ntasks-per-node=2)
EVAL=(--model $2/dpo/model.h5 --data $2/pairs.h5 --out $2/eval.jsonl)
ENV
}
wait_all() {  # run_root timeout -> prints "stage state" lines
  local end=$((SECONDS + $2)) stage id s busy
  while :; do
    busy=0
    while read -r stage id; do
      s=$(slurm_job_state "$id"); case $s in PENDING|RUNNING|CONFIGURING|COMPLETING|REQUEUED) busy=1 ;; esac
    done < "$1/jobs.txt"
    [ $busy = 0 ] && break
    [ $SECONDS -lt $end ] || break
    sleep 1
  done
  while read -r stage id; do echo "$stage $(slurm_job_state "$id") $(scontrol show job "$id" | sed -n 's/.*Reason=\([A-Za-z]*\).*/\1/p')"; done < "$1/jobs.txt"
}
write_pipeline "$W/p-ok.env" "$W/p-ok"
PREFOPT=$FAKE "$J/pipeline.sh" "$W/p-ok.env" > /dev/null
states=$(wait_all "$W/p-ok" 90)
echo "$states" | grep -v " COMPLETED" && fail "pipeline stages not all COMPLETED: $states"
for f in model.h5 sft.h5 pairs.h5 sft/metrics.jsonl sft/model.h5 dpo/metrics.jsonl dpo/model.h5 eval.jsonl; do
  [ -s "$W/p-ok/$f" ] || fail "pipeline output $f missing"
done
grep -q -- "--init $W/p-ok/sft/model.h5" "$W/p-ok/dpo/start-0-0.txt" || fail "DPO did not get the SFT checkpoint"
# order: each stage started no earlier than the stages it depends on ended (scontrol times, 1 s resolution)
jtime() { date -d "$(scontrol show job "$(awk -v s="$1" '$1 == s {print $2}' "$W/p-ok/jobs.txt")" |
                     sed -n "s/.* $2=\([^ ]*\).*/\1/p")" +%s; }
for dep in "pack0 import" "pack1 import" "sft pack0" "sft pack1" "dpo sft" "dpo pack1" "eval dpo"; do
  set -- $dep
  [ "$(jtime "$1" StartTime)" -ge "$(jtime "$2" EndTime)" ] || fail "$1 started before $2 ended"
done
echo "ok: pipeline.sh: import -> pack x2 -> SFT -> DPO -> eval all COMPLETED, outputs present ($(wc -l < "$W/p-ok/jobs.txt") jobs)"

# ---- 4. a failing stage cancels its dependents (no job left pending) ---------------------------------------
write_pipeline "$W/p-fail.env" "$W/p-fail"
PREFOPT=$FAKE FAKE_FAIL=pack "$J/pipeline.sh" "$W/p-fail.env" > /dev/null
states=$(wait_all "$W/p-fail" 60)
echo "$states" | grep -q "^pack0 FAILED" || fail "pack should have failed: $states"
for s in sft dpo eval; do
  echo "$states" | grep -q "^$s CANCELLED" || fail "$s should be CANCELLED after pack failed: $states"
done
echo "$states" | grep -Eq "PENDING|RUNNING" && fail "jobs left in the queue: $states"
echo "ok: pipeline with a failing pack: sft, dpo, eval cancelled (kill-on-invalid-dep), none pending"
echo "stand-in checks done in $((SECONDS - t_start)) s"

echo "all SLURM job-script checks passed"
