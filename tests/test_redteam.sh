#!/usr/bin/env bash
# The red team's failures of issue 22, one regression case each (numbers are the items): every case runs
# under mpiexec -n 2 with a time limit and checks the exit code, the exact error line on every rank (no other
# error line), and that inputs and earlier outputs are byte-identical afterwards (md5) with no partial file left.
# usage: test_redteam.sh BUILD_DIR   (PREFOPT: the prefopt executable; default BUILD_DIR/prefopt)
set -uo pipefail
build=${1:?usage: test_redteam.sh BUILD_DIR}
P=${PREFOPT:-$build/prefopt}
case $P in /*) ;; *) P=$PWD/$P ;; esac
PY=/usr/bin/python3
$PY -c "import numpy, h5py" 2>/dev/null || { echo "skip: /usr/bin/python3 lacks numpy/h5py (tests/deps.sh)"; exit 77; }
command -v mpiexec > /dev/null || { echo "skip: no mpiexec"; exit 77; }
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export OMPI_MCA_mpi_yield_when_idle=1 BLIS_NUM_THREADS=1 OMP_NUM_THREADS=1
w=$(mktemp -d "${TMPDIR:-/tmp}/prefopt_redteam.XXXXXX")
bg=""
cleanup() {
  [ -n "$bg" ] && kill -9 $bg 2>/dev/null
  rm -rf "$w"
}
trap cleanup EXIT
cd "$w"
fails=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }

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

if [ "$fails" -gt 0 ]; then
  echo "test_redteam: $fails case(s) failed"
  exit 1
fi
echo "test_redteam: all cases passed"
