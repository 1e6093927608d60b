#!/usr/bin/env bash
# prefopt_demo_task: determinism, held-out disjointness, the share and kind of wrong answers, and the checker
# on hand-made generation files (all correct, all wrong, malformed line, missing/duplicate index).
set -euo pipefail
B=${1:?build dir}
T=$B/prefopt_demo_task
[ -x "$T" ] || { echo "FAIL: $T not built"; exit 1; }
W=$(mktemp -d); trap 'rm -rf "$W"' EXIT
fail() { echo "FAIL: $*"; exit 1; }

for task in add reverse; do
  "$T" gen --task $task --out-dir "$W/a" --seed 7 --n-sft 3000 --n-pairs 1500 --n-eval 200 --wrong-frac 0.3 >/dev/null
  "$T" gen --task $task --out-dir "$W/b" --seed 7 --n-sft 3000 --n-pairs 1500 --n-eval 200 --wrong-frac 0.3 >/dev/null
  "$T" gen --task $task --out-dir "$W/c" --seed 8 --n-sft 3000 --n-pairs 1500 --n-eval 200 --wrong-frac 0.3 >/dev/null
  for f in sft.jsonl pairs.jsonl eval_prompts.jsonl eval_pairs.jsonl; do
    cmp -s "$W/a/$f" "$W/b/$f" || fail "$task: $f differs for the same seed"
    cmp -s "$W/a/$f" "$W/c/$f" && fail "$task: $f identical for seeds 7 and 8"
  done
  # independent verification in Python: counts, disjointness, wrong share, plausibility of wrong answers
  python3 - "$W/a" "$task" <<'PY'
import json, sys, re
d, task = sys.argv[1], sys.argv[2]
def rows(f): return [json.loads(l) for l in open(f"{d}/{f}")]
sft, pairs, ev = rows("sft.jsonl"), rows("pairs.jsonl"), rows("eval_prompts.jsonl")
assert (len(sft), len(pairs), len(ev)) == (3000, 1500, 200), (len(sft), len(pairs), len(ev))
def truth(p):
    if task == "add":
        m = re.fullmatch(r"(\d+)\+(\d+)=", p); assert m, p
        return str(int(m[1]) + int(m[2]))
    m = re.fullmatch(r"rev:([a-h]{3,6})=", p); assert m, p
    return m[1][::-1]
evp = [e["prompt"] for e in ev]
evpairs = rows("eval_pairs.jsonl")
assert [r["prompt"] for r in evpairs] == evp, "eval_pairs prompts are not the held-out prompts"
assert all(r["chosen"] == truth(r["prompt"]) != r["rejected"] for r in evpairs), "bad held-out pair"
assert len(set(evp)) == len(evp), "duplicate held-out prompts"
assert all(truth(e["prompt"]) == e["answer"] for e in ev), "wrong held-out answer"
train = {r["prompt"] for r in sft} | {r["prompt"] for r in pairs}
assert not (set(evp) & train), f"held-out prompts in training data: {sorted(set(evp) & train)[:5]}"
wrong = [r for r in sft if r["completion"] != truth(r["prompt"])]
assert len(wrong) == 900, f"{len(wrong)} wrong SFT completions, expected exactly 900 (0.3 of 3000)"
for r in pairs:
    t = truth(r["prompt"])
    assert r["chosen"] == t and r["rejected"] != t, r
for c in [r["completion"] for r in wrong] + [r["rejected"] for r in pairs]:
    assert c and (c.isdigit() if task == "add" else re.fullmatch("[a-h]+", c)), f"implausible wrong answer {c!r}"
if task == "reverse":   # same length, differing by one swap of neighbours or one letter
    for r in pairs + wrong:
        t = truth(r["prompt"]); w = r.get("rejected", r.get("completion"))
        diff = [i for i in range(len(t)) if len(w) == len(t) and w[i] != t[i]]
        assert len(w) == len(t) and (len(diff) == 1 or (len(diff) == 2 and diff[1] == diff[0] + 1 and
               w[diff[0]] == t[diff[1]] and w[diff[1]] == t[diff[0]])), r
if task == "add":
    # plausible: the digit-wise sum without carries, or the answer with one digit off by one
    def nocarry(a, b):
        r, p = 0, 1
        while a or b:
            r += (a % 10 + b % 10) % 10 * p; p *= 10; a //= 10; b //= 10
        return str(r)
    for r in pairs + wrong:
        t = truth(r["prompt"]); w = r.get("rejected", r.get("completion"))
        a, b = map(int, r["prompt"][:-1].split("+"))
        one_off = len(w) == len(t) and sum(x != y for x, y in zip(w, t)) == 1 and \
                  all(abs(int(x) - int(y)) == 1 for x, y in zip(w, t) if x != y)
        assert w == nocarry(a, b) or one_off, r
print(f"{task}: ok ({len(wrong)} wrong of {len(sft)}, {len(pairs)} pairs, {len(ev)} held out)")
PY
done

# checker on hand-made generation files
"$T" gen --task add --out-dir "$W/a" --seed 7 --n-sft 10 --n-pairs 10 --n-eval 200 >/dev/null
P=$W/a/eval_prompts.jsonl
python3 - "$P" "$W" <<'PY'
import json, sys
p, w = sys.argv[1], sys.argv[2]
ev = [json.loads(l) for l in open(p)]
def write(name, comp, extra=None):
    with open(f"{w}/{name}", "w") as f:
        for i, e in enumerate(ev):
            c = comp(i, e)
            ids = [256] + [ord(ch) for ch in e["prompt"] + c] + [257]
            f.write(json.dumps({"index": i, "prompt": e["prompt"], "completion": c, "ids": ids}) + "\n")
        if extra: f.write(extra)
write("good.jsonl", lambda i, e: e["answer"])
write("bad.jsonl", lambda i, e: str(int(e["answer"]) + 1))
write("half.jsonl", lambda i, e: e["answer"] + ("<|eos|>" if i % 4 == 0 else "") if i % 2 == 0 else e["answer"] + "0")
lines = open(f"{w}/good.jsonl").read().splitlines()
with open(f"{w}/kl.jsonl", "w") as f:   # log-ratios 0.5 for even, -0.25 for odd indices: mean 0.125
    for i, l in enumerate(lines):
        o = json.loads(l); o["logp"] = -3.0; o["ref_logp"] = -3.5 if i % 2 == 0 else -2.75
        f.write(json.dumps(o) + "\n")
open(f"{w}/klpart.jsonl", "w").write("\n".join([open(f"{w}/kl.jsonl").read().splitlines()[0]] + lines[1:]) + "\n")
open(f"{w}/malformed.jsonl", "w").write("\n".join(lines[:2] + ['{"index": 2, "completion": 5']+ lines[3:]) + "\n")
open(f"{w}/missing.jsonl", "w").write("\n".join(lines[:-1]) + "\n")
open(f"{w}/dup.jsonl", "w").write("\n".join(lines + lines[:1]) + "\n")
open(f"{w}/wrongprompt.jsonl", "w").write("\n".join([lines[1].replace('"index": 1', '"index": 0')] + lines[1:]) + "\n")
PY
out=$("$T" check --prompts "$P" --generations "$W/good.jsonl" --label sft)
echo "$out" | grep -q '"accuracy":1' || fail "all-correct file: $out"
echo "$out" | grep -q 'accuracy 1.0000 (200/200)' || fail "all-correct file: $out"
out=$("$T" check --prompts "$P" --generations "$W/bad.jsonl")
echo "$out" | grep -q '"accuracy":0,' || fail "all-wrong file: $out"
echo "$out" | grep -q '"well_formed":200' || fail "all-wrong file should be well-formed: $out"
out=$("$T" check --prompts "$P" --generations "$W/half.jsonl")
echo "$out" | grep -q '"accuracy":0.5,' || fail "half-correct file: $out"
out=$("$T" check --prompts "$P" --generations "$W/kl.jsonl")
echo "$out" | grep -q '"kl":0.125}' || fail "KL estimate: $out"
out=$("$T" check --prompts "$P" --generations "$W/good.jsonl")
echo "$out" | grep -q '"kl"' && fail "KL reported without logp fields: $out"
expect_error() {  # file, pattern
  local rc=0 err
  err=$("$T" check --prompts "$P" --generations "$W/$1" 2>&1 >/dev/null) || rc=$?
  [ $rc -ne 0 ] || fail "$1: accepted"
  echo "$err" | grep -q "$2" || fail "$1: error does not say '$2': $err"
  echo "  $1 -> $err" | head -1
}
expect_error klpart.jsonl "1 of 200 generations carry logp/ref_logp"
expect_error malformed.jsonl "malformed.jsonl:3: not a JSON object"
expect_error missing.jsonl "199 of 200\|1 of 200 prompts have no generation"
expect_error dup.jsonl "dup.jsonl:201: a second generation for index 0"
expect_error wrongprompt.jsonl "wrongprompt.jsonl:1: prompt of index 0"
rc=0; "$T" gen --out-dir "$W/x" >/dev/null 2>&1 || rc=$?; [ $rc -ne 0 ] || fail "gen without --seed accepted"
echo "demo_task: all checks passed"
