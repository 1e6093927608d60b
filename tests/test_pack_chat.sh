#!/usr/bin/env bash
# pack with the model's own chat template, tokenized as TRL 1.x does (issue 18): for the real Llama-3 and Qwen3
# tokenizers of tests/data/tokenizers and each layout of tests/data/pack_chat/ (conversational pairs with explicit
# and implicit prompts, UltraFeedback's text prompt beside message lists, a text pair with a special token written
# in it, unpaired KTO, sft messages and prompt/completion), the packed ids (read with h5py, no prefopt code) equal
# tests/data/pack_chat/reference.json, computed by python3-jinja2 + Hugging Face tokenizers (npm) with TRL's
# splitting (tests/tools/pack_chat_reference.{py,js}). Also: the summary names the template and counts the
# prompt/completion boundary mismatches (as many as TRL would warn about); a tokenizer without a template says ChatML is the fallback;
# --chat-template overrides; a broken template fails with one line naming it and leaves no output.
set -u
source "$(dirname "$0")/lib.sh"
$PY -c 'import h5py' 2>/dev/null || { echo "skip: /usr/bin/python3 has no h5py"; exit 77; }
DATA="$PREFOPT_SOURCE_DIR/tests/data"
make_workdir W /tmp/prefopt_test_pack_chat.XXXXXX
for t in llama3 qwen3 llama2; do
  mkdir -p $t && gzip -dc "$DATA/tokenizers/$t/tokenizer.json.gz" > $t/tokenizer.json && cp "$DATA/tokenizers/$t/tokenizer_config.json" $t/
done
for t in llama3 qwen3 llama2; do
  kinds="pairs unpaired sft text_pairs"
  [ $t = llama2 ] && kinds=text_pairs # no chat template: the text layout only
  for k in $kinds; do
    if "$PREFOPT" pack --input "$DATA/pack_chat/$k.jsonl" --output $t-$k.h5 --tokenizer $t > $t-$k.log 2>&1; then
      ok "pack $t $k"
    else
      bad "pack $t $k"; cat $t-$k.log
    fi
  done
  [ $t = llama2 ] && continue
  grep -q "chat template: .*$t/tokenizer_config.json chat_template" $t-pairs.log && ok "$t: the summary names the template" ||
    { bad "$t: summary"; cat $t-pairs.log; }
done
$PY - "$DATA/pack_chat/reference.json" <<'PYEOF' || fail=1
import h5py, json, re, sys
ref = json.load(open(sys.argv[1]))["tokenizers"]
errs = 0
for tok, kinds in ref.items():
    mism = 0
    for kind, rows in kinds.items():
        if kind in ("prompt_mismatches", "sft_aol"):  # sft_aol: checked below
            continue
        with h5py.File(f"{tok}-{kind}.h5", "r") as f:
            fields = {"pairs": ["prompt", "chosen", "rejected"], "text_pairs": ["prompt", "chosen", "rejected"],
                      "unpaired": ["prompt", "completion"], "sft": ["prompt", "completion"]}[kind]
            n = int(f.attrs["num_examples"])
            if n != len(rows):
                print(f"FAIL: {tok} {kind}: {n} examples packed, {len(rows)} in the reference"); errs += 1; continue
            for i, r in enumerate(rows):
                got = []
                for name in fields:
                    o = f[name + "/offsets"]
                    got.append(f[name + "/tokens"][o[i]:o[i + 1]].tolist())
                if got != r["fields"]:
                    errs += 1
                    print(f"FAIL: {tok} {kind} example {i}:\n  prefopt   {got}\n  reference {r['fields']}")
                if "label" in r and int(f["label"][i]) != r["label"]:
                    errs += 1
                    print(f"FAIL: {tok} {kind} example {i}: label {int(f['label'][i])}, reference {r['label']}")
        m = re.search(r"warning: in (\d+) examples", open(f"{tok}-{kind}.log").read())
        mism += int(m.group(1)) if m else 0
    if mism != kinds["prompt_mismatches"]:
        errs += 1
        print(f"FAIL: {tok}: the summaries count {mism} prompt/completion mismatches, the reference {kinds['prompt_mismatches']}")
if errs:
    sys.exit(1)
print("ok: every packed id equals the python3-jinja2 + tokenizers reference (TRL 1.x splitting)")
PYEOF
# --assistant-only-loss (TRL's assistant_only_loss): with a template that has {% generation %} blocks
# (chatml_generation.jinja), every assistant turn of a multi-turn conversation is trained: completion/mask equals the
# mask transformers' return_assistant_tokens_mask gives (reference.json kind sft_aol, offsets from npm tokenizers), for
# the byte-level (Llama-3, Qwen3) and the SentencePiece (Llama-2) tokenizer; prompt/completion lines train their whole
# completion
for t in llama3 qwen3 llama2; do
  "$PREFOPT" pack --input "$DATA/pack_chat/sft.jsonl" --output $t-aol.h5 --tokenizer $t \
    --chat-template "$DATA/chat_templates/chatml_generation.jinja" --assistant-only-loss > $t-aol.log 2>&1 ||
    { bad "pack --assistant-only-loss $t"; cat $t-aol.log; }
done
$PY - "$DATA/pack_chat/reference.json" <<'PYEOF' || fail=1
import h5py, json, sys
ref = json.load(open(sys.argv[1]))["tokenizers"]
errs = 0
for tok in ("llama3", "qwen3", "llama2"):
    with h5py.File(f"{tok}-aol.h5") as f:
        rows = ref[tok]["sft_aol"]
        assert int(f.attrs["num_examples"]) == len(rows)
        o = f["completion/offsets"]
        for i, r in enumerate(rows):
            got = [f[n + "/tokens"][f[n + "/offsets"][i]:f[n + "/offsets"][i + 1]].tolist() for n in ("prompt", "completion")]
            mask = f["completion/mask"][o[i]:o[i + 1]].tolist()
            if got != r["fields"] or mask != r["mask"]:
                errs += 1
                print(f"FAIL: {tok} assistant-only example {i}:\n  prefopt   {got} {mask}\n  reference {r['fields']} {r['mask']}")
        # the multi-turn example trains two separate answers: 0 -> 1 -> 0 -> 1 (-> 0 where "\n" is a token apart)
        m = f["completion/mask"][o[1]:o[2]].tolist()
        runs = [m[0]] + [b for a, b in zip(m, m[1:]) if a != b]
        if runs[:4] != [0, 1, 0, 1] or len(runs) > 5:
            errs += 1
            print(f"FAIL: {tok}: the multi-turn mask runs are {runs}")
if errs:
    sys.exit(1)
print("ok: --assistant-only-loss masks equal transformers' assistant masks (3 tokenizers)")
PYEOF
"$PREFOPT" inspect --file qwen3-aol.h5 | grep -q "loss mask: completion/mask" && ok "inspect shows the loss mask" || bad "inspect mask"
# a template without {% generation %} (Qwen3's own): a single-turn conversation keeps the final turn as the
# completion (prompt = the rest with the generation prompt); an earlier assistant turn is refused by line
head -1 "$DATA/pack_chat/sft.jsonl" > one.jsonl
"$PREFOPT" pack --input one.jsonl --output one.h5 --tokenizer qwen3 --assistant-only-loss > one.log 2>&1 || { bad "assistant-only"; cat one.log; }
$PY - <<'PYEOF' || fail=1
import h5py
def ex(f, field, i):
    o = f[field + "/offsets"]; return f[field + "/tokens"][o[i]:o[i + 1]].tolist()
with h5py.File("one.h5") as a, h5py.File("qwen3-sft.h5") as b:
    p, c, whole = ex(a, "prompt", 0), ex(a, "completion", 0), ex(b, "completion", 0)
    assert ex(b, "prompt", 0) == [] and p and c, "all-token packing has an empty prompt"
    assert p[:-3] == whole[:len(p) - 3] and c[-2:] == whole[-2:], (p, c, whole)
    assert a["completion/mask"][:].tolist() == [1] * len(c), "the final-turn completion is trained whole"
print("ok: --assistant-only-loss without generation blocks splits off the final assistant turn")
PYEOF
if "$PREFOPT" pack --input "$DATA/pack_chat/sft.jsonl" --output ao.h5 --tokenizer qwen3 --assistant-only-loss > ao.log 2>&1; then
  bad "--assistant-only-loss accepted an earlier assistant turn without generation blocks"
else
  grep -q "sft.jsonl:2: field 'messages': message 2 is an earlier assistant turn: --assistant-only-loss needs a chat template with {% generation %} blocks" ao.log && [ ! -e ao.h5 ] &&
    ok "--assistant-only-loss without generation blocks refuses multi-turn by line" || { bad "assistant-only message"; cat ao.log; }
fi
# a tokenizer without a chat template: ChatML, said so
"$PREFOPT" pack --input "$DATA/pack_chat/sft.jsonl" --output l2.h5 --tokenizer llama2 > l2.log 2>&1 &&
  grep -q "chat template: ChatML fallback" l2.log && ok "no template: ChatML fallback announced" || { bad "fallback"; cat l2.log; }
# --chat-template overrides the tokenizer's own (the ChatML file of tests/data/chat_templates)
"$PREFOPT" pack --input "$DATA/pack_chat/sft.jsonl" --output q-chatml.h5 --tokenizer qwen3 \
  --chat-template "$DATA/chat_templates/chatml.json" > q-chatml.log 2>&1 &&
  grep -q "chat template: .*chatml.json chat_template" q-chatml.log && ok "--chat-template FILE" || { bad "--chat-template"; cat q-chatml.log; }
$PY - <<'PYEOF' || fail=1
import h5py
with h5py.File("q-chatml.h5") as a, h5py.File("qwen3-sft.h5") as b:
    pa, pb = a["completion/tokens"][:].tolist(), b["completion/tokens"][:].tolist()
    assert pa != pb, "the override changed nothing"
    # ChatML: no <think> block in the completion; Qwen3's own template adds one (151667)
    assert 151667 not in pa and 151667 in pb, "override: unexpected tokens"
print("ok: the override renders differently (no Qwen3 think block)")
PYEOF
# a broken template: one line naming the file and position, no output file
printf '{%% for m in messages %%}\n{{ m.content | nosuch }}{%% endfor %%}' > broken.jinja
if "$PREFOPT" pack --input "$DATA/pack_chat/sft.jsonl" --output broken.h5 --tokenizer qwen3 --chat-template broken.jinja > broken.log 2>&1; then
  bad "a broken template was accepted"
else
  [ "$(grep -c . broken.log)" = 1 ] && grep -q "broken.jinja: line 2:16: unsupported filter 'nosuch'" broken.log && [ ! -e broken.h5 ] &&
    ok "broken template: one line with file:line:col" || { bad "broken template message"; cat broken.log; }
fi
finish test_pack_chat
