#!/usr/bin/env bash
# Shared by the prefopt batch scripts (sourced; not submitted). Sets up threads, binding, HDF5 locking and
# the process grid from SLURM's variables, and runs one prefopt step under `srun --mpi=pmix`, requeueing the
# job when prefopt exits 99 (checkpointed on SIGUSR1/SIGTERM).
#
# Environment (all optional):
#   PREFOPT                  the prefopt binary (default: prefopt on PATH, else $PREFOPT_ROOT/build/prefopt)
#   PREFOPT_GRID_ROWS/_COLS  tensor-parallel grid; PREFOPT_DP data-parallel replicas. Unset: taken from the job
#                            config when it sets grid-rows/grid-cols/dp, else one grid per node (ranks per node
#                            split into the squarest R x C, R <= C) and DP = ranks / (R*C)
#   PREFOPT_CPU_BIND         srun --cpu-bind value (default "cores"; "none" to leave binding to the site)
#   PREFOPT_SRUN_ARGS        extra srun arguments (e.g. "--distribution=block:block")
#   PREFOPT_MAX_REQUEUES     give up instead of requeueing after this many restarts (default 50)
#   HDF5_USE_FILE_LOCKING    default FALSE (Lustre/GPFS without flock); set TRUE on local file systems if wanted

prefopt_log() { echo "[prefopt-job ${SLURM_JOB_ID:-nojob} $(date -u +%FT%TZ)] $*" >&2; }

prefopt_find_binary() {
  if [ -z "${PREFOPT:-}" ]; then
    if command -v prefopt >/dev/null 2>&1; then PREFOPT=$(command -v prefopt)
    elif [ -n "${PREFOPT_ROOT:-}" ] && [ -x "$PREFOPT_ROOT/build/prefopt" ]; then PREFOPT=$PREFOPT_ROOT/build/prefopt
    else prefopt_log "error: prefopt not found: set PREFOPT=/path/to/prefopt or PREFOPT_ROOT"; return 1; fi
  fi
  [ -x "$PREFOPT" ] || { prefopt_log "error: PREFOPT=$PREFOPT is not executable"; return 1; }
  export PREFOPT
}

# Threads per rank from --cpus-per-task; srun >= 22.05 does not inherit -c from sbatch, so pass it on.
prefopt_setup_env() {
  local c=${SLURM_CPUS_PER_TASK:-1}
  export OMP_NUM_THREADS=$c BLIS_NUM_THREADS=$c
  export OMP_PLACES=cores OMP_PROC_BIND=close
  if [ -n "${SLURM_CPUS_PER_TASK:-}" ]; then export SRUN_CPUS_PER_TASK=$SLURM_CPUS_PER_TASK; fi
  export HDF5_USE_FILE_LOCKING=${HDF5_USE_FILE_LOCKING:-FALSE}
}

# Does the INI file set KEY (dashes or underscores) anywhere? Used so the config's grid wins over derivation.
_prefopt_ini_has() { [ -n "${1:-}" ] && [ -f "$1" ] && grep -Eq "^[[:space:]]*${2//-/[-_]}[[:space:]]*=" "$1"; }

# Sets PREFOPT_GRID_ARGS (array) from the environment, the config file ($1, may be empty) or SLURM's layout.
prefopt_grid_args() {
  local config=${1:-} ntasks=${SLURM_NTASKS:-1} nnodes=${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-1}} per r c dp
  PREFOPT_GRID_ARGS=()
  if [ -z "${PREFOPT_GRID_ROWS:-}${PREFOPT_GRID_COLS:-}${PREFOPT_DP:-}" ] &&
     { _prefopt_ini_has "$config" grid-rows || _prefopt_ini_has "$config" grid-cols || _prefopt_ini_has "$config" dp; }; then
    prefopt_log "grid: from $config"
    return 0
  fi
  per=$(( ntasks / nnodes ))
  [ $per -ge 1 ] || per=1
  r=${PREFOPT_GRID_ROWS:-}; c=${PREFOPT_GRID_COLS:-}
  if [ -z "$r" ] && [ -z "$c" ]; then
    r=1; local k; for ((k = 1; k * k <= per; k++)); do (( per % k == 0 )) && r=$k; done
    c=$(( per / r ))
  elif [ -z "$r" ]; then r=1
  elif [ -z "$c" ]; then c=1
  fi
  dp=${PREFOPT_DP:-$(( ntasks / (r * c) ))}
  if (( r * c * dp != ntasks )); then
    prefopt_log "error: grid ${r}x${c} x dp ${dp} = $(( r * c * dp )) ranks, but the job has $ntasks tasks"
    return 1
  fi
  PREFOPT_GRID_ARGS=(--grid-rows "$r" --grid-cols "$c" --dp "$dp")
  prefopt_log "grid: ${r}x${c} x dp ${dp} over $ntasks ranks on $nnodes node(s), ${OMP_NUM_THREADS:-1} threads/rank"
}

# prefopt_srun SUBCOMMAND ARGS...: runs the step; returns its exit status. On 99 (checkpointed) it requeues the
# job, so the script should `exit` with the status right after. The batch shell ignores nothing: it traps
# TERM/USR1 only to keep waiting for srun (which forwards them to the ranks) and never dies before the step.
prefopt_srun() {
  local pid rc=0 sig=0
  prefopt_log "step: srun --mpi=pmix $PREFOPT $* (restart ${SLURM_RESTART_COUNT:-0})"
  trap 'sig=1; prefopt_log "batch shell got SIGTERM"' TERM
  trap 'sig=1; prefopt_log "batch shell got SIGUSR1"' USR1
  # shellcheck disable=SC2086
  srun --mpi=pmix --cpu-bind="${PREFOPT_CPU_BIND:-cores}" ${PREFOPT_SRUN_ARGS:-} "$PREFOPT" "$@" &
  pid=$!
  while :; do
    sig=0; rc=0
    wait "$pid" || rc=$?
    if [ $sig = 1 ]; then
      kill -0 "$pid" 2>/dev/null && continue    # interrupted by a signal: srun still runs
      rc=0; wait "$pid" || rc=$?                # srun ended while the trap ran: collect its status
    fi
    break
  done
  trap - TERM USR1
  if [ $rc -eq 99 ]; then
    if [ "${SLURM_RESTART_COUNT:-0}" -ge "${PREFOPT_MAX_REQUEUES:-50}" ]; then
      prefopt_log "checkpointed (exit 99) but already restarted ${SLURM_RESTART_COUNT} times: not requeueing"
      return 99
    fi
    prefopt_log "checkpointed (exit 99): scontrol requeue $SLURM_JOB_ID"
    scontrol requeue "$SLURM_JOB_ID" || prefopt_log "error: scontrol requeue failed (is the job --requeue and JobRequeue=1?)"
  elif [ $rc -ne 0 ]; then
    prefopt_log "step failed with exit status $rc"
  fi
  return $rc
}

# Common start of every script: binary, environment, and a banner line for the log.
prefopt_job_init() {
  prefopt_find_binary || exit 1
  prefopt_setup_env
  prefopt_log "job ${SLURM_JOB_NAME:-?} on ${SLURM_JOB_NODELIST:-?}: ${SLURM_NTASKS:-1} tasks, ${SLURM_CPUS_PER_TASK:-1} cpus/task, restart ${SLURM_RESTART_COUNT:-0}"
}

# prefopt_train_job DEFAULT_CONFIG ARGS...: the body of sft.sbatch and dpo.sbatch.
#   ARGS: [CONFIG.ini [RUN_DIR [extra prefopt train options...]]]
#   CONFIG defaults to $PREFOPT_CONFIG, then DEFAULT_CONFIG; RUN_DIR to $PREFOPT_RUN_DIR, then
#   $SLURM_SUBMIT_DIR/runs/$SLURM_JOB_NAME. PREFOPT_INIT (dpo: the SFT checkpoint, also the reference) adds
#   --init. The same command line on every (re)start: --resume auto picks up DIR/checkpoints/latest.
prefopt_train_job() {
  local def=$1; shift
  local config=${1:-${PREFOPT_CONFIG:-$def}} run_dir=${2:-${PREFOPT_RUN_DIR:-${SLURM_SUBMIT_DIR:-.}/runs/${SLURM_JOB_NAME:-train}}}
  [ $# -ge 2 ] && shift 2 || shift $#
  [ -f "$config" ] || { prefopt_log "error: job config $config not found"; return 1; }
  mkdir -p "$run_dir"
  prefopt_grid_args "$config" || return 1
  local init=()
  if [ -n "${PREFOPT_INIT:-}" ]; then init=(--init "$PREFOPT_INIT"); fi
  prefopt_srun train --config "$config" --run-dir "$run_dir" --resume auto "${PREFOPT_GRID_ARGS[@]}" "${init[@]}" "$@"
}
