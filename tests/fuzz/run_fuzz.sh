#!/usr/bin/env bash
# The short fuzz step of the test command (tests/run.sh): for each libFuzzer harness of tests/fuzz, run its seed
# corpus and every saved regression input (tests/fuzz/regress/<harness>/: each crash found so far), then fuzz for
# a few seconds from the corpus. Any crash, sanitizer report or harness check fails the step; the input is left in
# $PREFOPT_FUZZ_ARTIFACTS (default build-fuzz/fuzz-artifacts) to copy into tests/fuzz/regress/<harness>/.
#
# usage: tests/fuzz/run_fuzz.sh BUILD_DIR [SECONDS_PER_HARNESS]   (BUILD_DIR configured with CC=clang -DPREFOPT_FUZZ=ON)
#   also runs the tokenizer owner's tests/fuzz_tokenizer.c harness (BUILD_DIR/tests/fuzz_tokenizer) when built.
# Exit: 0 all clean; 1 a harness failed; 77 skipped (no clang fuzzer runtime / harnesses not built).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
build=${1:?usage: run_fuzz.sh BUILD_DIR [SECONDS_PER_HARNESS]}
secs=${2:-${PREFOPT_FUZZ_SECONDS:-18}}
art=${PREFOPT_FUZZ_ARTIFACTS:-$build/fuzz-artifacts}

harnesses=()
for src in "$here"/fuzz_*.c; do
  harnesses+=("$(basename "$src" .c)")
done
missing=0
for h in "${harnesses[@]}"; do
  [ -x "$build/fuzz/$h" ] || missing=1
done
if [ "$missing" = 1 ]; then
  echo "run_fuzz: SKIPPED: harnesses not built in $build/fuzz (needs clang + libclang-rt-14-dev: configure with" \
       "CC=clang cmake -DPREFOPT_FUZZ=ON)"
  exit 77
fi

export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
# The harnesses call MPI_Init; Open MPI would take SIGABRT (a harness's failed check) for its own stack-trace
# handler, and libFuzzer would never write the crashing input to the artifact folder. Leave SIGABRT to libFuzzer.
export OMPI_MCA_opal_signal=7,8,11
# MPI_Init's own allocations are not prefopt's leaks (lsan.supp); full unwinding lets the suppressions match them.
export LSAN_OPTIONS="suppressions=$here/lsan.supp:print_suppressions=0"
asan_default="fast_unwind_on_malloc=0"
export UBSAN_OPTIONS="print_stacktrace=1"
work=$(mktemp -d "${TMPDIR:-/tmp}/prefopt_run_fuzz.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$art"
export TMPDIR="$work" # the harnesses' temporary files

failed=()
total_runs=0
run_one() { # name binary corpus-dir dict leaks
  local h=$1 bin=$2 corpus=$3 dict=$4 leaks=$5 asan=$asan_default
  [ "$leaks" = 0 ] && asan="$asan:detect_leaks=0"
  local opts=(-artifact_prefix="$art/$h-" -max_len=4096 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1)
  [ -n "$dict" ] && opts+=(-dict="$dict")
  local inputs=()
  [ -d "$corpus" ] && inputs+=("$corpus")
  [ -d "$here/regress/$h" ] && [ -n "$(ls -A "$here/regress/$h")" ] && inputs+=("$here/regress/$h")
  local t0=$SECONDS
  # 1. every seed and regression input once
  if [ ${#inputs[@]} -gt 0 ] &&
     ! ASAN_OPTIONS=$asan "$bin" "${opts[@]}" -runs=0 "${inputs[@]}" > "$work/$h.replay.log" 2>&1; then
    echo "run_fuzz: $h: FAILED on its corpus or regression inputs:"
    grep -E "ERROR|runtime error|fuzz_|SUMMARY|Test unit" "$work/$h.replay.log" | head -20
    failed+=("$h")
    return
  fi
  # 2. a short time-bounded run from a scratch copy of the corpus (new inputs stay out of the source tree)
  mkdir -p "$work/corpus-$h"
  [ ${#inputs[@]} -gt 0 ] && cp -r "${inputs[@]/%//.}" "$work/corpus-$h/" 2>/dev/null
  if ! ASAN_OPTIONS=$asan "$bin" "${opts[@]}" -max_total_time="$secs" "$work/corpus-$h" > "$work/$h.log" 2>&1; then
    echo "run_fuzz: $h: FAILED after fuzzing:"
    grep -E "ERROR|runtime error|fuzz_|SUMMARY|Test unit|^0x|Base64" "$work/$h.log" | head -20
    failed+=("$h")
    return
  fi
  local runs
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/$h.log" | tail -1)
  total_runs=$((total_runs + ${runs:-0}))
  printf 'run_fuzz: %-22s ok: %7s executions in %3d s (corpus + %d regression inputs replayed)\n' "$h" "${runs:-?}" \
    $((SECONDS - t0)) "$(ls "$here/regress/$h" 2>/dev/null | wc -l)"
}

for h in "${harnesses[@]}"; do
  leaks=1
  [ "$h" = fuzz_job_config ] && leaks=0 # the option parser keeps its strings for the process's life (opts.h)
  dict=""
  [ -f "$here/$h.dict" ] && dict="$here/$h.dict"
  run_one "$h" "$build/fuzz/$h" "$here/corpus/$h" "$dict" "$leaks"
done
if [ -x "$build/tests/fuzz_tokenizer" ]; then
  run_one fuzz_tokenizer "$build/tests/fuzz_tokenizer" "$here/corpus/fuzz_tokenizer" "" 1
fi

if [ ${#failed[@]} -gt 0 ]; then
  echo "run_fuzz: FAILED: ${failed[*]} (inputs in $art; copy each into tests/fuzz/regress/<harness>/ when fixed)"
  exit 1
fi
echo "run_fuzz: all harnesses clean ($total_runs executions, $secs s each)"
