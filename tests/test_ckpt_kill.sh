#!/usr/bin/env bash
# kill -9 during a checkpoint write: the writer SIGKILLs itself (every rank) after k datasets
# (PREFOPT_TEST_CKPT_KILL_AFTER_TENSORS=k; the tiny GPT-2 has 20 datasets per group, 60 with the moments), for k
# before the first dataset, inside the weights and inside the moments. Each time the previous checkpoint stays
# the latest and loads with exactly its values; the next normal save cleans up the .tmp and moves latest on.
set -u
source "$(dirname "$0")/lib.sh"
B=$1
EXE="$B/tests/test_ckpt_kill"
MPI="mpiexec -n 2 --oversubscribe --bind-to none"
scratch_dir W "$B/test_ckpt_kill.XXXXXX"

$MPI "$EXE" save "$W/ck" 1 || bad "save 1"
$MPI "$EXE" verify "$W/ck" 1 || bad "verify 1"
for k in 0 7 45; do
  PREFOPT_TEST_CKPT_KILL_AFTER_TENSORS=$k $MPI "$EXE" save "$W/ck" 2 > "$W/log" 2>&1 && bad "save with kill after $k returned 0"
  grep -q "test hook: SIGKILL after $k datasets" "$W/log" || bad "the hook did not fire at $k: $(cat "$W/log")"
  [ -e "$W/ck/step-00000002.h5.tmp" ] || bad "no partial step-00000002.h5.tmp after a kill at $k"
  [ ! -e "$W/ck/step-00000002.h5" ] || bad "step-00000002.h5 published although killed at $k"
  [ "$(cat "$W/ck/latest")" = "step-00000001.h5" ] || bad "latest moved: $(cat "$W/ck/latest")"
  $MPI "$EXE" verify "$W/ck" 1 || bad "previous checkpoint not loadable after a kill at $k"
  echo "ok: killed after $k datasets, step 1 still latest and intact"
done
$MPI "$EXE" save "$W/ck" 2 || bad "save 2"
$MPI "$EXE" verify "$W/ck" 2 || bad "verify 2"
[ ! -e "$W/ck/step-00000002.h5.tmp" ] || bad ".tmp left after a complete save"
[ -e "$W/ck/step-00000001.h5" ] || bad "step 1 removed although keep_last=3"
# weights-only export of the latest checkpoint (the directory stands for it), and to HF and back: same weights
"$PREFOPT" export --model "$W/ck" --out "$W/w.h5" --hf "$W/hf" > /dev/null || bad "export of the checkpoint directory"
h5ls -r "$W/w.h5" | grep -q optim && bad "weights-only export carries optimizer state"
h5diff "$W/ck/step-00000002.h5" "$W/w.h5" /model /model > /dev/null || bad "weights-only export differs"
"$PREFOPT" import --hf "$W/hf" --out "$W/back.h5" > /dev/null || bad "import of the exported checkpoint"
h5diff "$W/ck/step-00000002.h5" "$W/back.h5" /model /model > /dev/null || bad "checkpoint -> HF -> import not bit-identical"
exit $fail
