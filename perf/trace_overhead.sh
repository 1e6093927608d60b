#!/usr/bin/env bash
# The step time of `prefopt bench` with --trace off and on, interleaved (off on, on off, off on, ...: a drifting
# machine favours neither) so both see the same machine; prints each run's median and fastest step and the median
# of the on/off ratios of each adjacent pair (fastest steps: on a shared node, other jobs inflate the median).
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
  order="off on"; [ $((i % 2)) -eq 1 ] && order="on off"
  for mode in $order; do
    extra=(); [ $mode = on ] && extra=(--trace "$d/tr$i")
    mpiexec -n "$NP" --oversubscribe --bind-to none "$P" bench --table 0 "$@" "${extra[@]}" > "$d/$mode$i.txt" 2>&1 ||
      { cat "$d/$mode$i.txt"; exit 1; }
    read -r s m < <(grep '^{' "$d/$mode$i.txt" | tail -1 |
      /usr/bin/python3 -c 'import json,sys; j=json.load(sys.stdin); print(j["step_s"], j["step_s_min"])')
    eval "t_$mode=$m"
    echo "run $i tracing $mode: step median $s s, fastest $m s"
  done
  ratios+=("$(/usr/bin/python3 -c "print($t_on / $t_off)")")
done
/usr/bin/python3 -c "
import statistics, sys; r = [float(x) for x in sys.argv[1:]]
print('tracing on / off, fastest step: median ratio %.3f (%s)' % (statistics.median(r), ', '.join('%.3f' % x for x in r)))" "${ratios[@]}"
