#!/usr/bin/env bash
# A chat model's day end to end (issue 18), on a tiny random Llama with the real Llama-3 vocabulary (128256 rows,
# tests/data/tokenizers/llama3) and Llama-3.1's chat template: import (tokenizer_config.json, generation_config.json
# with an eos list) -> pack conversational SFT and preference data with the model's template -> SFT -> DPO ->
# generate from chat "messages" with the template the model file carries, stopping at every eos id of
# generation_config.json -> export: the directory has tokenizer.json, tokenizer_config.json (template intact),
# special_tokens_map.json and generation_config.json.
set -u
source "$(dirname "$0")/lib.sh"
requires_python_h5py
SRC=$PREFOPT_SOURCE_DIR
make_workdir W /tmp/prefopt_chat_day.XXXXXX
run() { "$@" > step.log 2>&1 || { bad "$*"; cat step.log; exit 1; }; }

$PY "$SRC/tests/tools/make_tiny_hf.py" hf --arch llama --layers 1 --tie --vocab 128256 --positions 256 --seed 3 ||
  { bad "generator"; exit 1; }
gzip -dc "$SRC/tests/data/tokenizers/llama3/tokenizer.json.gz" > hf/tokenizer.json
cp "$SRC/tests/data/chat_templates/llama3_1_instruct.json" hf/tokenizer_config.json
printf '{"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}\n' > hf/special_tokens_map.json
printf '{"bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009]}\n' > hf/generation_config.json
run "$PREFOPT" import --hf hf --out model.h5
$PY - <<'PYEOF'
import json
u = lambda x: {"role": "user", "content": x}
a = lambda x: {"role": "assistant", "content": x}
with open("sft.jsonl", "w") as f, open("pairs.jsonl", "w") as g:
    for i in range(8):
        q = f"What is {i} plus {i}?"
        f.write(json.dumps({"messages": [u(q), a(f"It is {2 * i}.")]}) + "\n")
        g.write(json.dumps({"prompt": [u(q)], "chosen": [a(f"{2 * i}")], "rejected": [a(f"{2 * i + 1}")]}) + "\n")
with open("chat.jsonl", "w") as f:
    f.write(json.dumps({"messages": [u("Hi!")]}) + "\n")
PYEOF
run "$PREFOPT" pack --input sft.jsonl --output sft.h5 --tokenizer hf
grep -q "chat template: hf/tokenizer_config.json chat_template" step.log && ok "pack used the model's template" || { bad "pack template"; cat step.log; }
run "$PREFOPT" pack --input pairs.jsonl --output pairs.h5 --tokenizer hf
$PY - <<'PYEOF' || fail=1
import h5py
with h5py.File("pairs.h5") as f:
    o = f["prompt/offsets"]; p = f["prompt/tokens"][o[0]:o[1]].tolist()
    assert p[0] == 128000 and p[-4:] == [128006, 78191, 128007, 271], p  # <|begin_of_text|> ... assistant header
    o = f["chosen/offsets"]; c = f["chosen/tokens"][o[0]:o[1]].tolist()
    assert c[-1] == 128009, c  # the turn ends with <|eot_id|>, no extra EOS
print("ok: packed prompt and completion carry Llama-3's special tokens")
PYEOF
run "$PREFOPT" train --init model.h5 --data sft.h5 --loss sft --lr 1e-3 --batch-size 4 --max-steps 2 --run-dir sft
run "$PREFOPT" train --init sft/model.h5 --data pairs.h5 --loss dpo --beta 0.1 --lr 1e-3 --batch-size 4 --max-steps 2 --run-dir dpo
ok "SFT and DPO ran on the 128256-row model"
run "$PREFOPT" generate --model dpo/model.h5 --prompts chat.jsonl --max-new-tokens 4 --out gen.jsonl
$PY - <<'PYEOF' || fail=1
import json
r = json.loads(open("gen.jsonl").readline())
want = "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
assert r["prompt"] == want, repr(r["prompt"])
print("ok: generate rendered the chat prompt with the template carried in the model file")
open("first_id", "w").write(str(r["ids"][0]))
PYEOF
# every eos id of generation_config.json ends a completion: make the greedy first token one of them
first=$(cat first_id)
mkdir -p hf2 && cp hf/* hf2/ && printf '{"eos_token_id": [128001, %s]}\n' "$first" > hf2/generation_config.json
run "$PREFOPT" import --hf hf2 --out model2.h5
run "$PREFOPT" generate --model model2.h5 --prompts chat.jsonl --max-new-tokens 4 --out gen2.jsonl
run "$PREFOPT" generate --model model.h5 --prompts chat.jsonl --max-new-tokens 4 --out gen1.jsonl
$PY - "$first" <<'PYEOF' || fail=1
import json, sys
first = int(sys.argv[1])
a = json.loads(open("gen1.jsonl").readline()); b = json.loads(open("gen2.jsonl").readline())
assert a["ids"][0] == first and b["ids"] == [first] and b["stopped_at_eos"], (a, b)
print("ok: generation stops at an eos id listed in generation_config.json")
PYEOF
run "$PREFOPT" export --model dpo/model.h5 --hf out/new/dir
for f in tokenizer.json tokenizer_config.json special_tokens_map.json generation_config.json; do
  cmp -s hf/$f out/new/dir/$f || bad "export: $f differs from the imported one"
done
[ -f out/new/dir/model.safetensors ] && [ -f out/new/dir/config.json ] && ok "export: weights, config, tokenizer files and the chat template" || bad "export files"
finish test_chat_day
