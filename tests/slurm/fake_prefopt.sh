#!/usr/bin/env bash
# A stand-in for the prefopt binary in the SLURM tests (used while `prefopt train` does not exist, and to test
# the job scripts' plumbing independently of training). Behaviour:
#   SUB --help                          exit 0
#   import|pack|eval|generate ... --out/--output F  rank 0 writes F; exit 1 when FAKE_FAIL names SUB
#   train ... --run-dir D              records args/env to D/start-<restart>-<rank>.txt; with restart count 0
#                                      and FAKE_TRAIN=wait-signal, loops until SIGUSR1/SIGTERM, then writes
#                                      D/checkpoints/ckpt-1 + latest and exits 99; otherwise, if resuming, it
#                                      requires D/checkpoints/latest; rank 0 writes D/metrics.jsonl; exit 0
set -u
sub=${1:-}; shift || true
for a in "$@"; do [ "$a" = --help ] && { echo "fake prefopt $sub"; exit 0; }; done
rank=${SLURM_PROCID:-0}
restart=${SLURM_RESTART_COUNT:-0}
[ "${FAKE_FAIL:-}" = "$sub" ] && { echo "fake prefopt: $sub fails on purpose" >&2; exit 1; }
out=; run_dir=; resume=
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case ${args[$i]} in
    --out|--output) out=${args[$((i + 1))]} ;;
    --run-dir) run_dir=${args[$((i + 1))]} ;;
    --resume) resume=${args[$((i + 1))]} ;;
  esac
done
case $sub in
  import|pack|eval|generate)
    [ -n "$out" ] || { echo "fake prefopt: $sub needs --out" >&2; exit 2; }
    [ "$rank" = 0 ] && echo "fake $sub $*" > "$out"
    exit 0 ;;
  train)
    [ -n "$run_dir" ] || { echo "fake prefopt: train needs --run-dir" >&2; exit 2; }
    mkdir -p "$run_dir/checkpoints"
    { echo "args=$*"; echo "restart=$restart"; echo "ntasks=${SLURM_NTASKS:-}"; echo "blis=${BLIS_NUM_THREADS:-}"
      echo "omp=${OMP_NUM_THREADS:-}"; echo "srun_cpus=${SRUN_CPUS_PER_TASK:-}"; echo "hdf5_lock=${HDF5_USE_FILE_LOCKING:-}"
      echo "init=${PREFOPT_INIT:-}"; echo "cpus=$(grep Cpus_allowed_list /proc/self/status | cut -f2)"; } \
      > "$run_dir/start-$restart-$rank.txt"
    if [ "$resume" = auto ] && [ "$restart" -gt 0 ] && [ ! -e "$run_dir/checkpoints/latest" ]; then
      echo "fake prefopt: restart $restart but no checkpoint to resume from" >&2; exit 1
    fi
    if [ "${FAKE_TRAIN:-}" = wait-signal ] && [ "$restart" = 0 ]; then
      got=
      trap 'got=USR1' USR1
      trap 'got=TERM' TERM
      s=0
      while [ -z "$got" ] && [ $s -lt 300 ]; do sleep 0.5; s=$((s + 1)); done
      [ -n "$got" ] || { echo "fake prefopt: no signal within 150 s" >&2; exit 3; }
      if [ "$rank" = 0 ]; then
        echo "step=$s signal=$got" > "$run_dir/checkpoints/ckpt-1"
        ln -sfn ckpt-1 "$run_dir/checkpoints/latest"
        echo "$got" > "$run_dir/signalled"
      fi
      exit 99
    fi
    if [ "$rank" = 0 ]; then
      from=none; [ -e "$run_dir/checkpoints/latest" ] && from=$(cat "$run_dir/checkpoints/latest")
      echo "{\"final\":true,\"restart\":$restart,\"resumed_from\":\"$from\"}" >> "$run_dir/metrics.jsonl"
      echo "final" > "$run_dir/checkpoints/ckpt-final"; ln -sfn ckpt-final "$run_dir/checkpoints/latest"
      echo "fake model" > "$run_dir/model.h5"
    fi
    exit 0 ;;
  *) echo "fake prefopt: unknown subcommand $sub" >&2; exit 2 ;;
esac
