#!/usr/bin/env bash
# Submits the prefopt pipeline as dependent SLURM jobs: import -> pack -> SFT -> DPO -> eval.
# Each job starts only when the previous ones exited 0 (afterok); --kill-on-invalid-dep=yes cancels the rest of
# the chain when one fails, instead of leaving it pending forever (DependencyNeverSatisfied). A job that is
# requeued after a checkpoint (exit 99) is not a failure: its dependents keep waiting for it.
#
# usage: jobs/pipeline.sh PIPELINE.env
# The env file (bash) sets, see jobs/example-pipeline.env:
#   RUN_ROOT        where run directories and logs go (required)
#   SBATCH_ARGS     array of sbatch options for every job (partition, account, qos, ...)
#   IMPORT          array: `prefopt import` options; empty: no import stage
#   PACK            array of strings, one `prefopt pack` option string per pack job (split on spaces)
#   SFT_CONFIG, SFT_SBATCH_ARGS (array)           empty SFT_CONFIG: no SFT stage
#   DPO_CONFIG, DPO_SBATCH_ARGS (array), DPO_INIT (default $RUN_ROOT/sft/model.h5, the final SFT weights)
#   EVAL            array: `prefopt eval` options; empty: no eval stage
# Prints "stage jobid" lines and writes them to $RUN_ROOT/jobs.txt.
set -euo pipefail
env_file=${1:?usage: jobs/pipeline.sh PIPELINE.env}
JOBS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SBATCH_ARGS=(); IMPORT=(); PACK=(); SFT_CONFIG=; SFT_SBATCH_ARGS=(); DPO_CONFIG=; DPO_SBATCH_ARGS=(); DPO_INIT=; EVAL=()
# shellcheck source=example-pipeline.env
source "$env_file"
: "${RUN_ROOT:?$env_file must set RUN_ROOT}"
mkdir -p "$RUN_ROOT/logs"
RUN_ROOT=$(cd "$RUN_ROOT" && pwd)
export PREFOPT_JOBS_DIR=$JOBS_DIR        # the scripts find prefopt_job.sh through it (sbatch copies scripts)
: > "$RUN_ROOT/jobs.txt"

submit() {  # stage deps(colon list or "") sbatch-args... -- script args...
  local stage=$1 deps=$2; shift 2
  local dep=()
  [ -n "$deps" ] && dep=(--dependency="afterok:$deps" --kill-on-invalid-dep=yes)
  local id
  id=$(sbatch --parsable --job-name="prefopt-$stage" --output="$RUN_ROOT/logs/%x-%j.out" "${SBATCH_ARGS[@]}" "${dep[@]}" "$@")
  id=${id%%;*}
  echo "$stage $id" | tee -a "$RUN_ROOT/jobs.txt"
  LAST_ID=$id
}

import_id=; pack_ids=; sft_id=; dpo_id=
if [ ${#IMPORT[@]} -gt 0 ]; then submit import "" "$JOBS_DIR/step.sbatch" import "${IMPORT[@]}"; import_id=$LAST_ID; fi
for i in "${!PACK[@]}"; do
  # shellcheck disable=SC2206
  args=(${PACK[$i]})
  submit "pack$i" "$import_id" "$JOBS_DIR/step.sbatch" pack "${args[@]}"
  pack_ids=${pack_ids:+$pack_ids:}$LAST_ID
done
join() { local IFS=:; local a=("$@"); local out=() x; for x in "${a[@]}"; do [ -n "$x" ] && out+=("$x"); done; echo "${out[*]}"; }
if [ -n "$SFT_CONFIG" ]; then
  submit sft "$(join "$import_id" "$pack_ids")" "${SFT_SBATCH_ARGS[@]}" "$JOBS_DIR/sft.sbatch" "$SFT_CONFIG" "$RUN_ROOT/sft"
  sft_id=$LAST_ID
fi
if [ -n "$DPO_CONFIG" ]; then
  export PREFOPT_INIT=${DPO_INIT:-$RUN_ROOT/sft/model.h5}   # sbatch exports the environment
  submit dpo "$(join "$sft_id" "$pack_ids")" "${DPO_SBATCH_ARGS[@]}" "$JOBS_DIR/dpo.sbatch" "$DPO_CONFIG" "$RUN_ROOT/dpo"
  unset PREFOPT_INIT
  dpo_id=$LAST_ID
fi
if [ ${#EVAL[@]} -gt 0 ]; then
  submit eval "$(join "$dpo_id" "$sft_id" "$pack_ids")" "$JOBS_DIR/step.sbatch" eval "${EVAL[@]}"
fi
