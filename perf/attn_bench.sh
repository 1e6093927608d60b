#!/usr/bin/env bash
# A 2048-token row's DPO step before and after the blocked attention (issue 16): `prefopt bench` on GPT-2-small's
# shape (--n-layer L, default 2: the attention share of a 12-layer step is the same per layer, and the shared VM
# allows minutes, not hours), one packed pair [1024 | 512 | 512], fp32, 1 rank x 2 threads; the two binaries
# alternate REPS times (interleaved: the machine is shared and its load drifts), raw output under OUT.
#   perf/attn_bench.sh OLD_PREFOPT NEW_PREFOPT [REPS] [OUT] [extra bench options...]
set -u
OLD=$1 NEW=$2 REPS=${3:-3} OUT=${4:-perf/results/attn}
shift 4 2>/dev/null || shift $#
mkdir -p "$OUT"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
lscpu > "$OUT/lscpu.txt"
for r in $(seq 1 "$REPS"); do
  for which in old new; do
    bin=$OLD; [ $which = new ] && bin=$NEW
    f=$OUT/$which.$r.txt
    { date -u +%FT%TZ; uptime; } > "$f"
    /usr/bin/time -f "time: %e s wall, %M KiB max RSS" "$bin" bench --precision fp32 --n-layer "${L:-2}" \
      --max-position 2048 --pairs 1 --prompt-len 1024 --chosen-len 512 --rejected-len 512 --steps "${STEPS:-2}" \
      --warmup 1 --table 1 --json "$OUT/$which.json" "$@" >> "$f" 2>&1
    grep -E "^step|attention" "$f" | head -3 | sed "s/^/$which $r: /"
  done
done
