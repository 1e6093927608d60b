#!/usr/bin/env bash
# prefopt generate and prefopt eval on a tiny model trained for a few steps:
#  - sampled generation is identical on 1x1, a 1x2 grid and 2 data-parallel replicas (draws depend only on
#    seed, example and position); greedy generation stops at EOS; a model scored against itself has KL 0;
#  - eval's per-example log-probs agree across grids; --store-ref writes them into the dataset and a DPO run
#    on the stored log-probs has the losses of the same run with a live reference model;
#  - bad input (unreadable prompt line, missing model) gives one error line per rank and a non-zero exit;
#  - the model file's header is read by one rank and broadcast: with --dp 2, rank 1 never opens it (strace).
set -u
source "$(dirname "$0")/lib.sh"
P=${PREFOPT:?}
mpi_env_root
make_workdir d

$PY - <<'EOF'
import json, random
r = random.Random(3)
with open("pairs.jsonl", "w") as f, open("prompts.jsonl", "w") as g:
    for i in range(200):
        p = "".join(r.choice("abcd") for _ in range(3))
        f.write(json.dumps({"prompt": p + ":", "chosen": p[0] * 2, "rejected": p[1] * 2}) + "\n")
        if i < 24:
            g.write(json.dumps({"prompt": p + ":"}) + "\n")
EOF
"$P" pack --input pairs.jsonl --output pairs.h5 --quiet || fail=1
TINY="--n-layer 1 --n-embd 32 --n-head 2 --max-position 32 --seed 5"
"$P" train --data pairs.h5 --run-dir init $TINY --epochs 0 > init.log 2>&1 || { cat init.log; exit 1; }
"$P" train --data pairs.h5 --init init/model.h5 --loss dpo:1,sft:1 --lr 3e-3 --batch-size 16 --max-steps 30 \
    --run-dir pol > pol.log 2>&1 || { cat pol.log; exit 1; }

G="--model pol/model.h5 --prompts prompts.jsonl --max-new-tokens 6 --temperature 1.0 --top-k 3 --top-p 0.95 --seed 9"
"$P" generate $G --out g1.jsonl 2> g1.log
$MPI -n 2 "$P" generate $G --out g2.jsonl --grid-cols 2 2> g2.log
$MPI -n 2 "$P" generate $G --out g3.jsonl --dp 2 --batch-size 5 2> g3.log
check 'cmp -s g1.jsonl g2.jsonl' "sampled generation identical on 1x1 and 1x2: $(tail -1 g2.log)"
check 'cmp -s g1.jsonl g3.jsonl' "sampled generation identical with 2 replicas and other batches: $(tail -1 g3.log)"
check '[ $(wc -l < g1.jsonl) -eq 24 ]' "one output line per prompt"
# prompts straight from a packed dataset: the same rows as the same prompts given as JSONL
head -24 pairs.jsonl > first24.jsonl
"$P" pack --input first24.jsonl --output first24.h5 --quiet || fail=1
$MPI -n 2 "$P" generate ${G/prompts.jsonl/first24.h5} --out g4.jsonl --dp 2 2> g4.log
check 'cmp -s g1.jsonl g4.jsonl' "generation from a packed dataset equals generation from the JSONL prompts: $(tail -1 g4.log)"
"$P" generate --model pol/model.h5 --prompts prompts.jsonl --max-new-tokens 6 --out greedy.jsonl \
    --ref pol/model.h5 2> greedy.log
check "$PY - <<'EOF'
import json
rows = [json.loads(l) for l in open('greedy.jsonl')]
ok = all(len(r['ids']) <= 6 for r in rows)
# a row that stopped at EOS ends with it, and its text has no special token
ok = ok and all((r['ids'][-1] == 257) == r['stopped_at_eos'] for r in rows if r['ids'])
ok = ok and all(abs(r['logp'] - r['ref_logp']) < 1e-9 for r in rows)
ok = ok and [r['index'] for r in rows] == list(range(24))
raise SystemExit(0 if ok else 1)
EOF" "greedy rows: EOS handling, KL 0 against itself, prompt order"
check 'grep -q "KL(policy||ref) estimate 0.0000" greedy.log' "KL estimate against itself is 0: $(tail -1 greedy.log)"

# eval: per-example log-probs across grids, then --store-ref
"$P" eval --model pol/model.h5 --ref init/model.h5 --data pairs.h5 --out e1.jsonl > e1.txt 2>&1
$MPI -n 2 "$P" eval --model pol/model.h5 --ref init/model.h5 --data pairs.h5 --out e2.jsonl --grid-rows 2 > e2.txt 2>&1
check "$PY - <<'EOF'
import json
a = [json.loads(l) for l in open('e1.jsonl')]; b = [json.loads(l) for l in open('e2.jsonl')]
keys = ('chosen_logps', 'rejected_logps', 'ref_chosen_logps', 'ref_rejected_logps')
ok = len(a) == len(b) == 200 and all(abs(x[k] - y[k]) <= 1e-4 * max(1, abs(x[k])) for x, y in zip(a, b) for k in keys)
raise SystemExit(0 if ok else 1)
EOF" "eval per-example log-probs agree between 1x1 and 2x1"
check "grep -q 'eval/rewards/accuracies' e1.jsonl.summary.json" "eval summary has the reward metrics"

cp pairs.h5 pairs_ref.h5
"$P" eval --model init/model.h5 --data pairs_ref.h5 --store-ref > st.txt 2>&1
check '[ $? -eq 0 ] && h5dump -H pairs_ref.h5 | grep -q chosen_logps' "--store-ref wrote ref/chosen_logps: $(tail -1 st.txt)"
D="--init init/model.h5 --loss dpo --lr 1e-3 --lr-scheduler constant --batch-size 16 --max-steps 5"
"$P" train --data pairs.h5 $D --run-dir live > live.log 2>&1
"$P" train --data pairs_ref.h5 $D --run-dir pre > pre.log 2>&1
check 'grep -q "reference: precomputed log-probs" pre.log && grep -q "reference: model on the same ranks" live.log' \
      "the stored run uses precomputed log-probs, the other a live reference"
check "$PY - <<'EOF'
import json
l = lambda p: [json.loads(x)['loss'] for x in open(p)]
a, b = l('live/metrics.jsonl'), l('pre/metrics.jsonl')
raise SystemExit(0 if len(a) == len(b) == 5 and all(abs(x - y) <= 1e-6 * abs(x) for x, y in zip(a, b)) else 1)
EOF" "DPO on precomputed reference log-probs == DPO with a live reference"

# bad input: every rank says the same one line, non-zero exit, quickly
printf '{"prompt":"ab:"}\n{"promt":"x"}\n' > bad.jsonl
timeout 60 $MPI -n 2 "$P" generate --model pol/model.h5 --prompts bad.jsonl --out x.jsonl > /dev/null 2> bad.log; rc=$?
check '[ $rc -ne 0 ] && [ $rc -ne 124 ] && [ $(grep -c "bad.jsonl:2: expected a JSON object with \"prompt\"" bad.log) -eq 2 ] && [ ! -e x.jsonl ]' \
      "bad prompt line: both ranks name bad.jsonl:2, no output file (rc $rc)"
timeout 60 $MPI -n 2 "$P" eval --model missing.h5 --data pairs.h5 --out x.jsonl > /dev/null 2> miss.log; rc=$?
check '[ $rc -ne 0 ] && [ $rc -ne 124 ] && [ $(grep -c "missing.h5" miss.log) -eq 2 ]' "missing model: both ranks name it (rc $rc)"
timeout 60 $MPI -n 2 "$P" generate --model missing.h5 --prompts prompts.jsonl --out x.jsonl > /dev/null 2> gmiss.log; rc=$?
check '[ $rc -ne 0 ] && [ $rc -ne 124 ] && [ $(grep -c "error: missing.h5" gmiss.log) -eq 2 ] && [ ! -e x.jsonl ]' \
      "generate, missing model: both ranks name it (rc $rc)"

# issue 17: the model file's config and tokenizer are read by one rank and broadcast. With --dp 2 on 2 ranks only
# replica 0's grid (rank 0) loads the weights, so rank 1 must never open the file at all (strace of each rank).
if command -v strace > /dev/null && strace -qq -o /dev/null true 2> /dev/null; then
  for cmd in "generate --prompts prompts.jsonl --max-new-tokens 2 --out st.jsonl" "eval --data pairs.h5 --out st.jsonl"; do
    rm -f tr.0 tr.1 st.jsonl
    $MPI -n 2 sh -c 'exec strace -f -qq -o tr.$OMPI_COMM_WORLD_RANK -e trace=open,openat "$0" "$@"' \
      "$P" ${cmd%% *} --model pol/model.h5 ${cmd#* } --dp 2 > st.log 2>&1 || { cat st.log; fail=1; }
    n0=$(grep -c '"pol/model.h5"' tr.0); n1=$(grep -c '"pol/model.h5"' tr.1)
    check '[ "$n0" -ge 1 ] && [ "$n1" -eq 0 ]' "${cmd%% *} --dp 2: pol/model.h5 opened by rank 0 $n0 times, by rank 1 $n1 times (want >= 1, 0)"
  done
else
  echo "note: strace missing or ptrace not permitted here: the one-rank header read is not checked"
fi

# chat prompts (issue 18): "messages" rendered by --chat-template with the generation prompt; --stop-ids ends
# completions at extra ids; messages without a template fail with one line naming the file and line
printf '%s\n' '{"messages": [{"role": "user", "content": "abc:"}]}' '{"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "dd"}]}' > chat.jsonl
SRC=${PREFOPT_SOURCE_DIR:-$(cd "$(dirname "$0")/.." && pwd)}
# (the rendered prompts are longer than pol's 32 positions, which generate refuses since issue 22: an untrained
# model with room for them renders the same prompts)
"$P" train --data pairs.h5 --run-dir init96 --n-layer 1 --n-embd 32 --n-head 2 --max-position 96 --epochs 0 \
    > init96.log 2>&1 || { cat init96.log; fail=1; }
"$P" generate --model init96/model.h5 --prompts chat.jsonl --chat-template "$SRC/tests/data/chat_templates/chatml.json" \
    --max-new-tokens 4 --out chat.jsonl.out 2> chat.log || { cat chat.log; fail=1; }
check '$PY -c "
import json, sys
rows = [json.loads(l) for l in open(\"chat.jsonl.out\")]
want = [\"<|im_start|>user\\nabc:<|im_end|>\\n<|im_start|>assistant\\n\",
        \"<|im_start|>system\\ns<|im_end|>\\n<|im_start|>user\\ndd<|im_end|>\\n<|im_start|>assistant\\n\"]
sys.exit(0 if [r[\"prompt\"] for r in rows] == want else 1)"' "chat prompts rendered with the ChatML template: $(head -c 300 chat.jsonl.out)"
first=$($PY -c 'import json; print(json.loads(open("greedy.jsonl").readline())["ids"][0])')
"$P" generate --model pol/model.h5 --prompts prompts.jsonl --max-new-tokens 6 --stop-ids "$first" --out stop.jsonl 2> stop.log || fail=1
check '$PY -c "
import json, sys
g = [json.loads(l) for l in open(\"greedy.jsonl\")]
s = [json.loads(l) for l in open(\"stop.jsonl\")]
ok = all((a[\"ids\"][:a[\"ids\"].index($first) + 1] if $first in a[\"ids\"] else a[\"ids\"]) == b[\"ids\"] for a, b in zip(g, s))
ok = ok and all(b[\"stopped_at_eos\"] for b in s if b[\"ids\"] and b[\"ids\"][-1] == $first)
sys.exit(0 if ok and len(g) == len(s) else 1)"' "--stop-ids $first cuts every greedy completion after its first $first"
"$P" generate --model pol/model.h5 --prompts chat.jsonl --out x.jsonl > /dev/null 2> nochat.log && fail=1
check 'grep -q "chat.jsonl:1: field .messages.: chat prompts need --chat-template" nochat.log' "messages without a template: $(cat nochat.log)"
"$P" generate --model pol/model.h5 --prompts prompts.jsonl --stop-ids 1,x --out x.jsonl > /dev/null 2> badstop.log && fail=1
check 'grep -q "stop-ids .1,x.: expected comma-separated token ids" badstop.log' "bad --stop-ids: $(cat badstop.log)"

finish test_generate_eval
