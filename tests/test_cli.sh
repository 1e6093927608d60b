#!/usr/bin/env bash
# The CLI surface: help for every subcommand (each option with its default), usage errors, the banner naming
# BLIS as the provider of sgemm_ (ScaLAPACK's calls included), and grid errors on every rank.
set -u
source "$(dirname "$0")/lib.sh"
P=${PREFOPT:?}

out=$("$P" --help); rc=$?
check '[ $rc -eq 0 ]' "prefopt --help exits 0"
subs=$(printf '%s\n' "$out" | awk '/^subcommands:/{f=1;next} f&&/^  [a-z]/{print $1} /^$/{if(f)f=0}')
check '[ -n "$subs" ]' "prefopt --help lists subcommands"
for s in $subs; do
  h=$("$P" "$s" --help 2>&1); rc=$?
  check '[ $rc -eq 0 ]' "prefopt $s --help exits 0"
  # every option line shows its default in brackets
  bad=$(printf '%s\n' "$h" | grep -E '^  --' | grep -vE '\[[^]]*\]$' | grep -vE '^  --(config|print-config|help)' || true)
  check '[ -z "$bad" ]' "prefopt $s --help: options without a default: $bad"
done

"$P" nosuch >/dev/null 2>err.txt; rc=$?
check '[ $rc -eq 2 ] && grep -q "unknown subcommand" err.txt && [ $(wc -l < err.txt) -eq 1 ]' "unknown subcommand: exit 2, one line"
"$P" inspect --grid-rowz 2 >/dev/null 2>err.txt; rc=$?
check '[ $rc -eq 2 ] && grep -q "unknown option" err.txt' "unknown option: exit 2"

banner=$("$P" inspect)
check 'printf "%s" "$banner" | grep -q "sgemm_ from .*libblis"' "banner names libblis as sgemm_ provider: $banner"
# A binary built for instructions the CPU lacks stops before main with one line (src/base/isa_check.c), not SIGILL;
# the test pretends SSE4.2 is missing, which only a build for a baseline x86-64 does not use.
PREFOPT_ISA_PRETEND_MISSING=sse4.2 "$P" --help >/dev/null 2>err.txt; rc=$?
if printf "%s" "$banner" | grep -q "baseline x86-64)"; then
  check '[ $rc -eq 0 ]' "a baseline build does not need SSE4.2 (rc $rc)"
else
  check '[ $rc -eq 1 ] && [ $(wc -l < err.txt) -eq 1 ] && grep -q "built with -march=.* but this CPU lacks sse4.2; rebuild" err.txt' \
        "ISA check: exit 1 and one line (rc $rc: $(cat err.txt))"
fi
# ScaLAPACK's own sgemm_ references must bind to BLIS too, whatever the libblas.so.3 alternative says.
LD_BIND_NOW=1 LD_DEBUG=bindings "$P" inspect 2>bind.txt >/dev/null
check 'grep -E "binding file [^ ]*libscalapack[^ ]* .* to [^ ]*libblis[^ ]* .*symbol .sgemm_'\''" bind.txt >/dev/null' \
      "libscalapack's sgemm_ binds to libblis"
check '! grep -E "binding file .*libscalapack.* to .*libblas\.so.*sgemm_" bind.txt' "no sgemm_ binding to libblas.so.3"

# A grid that does not match the job size: every rank prints the same single error line, non-zero exit.
if command -v mpiexec >/dev/null; then
  timeout 60 mpiexec -n 3 --oversubscribe "$P" inspect --grid-rows 2 --grid-cols 1 >/dev/null 2>err.txt; rc=$?
  n=$(grep -c "prefopt: error: grid 2x1 with 1 data-parallel replicas needs 2 ranks, but the job has 3" err.txt)
  check '[ $rc -ne 0 ] && [ $rc -ne 124 ] && [ "$n" -eq 3 ]' "grid mismatch: 3 ranks print the error (got $n, rc $rc)"
fi

# INI job file: --print-config shows the effective values, command line wins.
printf '[inspect]\ngrid_rows = 2\ndp = 3\n' > job.ini
cfg=$("$P" inspect --config job.ini --dp 1 --print-config)
check 'printf "%s" "$cfg" | grep -qx "grid-rows = 2" && printf "%s" "$cfg" | grep -qx "dp = 1"' "config file + command line: $cfg"

finish test_cli
