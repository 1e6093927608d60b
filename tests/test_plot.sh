#!/usr/bin/env bash
# prefopt plot: PNGs from a metrics.jsonl with train and eval rows; clear errors for missing or corrupt files.
set -u
P=${PREFOPT:?}
fail=0
check() { if ! eval "$1"; then echo "FAILED: $2"; fail=1; fi; }
d=$(mktemp -d)
for s in $(seq 1 30); do
  echo "{\"step\":$s,\"loss\":$(awk "BEGIN{print 0.7/$s}"),\"rewards/accuracies\":0.$((s%10)),\"rewards/margins\":$s,\"learning_rate\":1e-4,\"logps/chosen\":-$s}"
  [ $((s % 10)) -eq 0 ] && echo "{\"step\":$s,\"eval/loss\":0.5,\"eval/rewards/accuracies\":0.8}"
done > "$d/metrics.jsonl"
"$P" plot "$d" > out.txt 2>&1; rc=$?
check '[ $rc -eq 0 ]' "plot exits 0: $(cat out.txt)"
for f in loss rewards logps lr; do
  check '[ "$(head -c 4 "$d/$f.png" | od -An -c | tr -d " ")" = "211PNG" ]' "$f.png is a PNG"
done
check '[ -z "$(ls -A "$d" | grep plot-data)" ]' "no temporary data file left"

"$P" plot "$d/missing" > out.txt 2>&1; rc=$?
check '[ $rc -eq 1 ] && grep -q "metrics.jsonl: cannot open" out.txt' "missing run dir: error, exit 1"
printf '{"step":1,"loss":1}\n{"step":2,"loss\n{"step":3,"loss":1}\n' > "$d/metrics.jsonl"
"$P" plot "$d" > out.txt 2>&1; rc=$?
check '[ $rc -eq 1 ] && grep -q "metrics.jsonl:2: not a JSON object" out.txt' "corrupt line 2 named: $(cat out.txt)"
# a partial LAST line (a run killed mid-write) is tolerated
printf '{"step":1,"loss":1}\n{"step":2,"loss":0.5}\n{"step":3,"lo' > "$d/metrics.jsonl"
"$P" plot "$d" > out.txt 2>&1; rc=$?
check '[ $rc -eq 0 ]' "partial last line tolerated: $(cat out.txt)"
rm -rf "$d"
[ $fail -eq 0 ] && echo "test_plot: all checks passed"
exit $fail
