#!/usr/bin/env bash
# kill -9 during a checkpoint write: the writer SIGKILLs itself (every rank) after k datasets
# (PREFOPT_TEST_CKPT_KILL_AFTER_TENSORS=k; the tiny GPT-2 has 20 datasets per group, 60 with the moments), for k
# before the first dataset, inside the weights and inside the moments. Each time the previous checkpoint stays
# the latest and loads with exactly its values; the next normal save cleans up the .tmp and moves latest on.
set -u
B=$1
EXE="$B/tests/test_ckpt_kill"
MPI="mpiexec -n 2 --oversubscribe --bind-to none"
W=$(mktemp -d "$B/test_ckpt_kill.XXXXXX")
trap 'rm -rf "$W"' EXIT
fail=0
die() { echo "FAIL: $*"; fail=1; }

$MPI "$EXE" save "$W/ck" 1 || die "save 1"
$MPI "$EXE" verify "$W/ck" 1 || die "verify 1"
for k in 0 7 45; do
  PREFOPT_TEST_CKPT_KILL_AFTER_TENSORS=$k $MPI "$EXE" save "$W/ck" 2 > "$W/log" 2>&1 && die "save with kill after $k returned 0"
  grep -q "test hook: SIGKILL after $k datasets" "$W/log" || die "the hook did not fire at $k: $(cat "$W/log")"
  [ -e "$W/ck/step-00000002.h5.tmp" ] || die "no partial step-00000002.h5.tmp after a kill at $k"
  [ ! -e "$W/ck/step-00000002.h5" ] || die "step-00000002.h5 published although killed at $k"
  [ "$(cat "$W/ck/latest")" = "step-00000001.h5" ] || die "latest moved: $(cat "$W/ck/latest")"
  $MPI "$EXE" verify "$W/ck" 1 || die "previous checkpoint not loadable after a kill at $k"
  echo "ok: killed after $k datasets, step 1 still latest and intact"
done
$MPI "$EXE" save "$W/ck" 2 || die "save 2"
$MPI "$EXE" verify "$W/ck" 2 || die "verify 2"
[ ! -e "$W/ck/step-00000002.h5.tmp" ] || die ".tmp left after a complete save"
[ -e "$W/ck/step-00000001.h5" ] || die "step 1 removed although keep_last=3"
# weights-only export of the latest checkpoint (the directory stands for it), and to HF and back: same weights
"$PREFOPT" export --model "$W/ck" --out "$W/w.h5" --hf "$W/hf" > /dev/null || die "export of the checkpoint directory"
h5ls -r "$W/w.h5" | grep -q optim && die "weights-only export carries optimizer state"
h5diff "$W/ck/step-00000002.h5" "$W/w.h5" /model /model > /dev/null || die "weights-only export differs"
"$PREFOPT" import --hf "$W/hf" --out "$W/back.h5" > /dev/null || die "import of the exported checkpoint"
h5diff "$W/ck/step-00000002.h5" "$W/back.h5" /model /model > /dev/null || die "checkpoint -> HF -> import not bit-identical"
exit $fail
