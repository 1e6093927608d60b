#!/usr/bin/env bash
# --precision and --gemm-backend from the command line and the job file: auto picks fp32 where bf16 instructions
# are missing (forced with PREFOPT_BF16_PRETEND_MISSING=1, as CI runs every other test) and bf16 where they exist;
# --precision bf16 without them stops on every rank with one line naming the missing feature; the banner names the
# precision and each GEMM backend; unknown values are usage errors.
set -u
source "$(dirname "$0")/lib.sh"
P=${PREFOPT:?}
B=(bench --shape tiny --prompt-len 8 --chosen-len 4 --rejected-len 4 --steps 1 --warmup 0 --table 0)

out=$(PREFOPT_BF16_PRETEND_MISSING=1 "$P" "${B[@]}" 2>&1); rc=$?
check '[ $rc -eq 0 ] && printf "%s" "$out" | head -1 | grep -q "precision fp32 by auto (CPU bf16: avx512_bf16 and amx_bf16 missing) | local GEMM fp32 blis"' \
      "auto without bf16: fp32 in the banner (rc $rc): $(printf '%s' "$out" | head -1)"

PREFOPT_BF16_PRETEND_MISSING=1 timeout 60 mpiexec -n 2 --oversubscribe "$P" "${B[@]}" --precision bf16 >out.txt 2>err.txt; rc=$?
n=$(grep -c "prefopt: error: --precision bf16: rank [01]'s CPU lacks bf16 instructions (avx512_bf16 and amx_bf16 missing)" err.txt)
check '[ $rc -ne 0 ] && [ $rc -ne 124 ] && [ "$n" -eq 2 ]' "--precision bf16 without bf16: non-zero exit, one line on each of 2 ranks (rc $rc, $n lines): $(cat err.txt)"

"$P" "${B[@]}" --precision fp16 >/dev/null 2>err.txt; rc=$?
check '[ $rc -eq 2 ] && grep -q "precision: .fp16. is not fp32, bf16 or auto" err.txt' "unknown precision: usage error (rc $rc)"
"$P" "${B[@]}" --gemm-backend mkl >/dev/null 2>err.txt; rc=$?
check '[ $rc -eq 2 ] && grep -q "gemm-backend: .mkl. is not blis, onednn or auto" err.txt' "unknown backend: usage error (rc $rc)"

# the job file's key, and --print-config writing it
printf '[bench]\nprecision = fp32\ngemm_backend = onednn\n' > job.ini
out=$(PREFOPT_BF16_PRETEND_MISSING=0 "$P" "${B[@]}" --config job.ini 2>&1); rc=$?
check '[ $rc -eq 0 ] && printf "%s" "$out" | head -1 | grep -q "precision fp32 (CPU bf16: .*) | local GEMM fp32 onednn$"' \
      "INI precision = fp32, gemm_backend = onednn (rc $rc): $(printf '%s' "$out" | head -1)"
check '"$P" "${B[@]}" --config job.ini --print-config | grep -q "^precision = fp32"' "--print-config writes precision"

if PREFOPT_BF16_PRETEND_MISSING=0 "$P" "${B[@]}" 2>&1 | head -1 | grep -q "precision bf16 by auto"; then
  out=$(PREFOPT_BF16_PRETEND_MISSING=0 "$P" "${B[@]}" --gemm-backend auto 2>&1); rc=$?
  check '[ $rc -eq 0 ] && printf "%s" "$out" | head -1 | grep -qE "local GEMM fp32 (blis|onednn) \(auto: blis [0-9]+, onednn [0-9]+ GFLOP/s per rank\), bf16 oneDNN matmul, attention (bf16 avx512_bf16 kernel|fp32 BLIS)"' \
        "auto backend timed and named (rc $rc): $(printf '%s' "$out" | head -1)"
  # MFU of a bf16 run is against the bf16 matmul's rate (higher than fp32 sgemm's on bf16 hardware)
  check 'printf "%s" "$out" | grep -q "MFU"' "bf16 bench reports MFU"
else
  echo "test_bf16_cli: this CPU has no bf16 instructions: the bf16 half of the test is skipped"
fi
finish test_bf16_cli
