#!/usr/bin/env bash
# The red team's failures of issue 22, one regression case each (numbers are the issue's items): every case runs
# under mpiexec -n 2 with a time limit and checks the exit code, the exact error line on every rank (no other
# error line), and that inputs and earlier outputs are byte-identical afterwards (md5) with no partial file left.
# usage: test_redteam.sh BUILD_DIR   (PREFOPT: the prefopt executable; default BUILD_DIR/prefopt)
set -uo pipefail
source "$(dirname "$0")/lib.sh"
build=${1:?usage: test_redteam.sh BUILD_DIR}
mpi_script_env "$build"
bg=""   # a run in the background, killed at exit
at_exit '[ -n "$bg" ] && kill -9 $bg 2>/dev/null'
make_workdir w "${TMPDIR:-/tmp}/prefopt_redteam.XXXXXX"

# ---- inputs: a small pairs dataset (byte-level tokens) and a 1-layer model trained on it ----
for i in $(seq 1 24); do
  printf '{"prompt": "question %d?", "chosen": " answer %d yes", "rejected": " no %d"}\n' "$i" "$i" "$i"
done > pairs.jsonl
"$P" pack --input pairs.jsonl --output pairs.h5 > pack.log 2>&1 || { cat pack.log; echo "FAIL: pack"; exit 1; }
"$P" train --data pairs.h5 --run-dir tiny --n-layer 1 --n-embd 16 --n-head 2 --batch-size 4 --max-steps 1 \
  --resume never > tiny.log 2>&1 || { cat tiny.log; echo "FAIL: training the tiny model"; exit 1; }

# run NAME [mpiexec options] -- prefopt ARGS: 2 ranks (TCP between them: a file-size limit would hit the shared
# memory transport's file too), each under `ulimit -f $LIMIT_KB` when LIMIT_KB is set; 60 s limit; sets rc and dt;
# stdout in NAME.out, stderr in NAME.err.
run() {
  local name=$1 x=()
  shift
  while [ "$1" != -- ]; do x+=("$1"); shift; done
  shift
  local t0=$SECONDS
  timeout -k 5 60 mpiexec --mca btl self,tcp -n "${NP:-2}" --oversubscribe --bind-to none "${x[@]}" \
    bash -c "ulimit -f ${LIMIT_KB:-unlimited}; exec \"\$0\" \"\$@\"" "$P" "$@" > "$name.out" 2> "$name.err"
  rc=$?
  dt=$((SECONDS - t0))
}
# expect NAME RC 'MESSAGE' [mpiexec options] -- ARGS: run, then the exit code, the time (< 30 s) and MESSAGE
# ("prefopt: error: MESSAGE", or a pattern when it starts with ~) on every one of the NP (2) ranks, no other
# error line and no segfault. Returns 0 when all held.
expect() {
  local name=$1 want_rc=$2 msg=$3
  shift 3
  run "$name" "$@"
  local n_ok n_all np=${NP:-2}
  if [ "${msg:0:1}" = "~" ]; then
    n_ok=$(grep -cxE "prefopt: error: ${msg:1}" "$name.err")
  else
    n_ok=$(grep -cxF "prefopt: error: $msg" "$name.err")
  fi
  n_all=$(grep -c "^prefopt: error:" "$name.err")
  if [ "$rc" = 124 ]; then
    fail "$name: still running after 60 s (a rank hangs)"
  elif [ "$rc" != "$want_rc" ]; then
    fail "$name: exit code $rc, expected $want_rc"
  elif [ "$dt" -gt 30 ]; then
    fail "$name: took $dt s"
  elif [ "$n_ok" != "$np" ] || [ "$n_all" != "$np" ]; then
    fail "$name: $n_ok of $n_all error lines are 'prefopt: error: $msg' (expected $np, no other)"
  elif grep -qi 'segmentation\|signal 11' "$name.err"; then
    fail "$name: a rank crashed"
  else
    echo "ok: $name: exit $rc in $dt s, every rank: ${msg#\~}"
    return 0
  fi
  grep -v '^ *$' "$name.err" | grep -v '^--\|^ \|^mpiexec\|^Primary\|^a non-zero\|^the job\|^process' | head -8 | sed 's/^/    /'
  return 1
}
# same FILE... : md5 of the files (or of every file under a directory), to compare before and after
sums() { for f in "$@"; do if [ -d "$f" ]; then (cd "$f" && md5sum * 2>/dev/null); else md5sum < "$f"; fi; done; }

# ---- 1. eval --store-ref on a full disk: the dataset stays as it was, no crash, no partial file ----
cp pairs.h5 sr.h5
before=$(sums sr.h5)
size_kb=$(( $(stat -c %s sr.h5) / 1024 ))
LIMIT_KB=$((size_kb - 100)) expect store_ref_room 1 \
  "~sr\.h5: storing reference log-probs \(into a copy, renamed over the dataset when complete\): it needs about [0-9.]+ MiB but the file size limit \(ulimit -f\) is [0-9.]+ MiB \(nothing was written\)" \
  -- eval --model tiny/model.h5 --data sr.h5 --store-ref
[ "$(sums sr.h5)" = "$before" ] && [ ! -e sr.h5.store-ref.tmp ] || fail "store_ref_room: the dataset changed or a partial copy is left"
# the limit met inside the write (the room check skipped): one line on every rank, the dataset unchanged
LIMIT_KB=$((size_kb + 1)) expect store_ref_mid_write 1 \
  "sr.h5.store-ref.tmp: writing the reference log-probs failed (disk full or over the file size limit?); the dataset is unchanged" \
  -x PREFOPT_TEST_CKPT_SKIP_ROOM_CHECK=1 -- eval --model tiny/model.h5 --data sr.h5 --store-ref
[ "$(sums sr.h5)" = "$before" ] && [ ! -e sr.h5.store-ref.tmp ] || fail "store_ref_mid_write: the dataset changed or a partial copy is left"
# with room: the ref group is there, and the dataset reads (and trains)
run store_ref_ok -- eval --model tiny/model.h5 --data sr.h5 --store-ref
if [ "$rc" != 0 ] || ! $PY -c "import h5py,sys; f=h5py.File('sr.h5','r'); sys.exit(0 if f['ref/chosen_logps'].shape==(24,) and f['prompt/tokens'].shape[0]>0 else 1)"; then
  fail "store_ref_ok: exit $rc or no complete ref group"
else
  echo "ok: store_ref_ok: reference log-probs stored; the dataset reads"
fi

# kill -9 of rank 0 with the copy written but not yet renamed: the dataset is the old one, and the next run
# (which overwrites the leftover copy) stores the reference
cp pairs.h5 srk.h5
before=$(sums srk.h5)
run store_ref_kill -x PREFOPT_TEST_KILL_BEFORE_PUBLISH=1 -- eval --model tiny/model.h5 --data srk.h5 --store-ref
if [ "$rc" = 0 ] || [ "$rc" = 124 ] || [ "$(sums srk.h5)" != "$before" ] || [ ! -e srk.h5.store-ref.tmp ]; then
  fail "store_ref_kill: exit $rc; the dataset changed or no copy was left: $(ls srk.h5*)"
else
  run store_ref_after_kill -- eval --model tiny/model.h5 --data srk.h5 --store-ref
  [ "$rc" = 0 ] && [ ! -e srk.h5.store-ref.tmp ] && "$P" inspect --file srk.h5 > /dev/null 2>&1 &&
    echo "ok: store_ref_kill: killed before the rename: dataset md5-identical; the next run stored the reference" ||
    fail "store_ref_after_kill: exit $rc: $(ls srk.h5*)"
fi

# ---- 2. export --hf DIR over an earlier export on a full disk: the earlier export is kept whole ----
"$P" export --model tiny/model.h5 --hf hf_old > /dev/null 2>&1 || fail "export_hf: the first export failed"
echo "my notes" > hf_old/README.md
before=$(sums hf_old)
LIMIT_KB=20 expect export_hf_room 1 \
  "~hf_old/model\.safetensors: it needs about [0-9]+ KiB but the file size limit \(ulimit -f\) is 20 KiB \(nothing was written\)" \
  -- export --model tiny/model.h5 --hf hf_old
LIMIT_KB=20 expect export_hf_mid_write 1 \
  "~hf_old\.tmp\.[0-9]+/model\.safetensors: write of tensor '[a-z_.0-9]+' failed: File too large" \
  -x PREFOPT_TEST_CKPT_SKIP_ROOM_CHECK=1 -- export --model tiny/model.h5 --hf hf_old
if [ "$(sums hf_old)" != "$before" ] || ls -d hf_old.tmp.* > /dev/null 2>&1; then
  fail "export_hf: the earlier export changed or a staging directory is left: $(ls -d hf_old*)"
fi
run export_hf_ok -- export --model tiny/model.h5 --hf hf_old
[ "$rc" = 0 ] && [ "$(cat hf_old/README.md)" = "my notes" ] && [ -s hf_old/model.safetensors ] &&
  ! ls -d hf_old.tmp.* > /dev/null 2>&1 && echo "ok: export_hf_ok: re-exported over the old directory; its other files kept" ||
  fail "export_hf_ok: exit $rc, $(ls hf_old* | tr '\n' ' ')"

# ---- 4. export --out F on a full disk: one line, no crash, no F.tmp ----
LIMIT_KB=40 expect export_out_room 1 \
  "~w\.h5: it needs about [0-9]+ KiB but the file size limit \(ulimit -f\) is 40 KiB \(nothing was written\)" \
  -- export --model tiny/model.h5 --out w.h5
LIMIT_KB=40 expect export_out_mid_write 1 "w.h5.tmp: closing failed (disk full?)" \
  -x PREFOPT_TEST_CKPT_SKIP_ROOM_CHECK=1 -- export --model tiny/model.h5 --out w.h5
ls w.h5* > /dev/null 2>&1 && fail "export_out: partial output left: $(ls w.h5*)"

# ---- 5. pack on a full disk: one line, exit 1, no crash at MPI_Finalize, no partial output ----
NP=1 LIMIT_KB=1000 expect pack_disk_full 1 "~pk\.h5\.tmp\.[0-9]+: writing failed \(disk full\?\)" \
  -- pack --input pairs.jsonl --output pk.h5
ls pk.h5* > /dev/null 2>&1 && fail "pack_disk_full: partial output left: $(ls pk.h5*)"

# ---- 3. outputs that alias an input or each other (after resolving links), for every subcommand that writes ----
ln -s pairs.h5 alias.h5
before=$(sums pairs.h5 pairs.jsonl tiny/model.h5)
expect alias_eval 2 "--out 'alias.h5' is the same file as --data 'pairs.h5' (an output must not overwrite an input)" \
  -- eval --model tiny/model.h5 --data pairs.h5 --out alias.h5
expect alias_pack 2 "--output './pairs.jsonl' is the same file as --input 'pairs.jsonl' (an output must not overwrite an input)" \
  -- pack --input pairs.jsonl --output ./pairs.jsonl
expect alias_generate 2 "--out 'pairs.jsonl' is the same file as --prompts 'pairs.jsonl' (an output must not overwrite an input)" \
  -- generate --model tiny/model.h5 --prompts pairs.jsonl --out pairs.jsonl
expect alias_export 2 "--out 'tiny/../tiny/model.h5' is the same file as --model 'tiny/model.h5' (an output must not overwrite an input)" \
  -- export --model tiny/model.h5 --out tiny/../tiny/model.h5
expect alias_import 2 "--out 'hf_old/config.json' is the same file as --hf 'hf_old/config.json' (an output must not overwrite an input)" \
  -- import --hf hf_old --out hf_old/config.json
expect alias_train 2 "RUN_DIR/model.h5 'tiny/model.h5' is the same file as --data 'tiny/model.h5' (an output must not overwrite an input)" \
  -- train --data tiny/model.h5 --run-dir tiny
# 20: --eval-out equal to --output says so (it reported a .tmp creation failure)
expect alias_pack_outputs 2 "--eval-out 'ev.h5' is the same file as --output 'ev.h5' (two outputs)" \
  -- pack --input pairs.jsonl --output ev.h5 --eval-fraction 0.5 --eval-out ev.h5
[ "$(sums pairs.h5 pairs.jsonl tiny/model.h5)" = "$before" ] || fail "alias: an input changed"

# ---- 6, 20. every interval and size option checked before anything runs (--log-interval 0 was SIGFPE) ----
T=(train --data pairs.h5 --run-dir r6 --n-layer 1 --n-embd 16 --n-head 2 --batch-size 4 --max-steps 2)
expect log_interval_0 2 "--log-interval 0: must be >= 1 (a progress line every N steps)" -- "${T[@]}" --log-interval 0
expect save_interval_neg 2 "--save-interval -1: must be >= 0 (0: checkpoint at the end only)" -- "${T[@]}" --save-interval -1
expect keep_last_0 2 "--keep-last 0: must be >= 1" -- "${T[@]}" --keep-last 0
expect batch_size_0 2 "--batch-size 0: must be >= 1 (examples per optimizer step, all replicas)" -- "${T[@]}" --batch-size 0
expect epochs_neg 2 "--epochs -1: must be between 0 and 1e6 when --max-steps is 0" -- "${T[@]}" --max-steps 0 --epochs -1
expect epochs_nan 2 "command line: bad value 'nan' for option 'epochs' (a finite number expected)" -- "${T[@]}" --epochs nan
expect temperature_inf 2 "command line: bad value 'inf' for option 'temperature' (a finite number expected)" \
  -- generate --model tiny/model.h5 --prompts pairs.jsonl --out g.jsonl --temperature inf
expect top_k_neg 2 "generate: --top-k -3: must be >= 0 (0: all tokens)" \
  -- generate --model tiny/model.h5 --prompts pairs.jsonl --out g.jsonl --top-k -3
[ -e r6 ] && fail "options: a refused run created its run directory"

# ---- 7. a stop signal during start-up (before MPI_Init) on one rank: exit 99 on every rank, no hang ----
for sig in TERM USR1; do
  t0=$SECONDS
  timeout -k 5 60 mpiexec -n 2 --oversubscribe --bind-to none bash -c \
    'if [ "$OMPI_COMM_WORLD_RANK" = 1 ]; then export PREFOPT_TEST_RAISE_AT_START='$sig'; fi; exec "$0" "$@"' \
    "$P" "${T[@]}" --run-dir r7 > r7.out 2> r7.err
  rc=$?
  if [ "$rc" != 99 ]; then
    fail "signal_at_start_$sig: exit $rc, expected 99 (143/138: a rank was killed; 124: hung)"
  elif ! grep -qx "stop signal: nothing to checkpoint at step 0 and exiting with 99 (requeue)" r7.out || [ -e r7/checkpoints/latest ]; then
    fail "signal_at_start_$sig: $(grep stop r7.out) $(ls r7/checkpoints)"
  else
    echo "ok: signal_at_start_$sig: SIG$sig on rank 1 before MPI_Init: exit 99 in $((SECONDS - t0)) s, no checkpoint written"
  fi
  rm -rf r7
done
timeout -k 5 60 mpiexec -n 2 --oversubscribe --bind-to none -x PREFOPT_TEST_RAISE_AT_START=TERM "$P" eval \
  --model tiny/model.h5 --data pairs.h5 --out e7.jsonl > e7.out 2> e7.err
rc=$?
[ "$rc" = 99 ] && [ ! -e e7.jsonl ] && echo "ok: signal_at_start_eval: exit 99, no output" ||
  fail "signal_at_start_eval: exit $rc $(ls e7*)"

# ---- 14. from scratch, --eval-data with another vocabulary is refused (it was, with --init) ----
$PY - <<'EOF' || fail "making vocab300.h5"
import h5py, numpy as np, shutil
shutil.copy('pairs.h5', 'vocab300.h5')
with h5py.File('vocab300.h5', 'r+') as f:
    f.attrs['vocab_size'] = np.int32(300)
EOF
expect eval_data_vocab 1 "vocab300.h5: vocabulary size 300 is larger than the model's 259 rows (packed with another tokenizer?)" \
  -- "${T[@]}" --eval-data vocab300.h5

# ---- 16. a run directory with a newline (config.ini could not be read back) ----
nl_dir=$'run\ndir'
expect run_dir_newline 2 "--run-dir: the path contains a control character (byte 0x0a at offset 3); rename it" \
  -- "${T[@]}" --run-dir "$nl_dir"
[ -e "$nl_dir" ] && fail "run_dir_newline: the directory was created"

# ---- 19, 20. every input checked before step 1, and messages that name the file ----
"$P" pack --input pairs.jsonl --output p50.h5 --eval-fraction 0.001 --eval-out ev0.h5 > /dev/null 2>&1 ||
  fail "making an empty held-out split"
expect eval_data_empty 1 "ev0.h5: the dataset has no examples (--eval-data)" -- "${T[@]}" --eval-data ev0.h5
[ -e r6/metrics.jsonl ] && fail "eval_data_empty: training ran before the check"
mkdir -p r19 && : > r19/checkpoints
expect checkpoints_is_file 1 "r19/checkpoints: exists and is not a directory" -- "${T[@]}" --run-dir r19
expect batch_too_large 1 "pairs.h5: the dataset has 24 examples, fewer than one global batch of 32" \
  -- "${T[@]}" --batch-size 32
rm -rf r6

# ---- 9, 10, 11. resume: damaged checkpoints, other data, two runs on one directory, replayed metrics rows ----
R=(train --data pairs.h5 --n-layer 1 --n-embd 16 --n-head 2 --batch-size 4 --max-steps 4 --save-interval 2 --keep-last 3
   --log-interval 1 --lr-scheduler constant)
run r9_ref -- "${R[@]}" --run-dir r9
[ "$rc" = 0 ] && [ -e r9/checkpoints/step-00000002.h5 ] || fail "resume: the reference run failed (exit $rc)"
cp -r r9 r9all && for f in r9all/checkpoints/step-*.h5; do truncate -s 1000 "$f"; done
before=$(sums r9all/checkpoints r9all/metrics.jsonl)
expect resume_all_damaged 1 "r9all/checkpoints: no usable checkpoint (step-00000004.h5 cannot be opened as HDF5 (truncated or damaged); step-00000002.h5 cannot be opened as HDF5 (truncated or damaged)): move them away or pass --resume never to start from step 1" \
  -- "${R[@]}" --run-dir r9all
[ "$(sums r9all/checkpoints r9all/metrics.jsonl)" = "$before" ] || fail "resume_all_damaged: checkpoints or metrics changed"
cp -r r9 r9new && truncate -s 1000 r9new/checkpoints/step-00000004.h5
run resume_newest_damaged -- "${R[@]}" --max-steps 6 --run-dir r9new
w="prefopt: warning: --resume auto: skipped step-00000004.h5 cannot be opened as HDF5 (truncated or damaged); resuming from r9new/checkpoints/step-00000002.h5"
if [ "$rc" != 0 ] || [ "$(grep -cxF "$w" resume_newest_damaged.err)" != 1 ]; then
  fail "resume_newest_damaged: exit $rc; $(grep -i 'warn\|error' resume_newest_damaged.err | head -2)"
elif [ "$(grep -o '"step":[0-9]*,' r9new/metrics.jsonl | tr -d '\n')" != '"step":1,"step":2,"step":3,"step":4,"step":5,"step":6,' ]; then
  # 11: the rows of steps 3 and 4 (replayed from step 2) are not doubled
  fail "resume_newest_damaged: metrics.jsonl steps: $(grep -o '"step":[0-9]*' r9new/metrics.jsonl | tr '\n' ' ')"
else
  echo "ok: resume_newest_damaged: one warning names the skipped checkpoint; metrics.jsonl has steps 1-6 once each"
fi
for i in $(seq 1 64); do printf '{"prompt": "q %d?", "chosen": " a %d", "rejected": " n %d"}\n' "$i" "$i" "$i"; done > p64.jsonl
"$P" pack --input p64.jsonl --output p64.h5 > /dev/null 2>&1
expect resume_other_data 1 "r9/checkpoints/step-00000004.h5: resuming with --data p64.h5: the data cursor was saved with seed 1234, global batch 4, 24 examples, bucket window 0; this run has 1234, 4, 64, 0: resuming would not give the same batches" \
  -- "${R[@]/pairs.h5/p64.h5}" --max-steps 6 --run-dir r9
# 10: a second train on a run directory in use is refused, naming the holder
PREFOPT_TEST_STEP_DELAY_MS=300 "$P" "${R[@]}" --max-steps 1000 --run-dir r10 > r10a.log 2>&1 &
bg=$!
for _ in $(seq 1 100); do [ -s r10/lock ] && break; sleep 0.1; done
expect run_dir_locked 1 "r10: the run directory is in use by another prefopt train (host $(hostname), pid $bg); wait for it to end or use another --run-dir" \
  -- "${R[@]}" --run-dir r10
kill -9 $bg 2> /dev/null; wait $bg 2> /dev/null; bg=""
run r10_after -- "${R[@]}" --run-dir r10   # the lock went with the killed process
[ "$rc" = 0 ] && echo "ok: run_dir_lock_released: a killed run's lock does not block the next" || fail "r10_after: exit $rc: $(grep error r10_after.err | head -1)"

# ---- 13. a misspelled INI section is an error on every rank ----
printf '[train]\nmax_steps = 2\n[trian]\nlearning_rate = 1\n' > job.ini
expect ini_section 2 "~job\.ini:4: unknown section \[trian\] \(sections: .*\)" -- "${T[@]}" --config job.ini

# ---- 8. non-finite weights behind a valid checksum are refused on load, naming the tensor ----
$PY - <<'EOF' || fail "making nan.h5"
import h5py, numpy as np, shutil
M = (1 << 64) - 1
def mix(g, b):  # io/checkpoint/ckpt_piece.c, to write a checksum that matches the edited tensor
    x = (b * 0xff51afd7ed558ccd + g * 0x9e3779b97f4a7c15 + 0x632be59bd9b4e019) & M
    x ^= x >> 29; x = (x * 0xc4ceb9fe1a85ec53) & M; x ^= x >> 32
    return x
for name, val in (('nan.h5', np.nan), ('inf.h5', np.inf)):
    shutil.copy('tiny/model.h5', name)
    with h5py.File(name, 'r+') as f:
        d = f['model/h.mlp.c_fc.weight']
        a = d[...]
        a[0, 3, 5] = val
        d[...] = a
        cs = d.attrs['checksum'].copy()
        cs[0] = sum(mix(i, int(b)) for i, b in enumerate(a[0].astype('<f4').view('<u4').ravel())) & M
        d.attrs['checksum'] = cs
EOF
printf '{"prompt": "question 3?"}\n' > prompts.jsonl
expect nan_weights_eval 1 "nan.h5: tensor 'h.0.mlp.c_fc.weight' has 1 non-finite values (NaN or Inf)" \
  -- eval --model nan.h5 --data pairs.h5 --out n.jsonl
expect inf_weights_generate 1 "inf.h5: tensor 'h.0.mlp.c_fc.weight' has 1 non-finite values (NaN or Inf)" \
  -- generate --model inf.h5 --prompts prompts.jsonl --out n.jsonl
expect nan_weights_export 1 "nan.h5: tensor 'h.0.mlp.c_fc.weight' has 1 non-finite values (NaN or Inf)" \
  -- export --model nan.h5 --hf nan_hf
expect nan_weights_init 1 "nan.h5: tensor 'h.0.mlp.c_fc.weight' has 1 non-finite values (NaN or Inf)" \
  -- "${T[@]}" --init nan.h5
ls -d n.jsonl nan_hf* > /dev/null 2>&1 && fail "nan_weights: an output was written"

# ---- 8 (import). a safetensors file with a NaN weight is refused by import, naming the tensor ----
cp -r hf_old hf_nan
$PY - <<'EOF' || fail "making hf_nan"
import json, struct, numpy as np
p = 'hf_nan/model.safetensors'
b = bytearray(open(p, 'rb').read())
n = struct.unpack('<Q', b[:8])[0]
h = json.loads(b[8:8 + n])
name = 'transformer.wte.weight'
off = 8 + n + h[name]['data_offsets'][0]
b[off + 4 * 7:off + 4 * 8] = np.float32(np.nan).tobytes()
open(p, 'wb').write(b)
EOF
expect import_nan 1 "model.safetensors: tensor 'transformer.wte.weight' has 1 non-finite values (NaN or Inf)" \
  -- import --hf hf_nan --out nan_imported.h5
ls nan_imported.h5* > /dev/null 2>&1 && fail "import_nan: output left: $(ls nan_imported.h5*)"

# ---- 17. stored reference log-probs that are no log-probs (+5, NaN) are refused by inspect and train ----
$PY - <<'EOF' || fail "making refpos.h5"
import h5py, numpy as np, shutil
for name, val in (('refpos.h5', 5.0), ('refnan.h5', np.nan)):
    shutil.copy('pairs.h5', name)
    with h5py.File(name, 'r+') as f:
        n = int(f.attrs['num_examples'])
        c, r = -np.ones(n), -np.ones(n)
        c[7] = val
        g = f.create_group('ref')
        g['chosen_logps'], g['rejected_logps'] = c, r
        g.attrs['model'] = np.bytes_('edited')
EOF
NP=1 expect ref_positive_inspect 1 "refpos.h5: dataset 'ref/chosen_logps': value 5 at example 7 is not a log-probability (finite and <= 0)" \
  -- inspect --file refpos.h5
expect ref_nan_train 1 "refnan.h5: dataset 'ref/chosen_logps': value nan at example 7 is not a log-probability (finite and <= 0)" \
  -- "${T[@]/pairs.h5/refnan.h5}"

# ---- 15. model attributes checked against the tensors; special ids inside the vocabulary ----
$PY - <<'EOF' || fail "making the attribute cases"
import h5py, numpy as np, shutil
def copy(dst):
    shutil.copy('tiny/model.h5', dst)
    return h5py.File(dst, 'r+')
with copy('nobias.h5') as f:
    f.attrs['qkv_bias'] = np.int64(0)          # the q/k/v biases stay in the file
with copy('extra.h5') as f:
    f['model/lm_head.weight'] = np.zeros((259, 16), 'f4')   # tied embeddings, yet an lm_head
with copy('eos.h5') as f:
    f.attrs['eos_id'] = np.int64(300)
# 21. h5py's default string attributes are variable-length: read as such, and an unknown value quoted as it is
with copy('vlen.h5') as f:
    for k in ('kind', 'arch', 'hf_model_type', 'tokenizer_identity'):
        v = f.attrs[k]
        v = v.decode() if isinstance(v, bytes) else str(v)
        del f.attrs[k]
        f.attrs[k] = v
with copy('vlen_bad.h5') as f:
    del f.attrs['arch']
    f.attrs['arch'] = 'gpt3'
EOF
expect qkv_bias_attr 1 "nobias.h5: attribute 'qkv_bias' is 0, but a gpt2 model has q/k/v biases (1)" \
  -- eval --model nobias.h5 --data pairs.h5 --out v.jsonl
expect extra_tensor 1 "extra.h5: dataset 'model/lm_head.weight' is not a tensor of the model its attributes describe (arch gpt2, qkv_bias 1, tie_word_embeddings 1): the attributes or the tensors are wrong" \
  -- generate --model extra.h5 --prompts prompts.jsonl --out v.jsonl
expect eos_outside_vocab 1 "eos.h5: attribute 'eos_id' is 300, outside the vocabulary [0, 259) (-1: none)" \
  -- export --model eos.h5 --hf eos_hf
[ -e eos_hf ] && fail "eos_outside_vocab: exported"
run vlen_ref -- eval --model tiny/model.h5 --data pairs.h5 --out v0.jsonl
run vlen_attrs -- eval --model vlen.h5 --data pairs.h5 --out v.jsonl
[ "$rc" = 0 ] && cmp -s v.jsonl v0.jsonl &&
  echo "ok: vlen_attrs: a model file with variable-length string attributes loads and scores as the original" ||
  fail "vlen_attrs: exit $rc: $(grep error vlen_attrs.err | head -1)"
expect vlen_attr_value 1 "vlen_bad.h5: attribute 'arch' missing or unknown ('gpt3'): gpt2 and llama are supported" \
  -- eval --model vlen_bad.h5 --data pairs.h5 --out v.jsonl

# ---- 12. pack (and generate's prompts): NUL characters, duplicate keys, chosen == rejected without a prompt ----
printf '{"prompt": "x\\u0000zz", "chosen": " a", "rejected": " b"}\n' > nul_esc.jsonl
printf '{"prompt": "x\000zz", "chosen": " a", "rejected": " b"}\n' > nul_raw.jsonl
printf '{"prompt": "x\\\\u0000zz", "chosen": " a", "rejected": " b"}\n' > nul_not.jsonl   # an escaped backslash: text
printf '{"prompt": "p", "chosen": " a", "rejected": " b", "chosen": " c"}\n' > dup.jsonl
printf '{"chosen": "same text", "rejected": "same text"}\n' > same.jsonl
printf '{"prompt": "p", "chosen": " s", "rejected": " s"}\n{"prompt": "p", "chosen": " a", "rejected": " b"}\n' > tie.jsonl
NP=1 expect pack_nul_escape 1 "nul_esc.jsonl:1: a string holds \\u0000 (a NUL character) at column 14: prefopt's strings end at NUL, the text would be cut there; remove it" \
  -- pack --input nul_esc.jsonl --output x.h5
NP=1 expect pack_nul_byte 1 "nul_raw.jsonl:1: a NUL byte at column 14 (JSON text holds none: is it UTF-16 or binary?)" \
  -- pack --input nul_raw.jsonl --output x.h5
NP=1 expect pack_duplicate_key 1 "dup.jsonl:1: key 'chosen' appears twice in one object (Python's json takes the last, cJSON the first): keep one" \
  -- pack --input dup.jsonl --output x.h5
NP=1 expect pack_same_no_prompt 1 "same.jsonl:1: 'chosen' and 'rejected' are the same and there is no 'prompt' to split them: nothing to prefer" \
  -- pack --input same.jsonl --output x.h5
expect generate_duplicate_key 1 "dup.jsonl:1: key 'chosen' appears twice in one object (Python's json takes the last, cJSON the first): keep one" \
  -- generate --model tiny/model.h5 --prompts dup.jsonl --out x.jsonl
ls x.h5* x.jsonl > /dev/null 2>&1 && fail "pack checks: an output was written"
"$P" pack --input nul_not.jsonl --output nn.h5 > nn.log 2>&1 &&
  [ "$($PY -c "import h5py; print(h5py.File('nn.h5','r')['prompt/tokens'].shape[0])")" = 9 ] &&
  echo "ok: pack_escaped_backslash: \\\\u0000 is text (9 prompt bytes)" || fail "pack_escaped_backslash: $(tail -1 nn.log)"
"$P" pack --input tie.jsonl --output tie.h5 > tie.log 2>&1 &&
  grep -qx "  warning: 1 pairs have the same chosen and rejected tokens (they carry no preference)" tie.log &&
  echo "ok: pack_tie: packed with a warning" || fail "pack_tie: $(grep -i 'warn\|error' tie.log)"

# ---- 18. generate: a prompt longer than the context is refused; the JSONL is valid UTF-8 whatever the model emits ----
$PY -c "import json; print(json.dumps({'prompt': 'x' * 300}))" > long.jsonl
expect generate_long_prompt 1 "long.jsonl: prompt 0 has 300 tokens, the model's context is 256 positions: no room for a new token (shorten the prompt)" \
  -- generate --model tiny/model.h5 --prompts long.jsonl --out x.jsonl
run generate_bytes -- generate --model tiny/model.h5 --prompts pairs.jsonl --out gen.jsonl --temperature 1.5 --max-new-tokens 40
# the reference: Python's own decode of the byte ids with errors="replace" (what Hugging Face's decode gives)
if [ "$rc" = 0 ] && $PY - <<'EOF'; then
import json, sys
raw = open('gen.jsonl', 'rb').read()
rows = [json.loads(l) for l in raw.decode('utf-8').splitlines()]   # strict: fails on invalid UTF-8
bad = 0
for r in rows:
    b = bytes(i for i in r['ids'] if i < 256).split(b'\0')[0]     # (text after a NUL byte is not kept)
    bad += b.decode('utf-8', 'replace') != r['completion']
replaced = sum('\ufffd' in r['completion'] for r in rows)
print('  %d rows, %d with U+FFFD, %d differing from Python\'s decode' % (len(rows), replaced, bad))
sys.exit(1 if bad or not replaced else 0)
EOF
  echo "ok: generate_bytes: valid UTF-8 JSON; completions equal Python's decode(errors='replace') of the ids"
else
  fail "generate_bytes: exit $rc or invalid output"
fi

finish_cases test_redteam
