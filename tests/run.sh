#!/usr/bin/env bash
# README command 2: install what is missing, build (warnings are errors), run the whole suite through ctest,
# then rebuild with AddressSanitizer/UBSan and run the non-MPI unit tests again. Run from the repository root.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=${PREFOPT_BUILD_JOBS:-2}

bash tests/deps.sh

export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
start=$(date +%s)

cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DPREFOPT_WERROR=ON > build.configure.log 2>&1 \
  || { cat build.configure.log; exit 1; }
cmake --build build -j"$jobs"
ctest --test-dir build --output-on-failure --timeout 900 -j"${PREFOPT_TEST_JOBS:-2}"

# Sanitizers: the unit tests again, under ASan+UBSan (MPI tests are left out: Open MPI's own allocations
# would drown the report).
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DPREFOPT_WERROR=ON -DPREFOPT_SANITIZE=ON \
  > build-asan.configure.log 2>&1 || { cat build-asan.configure.log; exit 1; }
cmake --build build-asan -j"$jobs"
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --test-dir build-asan -L unit --output-on-failure --timeout 900 -j"${PREFOPT_TEST_JOBS:-2}"

# Fuzzing (issue 11): every parser's libFuzzer harness over its seeds and saved crash inputs, then briefly
# (PREFOPT_FUZZ_SECONDS per harness, default 18); tests/fuzz/run_fuzz.sh. Needs clang's libFuzzer runtime.
if command -v clang > /dev/null && compgen -G "/usr/lib/llvm-*/lib/clang/*/lib/linux/libclang_rt.fuzzer-x86_64.a" > /dev/null; then
  CC=clang cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPREFOPT_WERROR=ON -DPREFOPT_FUZZ=ON \
    > build-fuzz.configure.log 2>&1 || { cat build-fuzz.configure.log; exit 1; }
  cmake --build build-fuzz -j"$jobs" --target prefopt_fuzz
  bash tests/fuzz/run_fuzz.sh build-fuzz "${PREFOPT_FUZZ_SECONDS:-18}"
else
  echo "tests/run.sh: fuzz step SKIPPED: clang or its libFuzzer runtime (libclang-rt-14-dev) is not installed"
fi

echo "tests/run.sh: all suites passed in $(( $(date +%s) - start )) s"
