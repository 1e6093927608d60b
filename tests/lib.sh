# tests/lib.sh: the preamble the test scripts share. A script sources it first thing after `set`:
#   source "$(dirname "$0")/lib.sh"
# (ctest runs every script as `bash /abs/path/tests/NAME.sh BUILD_DIR`, tests/CMakeLists.txt, so $0 names the
# script's own folder). Sourcing only sets PY, MPI, fail and fails and defines the functions below; nothing else
# happens until a script calls one. A skip exits 77, which ctest reports as skipped (SKIP_RETURN_CODE 77).

PY=/usr/bin/python3
# the launcher most scripts use; a script that needs another (-n 2, an array) sets MPI after sourcing
MPI="mpiexec --oversubscribe --bind-to none"

# ---- what this machine must have ------------------------------------------------------------------------------

# requires_python "MOD..." [NOTE]: skip unless $PY imports every MOD, with the line
# "skip: /usr/bin/python3 lacks MOD1/MOD2 NOTE".
requires_python() {
  local mods=$1
  "$PY" -c "import ${mods// /, }" 2>/dev/null && return 0
  echo "skip: $PY lacks ${mods// //}${2:+ $2}"
  exit 77
}
requires_python_h5py() { requires_python "numpy h5py" "$@"; }

requires_mpiexec() { command -v mpiexec > /dev/null || { echo "skip: no mpiexec"; exit 77; }; }

# ---- the MPI environment --------------------------------------------------------------------------------------

# Open MPI refuses to start as root (containers, CI) without these.
mpi_env_root() { export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; }
# More ranks than cores (the many-rank and fault tests): oversubscription allowed, idle ranks yield their core,
# one BLIS/OpenMP thread per rank.
mpi_env_oversubscribed() {
  mpi_env_root
  export OMPI_MCA_rmaps_base_oversubscribe=1 OMPI_MCA_mpi_yield_when_idle=1 BLIS_NUM_THREADS=1 OMP_NUM_THREADS=1
}

# prefopt_bin BUILD_DIR: $PREFOPT, else BUILD_DIR/prefopt, as an absolute path (the scripts cd into their scratch
# directory).
prefopt_bin() {
  local p=${PREFOPT:-$1/prefopt}
  case $p in /*) ;; *) p=$PWD/$p ;; esac
  printf '%s\n' "$p"
}

# mpi_script_env BUILD_DIR: the start of the multi-rank scripts (errors, faults, red team, many ranks): P from
# prefopt_bin, numpy/h5py and mpiexec required (else skip), the oversubscribed MPI environment.
mpi_script_env() {
  P=$(prefopt_bin "$1")
  requires_python_h5py "(tests/deps.sh)"
  requires_mpiexec
  mpi_env_oversubscribed
}

# ---- scratch directories and clean-up -------------------------------------------------------------------------

# at_exit CMD: CMD (eval'd then, so it sees the variables' values at exit) runs when the script exits, after the
# commands registered before it. The script's exit status stays its own. A script using at_exit sets no EXIT
# trap of its own (it would replace this one).
_lib_exit_cmds=()
_lib_run_exit() {
  local _lib_c
  for _lib_c in "${_lib_exit_cmds[@]}"; do eval "$_lib_c"; done
}
at_exit() {
  _lib_exit_cmds+=("$1")
  trap _lib_run_exit EXIT
}

# scratch_dir VAR [TEMPLATE]: a new directory (mktemp -d TEMPLATE; without one, mktemp's default in $TMPDIR or
# /tmp) in $VAR, removed at exit.
scratch_dir() {
  local dir
  dir=$(mktemp -d ${2:+"$2"})
  printf -v "$1" '%s' "$dir"
  at_exit "rm -rf $(printf '%q' "$dir")"
}
# make_workdir VAR [TEMPLATE]: the same, and cd into it.
make_workdir() {
  scratch_dir "$@"
  cd "${!1}"
}

# ---- counting failures: a script reports every failed check and exits non-zero at the end ---------------------

# Flag style: check / bad set fail=1; finish NAME ends the script.
fail=0
# check 'CONDITION' MESSAGE: CONDITION is eval'd (single-quoted, so its $vars are read now); when it is false,
# "FAILED: MESSAGE".
check() { if ! eval "$1"; then echo "FAILED: $2"; fail=1; fi; }
ok() { echo "ok: $*"; }
bad() { echo "FAIL: $*"; fail=1; }
# finish NAME: "NAME: all checks passed" when nothing failed; exits with $fail.
finish() {
  [ $fail -eq 0 ] && echo "$1: all checks passed"
  exit $fail
}

# Counting style: fail MESSAGE counts into fails; finish_cases NAME [NOTE] ends the script: "NAME: N case(s)
# failed" and exit 1, else "NAME: all cases passed NOTE".
fails=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }
finish_cases() {
  if [ "$fails" -gt 0 ]; then
    echo "$1: $fails case(s) failed"
    exit 1
  fi
  echo "$1: all cases passed${2:+ $2}"
}
