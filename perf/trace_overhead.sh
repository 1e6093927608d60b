#!/usr/bin/env bash
# The step time of `prefopt bench` with --trace off and on, interleaved (off, on, off, on, ...) so both see the same
# machine; prints each run's median step time and the median of the on/off ratios of adjacent runs.
#   perf/trace_overhead.sh [REPS] [NP] -- BENCH ARGS...
#   e.g. perf/trace_overhead.sh 3 2 -- --shape gpt2-small --n-layer 4 --pairs 1 --steps 5 --grid-cols 2
set -euo pipefail
REPS=${1:-3} NP=${2:-2}
shift 2 || true
[ "${1:-}" = "--" ] && shift
HERE=$(cd "$(dirname "$0")/.." && pwd)
P=${PREFOPT:-$HERE/build/prefopt}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 BLIS_NUM_THREADS=${BLIS_NUM_THREADS:-1}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
d=$(mktemp -d)
trap 'rm -rf "$d"' EXIT
ratios=()
for ((i = 0; i < REPS; i++)); do
  for mode in off on; do
    extra=(); [ $mode = on ] && extra=(--trace "$d/tr$i")
    mpiexec -n "$NP" --oversubscribe --bind-to none "$P" bench --table 0 "$@" "${extra[@]}" > "$d/$mode$i.txt" 2>&1 ||
      { cat "$d/$mode$i.txt"; exit 1; }
    s=$(grep '^{' "$d/$mode$i.txt" | tail -1 | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["step_s"])')
    eval "t_$mode=$s"
    echo "run $i tracing $mode: step $s s"
  done
  ratios+=("$(/usr/bin/python3 -c "print($t_on / $t_off)")")
done
/usr/bin/python3 -c "
import statistics, sys; r = [float(x) for x in sys.argv[1:]]
print('tracing on / off step time: median %.3f (%s)' % (statistics.median(r), ', '.join('%.3f' % x for x in r)))" "${ratios[@]}"
