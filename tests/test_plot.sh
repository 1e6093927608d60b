#!/usr/bin/env bash
# prefopt plot: PNGs from a metrics.jsonl with train and eval rows (the eval series, rewards of chosen vs rejected,
# grad_norm, nll_loss among them), several runs overlaid, plot.gp kept with every series named and rerunnable;
# clear errors for missing or corrupt files.
set -u
source "$(dirname "$0")/lib.sh"
P=${PREFOPT:?}
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
check '[ -z "$(ls -A "$d" | grep -E "plot-data|\.tmp")" ]' "no temporary file left: $(ls -A "$d")"

# the series README promises, and runs overlaid
mk() { for s in $(seq 1 20); do
  echo "{\"step\":$s,\"loss\":$(awk "BEGIN{print $1/$s}"),\"rewards/chosen\":0.$s,\"rewards/rejected\":-0.$s,\"grad_norm\":$s.5,\"nll_loss\":2.$s,\"learning_rate\":1e-4,\"logps/chosen\":-$s}"
  [ $((s % 5)) -eq 0 ] && echo "{\"step\":$s,\"eval/loss\":0.5,\"eval/logps/chosen\":-$s.5,\"eval/logps/rejected\":-$s.9,\"eval/rewards/chosen\":0.1,\"eval/nll_loss\":2.0}"
  [ $s -eq 10 ] && echo "{\"step\":$s,\"config_change\":{\"beta\":{\"from\":\"0.1\",\"to\":\"0.2\"}}}"
done; }
mkdir -p "$d/runA" "$d/runB"
mk 0.7 > "$d/runA/metrics.jsonl"; mk 0.9 > "$d/runB/metrics.jsonl"
"$P" plot "$d/runA" > out.txt 2>&1
check '[ $? -eq 0 ]' "one run: $(cat out.txt)"
for f in loss rewards_chosen_rejected logps grad_norm nll lr; do
  check '[ "$(head -c 4 "$d/runA/$f.png" | od -An -c | tr -d " ")" = "211PNG" ]' "runA/$f.png is a PNG"
done
gp="$d/runA/plot.gp"
for t in "train rewards/chosen" "train rewards/rejected" "eval rewards/chosen" "grad_norm" "train nll_loss" "eval nll_loss" \
         "eval logps/chosen" "eval logps/rejected" "eval loss"; do
  check 'grep -q "title '"'$t'"'" "$gp"' "plot.gp draws '$t'"
done
check '! grep -q "reward accuracy" "$gp" && [ ! -e "$d/runA/rewards.png" ]' "no panel for series absent from the run"
"$P" plot "$d/runA" "$d/runB" --out "$d/cmp" > out.txt 2>&1
check '[ $? -eq 0 ] && grep -q "(2 runs)" out.txt' "two runs overlaid: $(cat out.txt)"
check '[ "$(head -c 4 "$d/cmp/loss.png" | od -An -c | tr -d " ")" = "211PNG" ]' "cmp/loss.png is a PNG"
check 'grep -q "title '"'runA: train loss'"'" "$d/cmp/plot.gp" && grep -q "title '"'runB: train loss'"'" "$d/cmp/plot.gp" && grep -q "title '"'runB: eval logps/chosen'"'" "$d/cmp/plot.gp"' \
      "plot.gp names each run's series"
check '[ -z "$(ls -A "$d/cmp" | grep "\.tmp")" ]' "no temporary files in the output"
rm "$d/cmp/loss.png"
(cd "$d/cmp" && gnuplot plot.gp) > out.txt 2>&1
check '[ $? -eq 0 ] && [ "$(head -c 4 "$d/cmp/loss.png" | od -An -c | tr -d " ")" = "211PNG" ]' "the kept plot.gp reruns in its directory: $(cat out.txt)"

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
finish test_plot
