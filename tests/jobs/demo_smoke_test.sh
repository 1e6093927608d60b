#!/usr/bin/env bash
# jobs/demo/demo.sh end to end with a handful of steps (plumbing only: every stage runs, the table is printed with
# numbers in [0, 1]); the full demo (600 SFT + 200 DPO steps, ~8 min) is not a ctest. Skips while a
# subcommand it needs is missing.
set -euo pipefail
B=$(cd "${1:?build dir}" && pwd)
SRC=${PREFOPT_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
for sub in pack train generate; do
  "$B/prefopt" $sub --help > /dev/null 2>&1 || { echo "SKIP: prefopt $sub is not built yet"; exit 77; }
done
[ -x "$B/prefopt_demo_task" ] || { echo "FAIL: prefopt_demo_task not built"; exit 1; }
W=$(mktemp -d); trap 'rm -rf "$W"' EXIT
DEMO_SKIP_DEPS=1 DEMO_SKIP_BUILD=1 DEMO_BUILD_DIR=$B DEMO_RUN_DIR=$W/demo DEMO_NP=1 DEMO_SFT_STEPS=4 DEMO_DPO_STEPS=2 \
  bash "$SRC/jobs/demo/demo.sh" > "$W/log" 2>&1 || { tail -20 "$W/log"; echo "FAIL: jobs/demo/demo.sh exited non-zero"; exit 1; }
tail -9 "$W/log"
python3 - "$W/demo" <<'PY'
import json, sys
r = sys.argv[1]
for g in ("sft", "dpo", "sft-sampled", "dpo-sampled"):
    c = json.load(open(f"{r}/check-{g}.json"))
    assert c["n"] == 500 and 0 <= c["accuracy"] <= 1, c
assert "kl" in json.load(open(f"{r}/check-dpo-sampled.json")), "no KL estimate"
t = open(f"{r}/table.txt").read()
assert "held-out accuracy, sampled T=1" in t and "KL(DPO || SFT reference)" in t, t
PY
echo "demo smoke: ok"
