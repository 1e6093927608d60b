#!/usr/bin/env bash
# Checkpoint and start-up time against the number of ranks (issue 17), oversubscribed on one machine:
# `prefopt train` of a fixed small model (4 layers, hidden 64, vocabulary 259: 2.7 MB checkpoint with AdamW moments)
# on P ranks as a 2x2 grid times P/4 replicas, 3 steps with a checkpoint after each; prints the median of the
# three checkpoint times, the start-up line and the wall time of the run.
#   perf/ckpt_scaling.sh PREFOPT [P ...]      (default P: 8 32 64 128)
set -uo pipefail
P=${1:?usage: ckpt_scaling.sh PREFOPT [P ...]}
shift
case $P in /*) ;; *) P=$PWD/$P ;; esac
ranks=("$@")
[ ${#ranks[@]} -gt 0 ] || ranks=(8 32 64 128)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export OMPI_MCA_mpi_yield_when_idle=1 BLIS_NUM_THREADS=1 OMP_NUM_THREADS=1
w=$(mktemp -d "${TMPDIR:-/tmp}/prefopt_ckpt_scaling.XXXXXX")
trap 'rm -rf "$w"' EXIT
cd "$w"
python3 -c "
import json
for i in range(512):
    print(json.dumps({'prompt': 'q%d:' % i, 'chosen': ' yes %d' % i, 'rejected': ' no'}))" > d.jsonl
"$P" pack --input d.jsonl --output d.h5 --quiet || exit 1
"$P" train --data d.h5 --run-dir init --n-layer 4 --n-embd 64 --n-head 4 --max-position 32 --epochs 0 > init.log 2>&1 ||
  { cat init.log; exit 1; }
printf '%6s %10s %12s %12s %12s %12s %10s\n' ranks grid ckpt_med_s ckpt_max_s startup_s mpi_init_s wall_s
for np in "${ranks[@]}"; do
  t0=$(date +%s.%N)
  mpiexec -n "$np" --bind-to none "$P" train --data d.h5 --init init/model.h5 --run-dir r$np --resume never \
    --grid-rows 2 --grid-cols 2 --batch-size "$np" --max-steps 3 --save-interval 1 --keep-last 1 --peak-gflops 1 \
    --log-interval 1000 < /dev/null > r$np.log 2>&1 || { tail -5 r$np.log; continue; }
  wall=$(python3 -c "print('%.1f' % ($(date +%s.%N) - $t0))")
  ck=$(sed -n 's/^checkpoint: .* (\([0-9.]*\) s)$/\1/p' r$np.log | sort -g | tr '\n' ' ')
  set -- $ck
  su=$(sed -n 's/^start-up: \([0-9.]*\) s.*/\1/p' r$np.log)
  mi=$(sed -n 's/^start-up: .*MPI_Init \([0-9.]*\) s.*/\1/p' r$np.log)
  printf '%6s %10s %12s %12s %12s %12s %10s\n' "$np" "2x2x$((np / 4))" "${2:-?}" "${3:-?}" "${su:-n/a}" "${mi:-n/a}" "$wall"
done
ls -l r8/checkpoints/*.h5 2>/dev/null | awk '{print "checkpoint size:", $5, "bytes"}' | head -1
