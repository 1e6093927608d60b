#!/usr/bin/env bash
# Injected faults during `prefopt train` under mpiexec -n 2 (issue 11). A tiny DPO run (10 steps, checkpoint every
# 2) is the reference; then:
#   kill_one_rank      kill -9 of one rank mid-step (in a run meant to go on for long): the job ends non-zero within
#                      seconds, the latest complete checkpoint loads, and `--resume auto` continues with per-step
#                      losses and gradient norms identical to an uninterrupted run (the constant learning-rate
#                      schedule makes runs of different lengths comparable step by step);
#   kill_mid_ckpt      every rank SIGKILLed inside the second checkpoint write (PREFOPT_TEST_CKPT_KILL_AFTER_TENSORS,
#                      checkpoint.h): step 2 stays latest, step 4 is only a .tmp; the resumed run is identical;
#   disk_full          a file-size limit (ulimit -f) below a checkpoint's size: one clear error line on every rank,
#                      exit 1, the previous checkpoint kept as latest and byte-identical; resuming later is identical;
#   disk_full_mid_write the same limit met inside the collective write (room check skipped): the ranks agree, every
#                      rank prints one line, the .tmp is removed, the job aborts with exit 1 in seconds;
#   import_disk_full   prefopt import under a file-size limit: the same agreed abort, no partial output;
#   poisoned_batch     valid tokens but a huge precomputed reference log-prob (-1e308, valid: finite and <= 0) for one
#                      example, trained with IPO, whose square overflows: the step holding it is skipped and logged
#                      in metrics.jsonl with the global batch's example indices (the poisoned one among them),
#                      training goes on and reports the skip;
#   exploding_lr       --lr 1e30: steps go non-finite, each is skipped and logged, and the run stops after
#                      --max-nonfinite with one error line on every rank.
# usage: test_faults.sh BUILD_DIR   (PREFOPT: the prefopt executable; default BUILD_DIR/prefopt)
set -uo pipefail
source "$(dirname "$0")/lib.sh"
build=${1:?usage: test_faults.sh BUILD_DIR}
mpi_script_env "$build"
bg=""   # a run in the background, killed at exit
at_exit '[ -n "$bg" ] && kill -9 $bg 2>/dev/null'
make_workdir w "${TMPDIR:-/tmp}/prefopt_faults.XXXXXX"
MPI=(mpiexec -n 2 --oversubscribe --bind-to none)

for i in $(seq 1 64); do
  printf '{"prompt": "question %d: which?", "chosen": " the answer is %d", "rejected": " no %d"}\n' "$i" "$i" "$((i * 7))"
done > pairs.jsonl
"$P" pack --input pairs.jsonl --output pairs.h5 > pack.log 2>&1 || { cat pack.log; echo "FAIL: pack"; exit 1; }
A=(train --data pairs.h5 --n-layer 2 --n-embd 32 --n-head 2 --batch-size 8 --max-steps 10 --save-interval 2
   --keep-last 3 --log-interval 1 --lr 1e-3 --lr-scheduler constant)

# same_steps RUN_DIR [REF_DIR [N]]: the last record of every step 1..N (10) in RUN_DIR/metrics.jsonl has the loss
# and grad_norm of the reference run (base), to the last bit.
same_steps() {
  $PY - "$1" "${2:-base}" "${3:-10}" <<'EOF'
import json, sys
def steps(path):
    out = {}
    for line in open(path):
        r = json.loads(line)
        if 'loss' in r and 'grad_norm' in r and not any(k.startswith('eval/') for k in r):
            out[r['step']] = (r['loss'], r['grad_norm'])
    return out
ref, got = steps(sys.argv[2] + '/metrics.jsonl'), steps(sys.argv[1] + '/metrics.jsonl')
bad = [s for s in range(1, int(sys.argv[3]) + 1) if ref.get(s) is None or got.get(s) != ref.get(s)]
if bad:
    print('  steps differing from the uninterrupted run: %s (first: %s vs %s)' % (bad, got.get(bad[0]), ref.get(bad[0])))
    sys.exit(1)
EOF
}

timeout -k 5 180 "${MPI[@]}" "$P" "${A[@]}" --run-dir base > base.log 2>&1 || { tail -20 base.log; echo "FAIL: reference run"; exit 1; }
[ "$(grep -c '"loss"' base/metrics.jsonl)" = 10 ] || { echo "FAIL: reference run has no 10 steps"; exit 1; }

# ---- kill -9 of one rank mid-step ------------------------------------------------------------------------------
# (the constant schedule makes a longer run identical step by step: this one would go on long after the kill)
"${MPI[@]}" "$P" "${A[@]}" --max-steps 100000 --run-dir k1 > k1.log 2>&1 &
bg=$!
for _ in $(seq 1 600); do # up to 120 s for step 5 (a checkpoint at 4 exists by then)
  grep -q '"step":5,' k1/metrics.jsonl 2> /dev/null && break
  kill -0 $bg 2> /dev/null || break
  sleep 0.2
done
ranks=$(pgrep -P $bg -f "prefopt train")
victim=$(echo "$ranks" | tail -1)
if ! grep -q '"step":5,' k1/metrics.jsonl 2> /dev/null || [ -z "$victim" ]; then
  fail "kill_one_rank: the run did not reach step 5 (log: $(tail -3 k1.log))"
else
  kill -9 "$victim"
  t0=$SECONDS
  for _ in $(seq 1 150); do kill -0 $bg 2> /dev/null || break; sleep 0.2; done
  if kill -0 $bg 2> /dev/null; then
    fail "kill_one_rank: mpiexec still running 30 s after rank pid $victim was killed"
    kill -9 $bg $ranks 2> /dev/null
  fi
  wait $bg
  rc=$?
  bg=""
  dt=$((SECONDS - t0))
  last=$(grep -o '"step":[0-9]*,' k1/metrics.jsonl | tail -1 | tr -dc 0-9)
  latest=$(cat k1/checkpoints/latest 2> /dev/null)
  if [ "$rc" = 0 ]; then
    fail "kill_one_rank: mpiexec exited 0 after a rank was killed"
  elif [ -z "$latest" ] || [ ! -f "k1/checkpoints/$latest" ]; then
    fail "kill_one_rank: no complete checkpoint named by latest ('$latest')"
  else
    echo "ok: kill_one_rank: rank pid $victim killed at step $last; mpiexec exited $rc after $dt s; latest is $latest"
    step=$(echo "$latest" | sed 's/^step-0*\([0-9]*\)\.h5$/\1/')
    # how far the run got before the kill varies with the machine's load: resume to 4 steps past the checkpoint
    # and compare with an uninterrupted run of as many steps
    n=$((step + 4))
    ref=base
    if [ "$n" -gt 10 ]; then
      ref=base$n
      timeout -k 5 180 "${MPI[@]}" "$P" "${A[@]}" --max-steps $n --run-dir $ref > $ref.log 2>&1 ||
        fail "kill_one_rank: the reference run of $n steps failed"
    else
      n=10
    fi
    if ! timeout -k 5 180 "${MPI[@]}" "$P" "${A[@]}" --max-steps $n --run-dir k1 > k1.resume.log 2>&1; then
      fail "kill_one_rank: the resumed run failed: $(grep error k1.resume.log | head -2)"
    elif ! grep -qxF "resumed from k1/checkpoints/$latest at step $step" k1.resume.log; then
      fail "kill_one_rank: the run did not resume from $latest: $(grep -m1 resumed k1.resume.log)"
    elif ! same_steps k1 $ref $n; then
      fail "kill_one_rank: the resumed run differs from the uninterrupted one"
    else
      echo "ok: kill_one_rank: resumed from $latest at step $step; steps 1-$n identical to the uninterrupted run"
    fi
  fi
fi

# ---- kill -9 of every rank mid-checkpoint ----------------------------------------------------------------------
# The tiny model has 20 datasets per group: a checkpoint writes 60 (weights, two moments). 90 falls inside the
# second checkpoint (step 4), in the first moment.
PREFOPT_TEST_CKPT_KILL_AFTER_TENSORS=90 timeout -k 5 180 "${MPI[@]}" "$P" "${A[@]}" --run-dir k2 > k2.log 2>&1
rc=$?
if [ "$rc" = 0 ] || [ "$rc" = 124 ]; then
  fail "kill_mid_ckpt: exit code $rc"
elif [ "$(grep -c 'prefopt: test hook: SIGKILL after 90 datasets' k2.log)" != 1 ]; then
  # only replica 0's grid writes (issue 17): at dp 2 that is rank 0 alone; mpiexec then ends rank 1
  fail "kill_mid_ckpt: the hook did not fire on the writing rank: $(grep -m3 -i 'hook\|error' k2.log)"
elif [ "$(cat k2/checkpoints/latest)" != step-00000002.h5 ] || [ -e k2/checkpoints/step-00000004.h5 ] ||
     [ ! -e k2/checkpoints/step-00000004.h5.tmp ]; then
  fail "kill_mid_ckpt: latest '$(cat k2/checkpoints/latest)', files: $(ls k2/checkpoints | tr '\n' ' ')"
else
  echo "ok: kill_mid_ckpt: the writing rank killed inside the step-4 checkpoint, the job ended; latest is still step-00000002.h5"
  cp -r k2 k3 # the same interrupted state, for the full-disk case below
  if ! timeout -k 5 180 "${MPI[@]}" "$P" "${A[@]}" --run-dir k2 > k2.resume.log 2>&1; then
    fail "kill_mid_ckpt: the resumed run failed: $(grep error k2.resume.log | head -2)"
  elif ! grep -qxF "resumed from k2/checkpoints/step-00000002.h5 at step 2" k2.resume.log; then
    fail "kill_mid_ckpt: did not resume from step 2: $(grep -m1 resumed k2.resume.log)"
  elif ! same_steps k2; then
    fail "kill_mid_ckpt: the resumed run differs from the uninterrupted one"
  elif [ -e k2/checkpoints/step-00000004.h5.tmp ]; then
    fail "kill_mid_ckpt: the partial step-00000004.h5.tmp is still there after the resumed run"
  else
    echo "ok: kill_mid_ckpt: resumed from step 2; steps 1-10 identical; the partial .tmp is gone"
  fi
fi

# ---- a full disk during a checkpoint write ---------------------------------------------------------------------
# Each rank (not mpiexec, whose PMIx store is a file too) runs under a file-size limit below a checkpoint's size;
# SIGXFSZ is ignored by prefopt, so writes fail with EFBIG. The shared-memory transport's backing file would hit the
# limit as well: TCP between the ranks.
# run_limited KB OUT [mpiexec options] -- prefopt arguments: 2 ranks over TCP, each under ulimit -f KB; sets rc,
# stdout in OUT.log, stderr in OUT.err
run_limited() {
  local kb=$1 out=$2 x=()
  shift 2
  while [ "$1" != -- ]; do x+=("$1"); shift; done
  shift
  timeout -k 5 120 mpiexec --mca btl self,tcp -n 2 --oversubscribe --bind-to none "${x[@]}" \
    bash -c "ulimit -f $kb; exec \"\$0\" \"\$@\"" "$P" "$@" > "$out.log" 2> "$out.err"
  rc=$?
}
# agreed_error_why NAME ERRFILE GREP_FLAGS LINE: empty when the run exited 1 ($rc) and both ranks printed LINE (grep
# -cx with GREP_FLAGS: F exact, E pattern) and no other error line; else what went wrong
agreed_error_why() {
  if [ "$rc" != 1 ]; then
    echo "$1: exit code $rc, expected 1 (124: hung): $(grep -m2 error "$2")"
  elif [ "$(grep -cx"$3" -- "$4" "$2")" != 2 ] || [ "$(grep -c '^prefopt: error' "$2")" != 2 ]; then
    echo "$1: expected on both ranks: $4; got: $(grep '^prefopt: error' "$2" | head -2)"
  fi
}

if [ -d k3 ]; then
  cp -r k3 k4 # the same state for the mid-write case
  cp k3/checkpoints/step-00000002.h5 step2.copy
  run_limited 400 k3 -- "${A[@]}" --run-dir k3
  msg="prefopt: error: k3/checkpoints: checkpoint step-00000004.h5 needs about 1.5 MiB but the file size limit (ulimit -f) is 0.4 MiB (the previous checkpoint is kept)"
  why=$(agreed_error_why disk_full k3.err F "$msg")
  if [ -n "$why" ]; then
    fail "$why"
  elif [ "$(cat k3/checkpoints/latest)" != step-00000002.h5 ] || ! cmp -s step2.copy k3/checkpoints/step-00000002.h5 ||
       [ -e k3/checkpoints/step-00000004.h5 ]; then
    fail "disk_full: the previous checkpoint was not kept: latest $(cat k3/checkpoints/latest), $(ls k3/checkpoints | tr '\n' ' ')"
  elif ! timeout -k 5 180 "${MPI[@]}" "$P" "${A[@]}" --run-dir k3 > k3.resume.log 2>&1 ||
       ! grep -qxF "resumed from k3/checkpoints/step-00000002.h5 at step 2" k3.resume.log || ! same_steps k3; then
    fail "disk_full: resuming with room again did not continue identically: $(grep -m2 'error\|resumed' k3.resume.log)"
  else
    echo "ok: disk_full: both ranks: ${msg#prefopt: error: }; step 2 kept; resumed identically once there was room"
  fi
fi

# The same limit met in the middle of the collective write (the room check skipped by a test hook): HDF5 cannot
# close such a file in parallel (its ranks take different error paths in H5Fclose), so the ranks agree on the
# writes, every rank prints the line, the .tmp is removed and the job aborts: exit 1 within seconds, not a hang.
if [ -d k4 ]; then
  t0=$SECONDS
  run_limited 400 k4 -x PREFOPT_TEST_CKPT_SKIP_ROOM_CHECK=1 -- "${A[@]}" --run-dir k4
  re="prefopt: error: k4/checkpoints/step-00000004\.h5\.tmp: writing dataset '[a-z/_.0-9]+' failed \(disk full or over the file size limit\? nothing was published\)"
  why=$(agreed_error_why disk_full_mid_write k4.err E "$re")
  if [ -n "$why" ]; then
    fail "$why"
  elif [ $((SECONDS - t0)) -gt 30 ]; then
    fail "disk_full_mid_write: took $((SECONDS - t0)) s"
  elif [ "$(cat k4/checkpoints/latest)" != step-00000002.h5 ] || ! cmp -s step2.copy k4/checkpoints/step-00000002.h5 ||
       [ -e k4/checkpoints/step-00000004.h5 ] || [ -e k4/checkpoints/step-00000004.h5.tmp ]; then
    fail "disk_full_mid_write: the previous checkpoint was not kept or a partial file is left: $(ls k4/checkpoints | tr '\n' ' ')"
  else
    echo "ok: disk_full_mid_write: exit 1 in $((SECONDS - t0)) s, both ranks: $(grep -m1 '^prefopt: error' k4.err | cut -c17-); step 2 kept, no partial file"
  fi
fi

# The same for `prefopt import` (independent writes, 2 ranks): a file-size limit of half the output's size
if "$P" export --model base/model.h5 --hf hf_base > export.log 2>&1; then
  lim=$(( $(stat -c %s base/model.h5) / 2048 ))
  t0=$SECONDS
  run_limited "$lim" imp -- import --hf hf_base --out imported.h5
  re="prefopt: error: imported\.h5\.tmp: writing tensor '[a-z_.0-9]+' failed \(disk full or over the file size limit\? nothing was published\)"
  why=$(agreed_error_why import_disk_full imp.err E "$re")
  if [ -n "$why" ]; then
    fail "$why"
  elif [ -e imported.h5 ] || [ -e imported.h5.tmp ]; then
    fail "import_disk_full: a partial output is left: $(ls imported.h5*)"
  else
    echo "ok: import_disk_full: exit 1 in $((SECONDS - t0)) s, both ranks: $(grep -m1 '^prefopt: error' imp.err | cut -c17-)"
  fi
else
  fail "import_disk_full: exporting the base model failed: $(tail -2 export.log)"
fi

# ---- a poisoned batch: valid tokens, a huge reference log-prob for example 5 -----------------------------------
# (+1e308 is refused when the dataset opens since issue 22: a log-prob is finite and <= 0; -1e308 passes, and IPO's
# squared margin overflows on it)
$PY - <<'EOF' || { echo "FAIL: making poison.h5"; exit 1; }
import h5py, numpy as np, shutil
shutil.copy('pairs.h5', 'poison.h5')
with h5py.File('poison.h5', 'r+') as f:
    n = int(f.attrs['num_examples'])
    c, r = np.zeros(n), np.zeros(n)
    c[5] = -1e308
    g = f.create_group('ref')
    g['chosen_logps'], g['rejected_logps'] = c, r
    g.attrs['model'] = np.bytes_('poisoned')
EOF
timeout -k 5 180 "${MPI[@]}" "$P" "${A[@]/pairs.h5/poison.h5}" --max-steps 8 --loss ipo --run-dir poison > poison.log 2> poison.err
rc=$?
if [ "$rc" != 0 ]; then
  fail "poisoned_batch: exit code $rc: $(grep error poison.err | head -2)"
else
  logged=1
  $PY - <<'EOF' || logged=0
import json, sys
rows = [json.loads(l) for l in open('poison/metrics.jsonl')]
skipped = [r for r in rows if 'skipped' in r]
trained = [r for r in rows if 'loss' in r]
ok = True
if len(skipped) != 1 or skipped[0]['skipped'] != 'non-finite loss or gradient':
    print('  expected one skipped step, got %s' % skipped); ok = False
else:
    s = skipped[0]
    ex = s['examples']
    if sorted(set(ex)) != sorted(ex) or len(ex) != 8 or 5 not in ex or not all(0 <= e < 64 for e in ex):
        print('  step %d: examples %s should be the 8 of the global batch, 5 among them' % (s['step'], ex)); ok = False
    if [r['step'] for r in trained] != [k for k in range(1, 9) if k != s['step']]:
        print('  trained steps %s' % [r['step'] for r in trained]); ok = False
    if trained[-1].get('skipped_steps') != 1 or any(r['loss'] != r['loss'] for r in trained):
        print('  last row: %s' % trained[-1]); ok = False
sys.exit(0 if ok else 1)
EOF
  s=$(grep -o '"step":[0-9]*,"skipped"' poison/metrics.jsonl | tr -dc 0-9)
  if [ "$logged" = 0 ]; then
    fail "poisoned_batch: metrics.jsonl does not record the skip as expected"
  elif [ "$(grep -c "^prefopt: warning: step $s skipped: non-finite loss or gradient (1 in a row; examples in metrics.jsonl)$" poison.err)" != 1 ]; then
    fail "poisoned_batch: no warning line for step $s: $(head -3 poison.err)"
  elif ! grep -q "^done: 8 steps (1 skipped)" poison.log; then
    fail "poisoned_batch: $(grep '^done' poison.log)"
  else
    echo "ok: poisoned_batch: step $s (example 5) skipped and logged; the other 7 steps trained"
  fi
fi

# ---- an exploding learning rate: non-finite steps, then a stop after --max-nonfinite ----------------------------
timeout -k 5 180 "${MPI[@]}" "$P" "${A[@]}" --lr 1e30 --max-nonfinite 3 --run-dir lr > lr.log 2> lr.err
rc=$?
msg="prefopt: error: 3 consecutive steps had a non-finite loss or gradient (last: step 4); stopping (lower --lr, check the data, or raise --max-nonfinite)"
if [ "$rc" != 1 ]; then
  fail "exploding_lr: exit code $rc, expected 1"
elif [ "$(grep -cxF "$msg" lr.err)" != 2 ] || [ "$(grep -c '^prefopt: error' lr.err)" != 2 ]; then
  fail "exploding_lr: expected on both ranks: $msg; got: $(grep '^prefopt: error' lr.err | head -2)"
elif [ "$(grep -c '"skipped":"non-finite loss or gradient","examples":\[' lr/metrics.jsonl)" != 3 ] ||
     [ "$(grep -c '"loss"' lr/metrics.jsonl)" != 1 ]; then
  fail "exploding_lr: metrics.jsonl: $(cat lr/metrics.jsonl | cut -c1-100)"
else
  echo "ok: exploding_lr: step 1 trained, steps 2-4 skipped and logged, stopped with exit 1 on both ranks"
fi

finish_cases test_faults
