#!/usr/bin/env python3
"""Step 1 of the reference for tests/test_pack_chat.sh (not run in CI; CI compares prefopt with the stored
tests/data/pack_chat/reference.json): for every example of tests/data/pack_chat/*.jsonl and every tokenizer
directory given, the texts TRL 1.x tokenizes, written from TRL's definitions: conversational fields rendered with
the tokenizer's chat template by python3-jinja2 set up as transformers sets it up (render_chat_template.py), the
prompt with add_generation_prompt=True, each completion as part of render(prompt + completion); an absent prompt,
or a text prompt beside message lists (UltraFeedback), replaced by the leading messages chosen and rejected share
(TRL's extract_prompt); sft "messages" one completion of the whole conversation (TRL's default loss on
every token). Standard (text) fields as they are, the
completion followed by the EOS token. Step 2, tests/tools/pack_chat_reference.js, tokenizes them.
With --aol TEMPLATE (a Jinja file with {% generation %} blocks), the kind "sft_aol" of every tokenizer: sft.jsonl
as TRL's assistant_only_loss packs it with that template - "messages" rendered whole with the character ranges of
the generation blocks (transformers' return_assistant_tokens_mask marks the tokens holding them), prompt/completion
lines as above with every completion token trained.
usage: pack_chat_reference.py [--aol TEMPLATE] DATA_DIR TOKENIZER_DIR... > texts.json"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import render_chat_template as R  # noqa: E402


def conv(x):
    return isinstance(x, list) and x and isinstance(x[0], dict)


def extract_prompt(chosen, rejected):
    idx = 0
    for idx in range(min(len(chosen), len(rejected))):
        if chosen[idx] != rejected[idx]:
            break
    return chosen[:idx], chosen[idx:], rejected[idx:]


def aol_rows(env, template_file, data):
    """sft.jsonl under assistant_only_loss with the template of template_file (no special-token variables)"""
    with open(template_file, encoding="utf-8") as f:
        tmpl = env.from_string(f.read())
    rows = []
    with open(os.path.join(data, "sft.jsonl"), encoding="utf-8") as f:
        for line in f:
            ex = json.loads(line)
            if "messages" in ex:
                blocks, spans = [], []
                with env.generation_spans(blocks, spans):
                    for block in tmpl.generate(messages=ex["messages"], add_generation_prompt=False, tools=None,
                                               documents=None):
                        blocks.append(block)
                rows.append({"prompt": "", "masked": "".join(blocks), "spans": spans})
            else:
                p, c = ex["prompt"], ex["completion"]
                rows.append({"prompt": tmpl.render(messages=p, add_generation_prompt=True),
                             "full": [tmpl.render(messages=p + c, add_generation_prompt=False)]})
    return rows


def main():
    args = sys.argv[1:]
    aol = None
    if args[:1] == ["--aol"]:
        aol, args = args[1], args[2:]
    data, tokdirs = args[0], args[1:]
    env = R.make_env()
    out = {}
    for tokdir in tokdirs:
        with open(os.path.join(tokdir, "tokenizer_config.json"), encoding="utf-8") as f:
            has_template = "chat_template" in json.load(f)
        if has_template:
            src, tokens = R.template_of({"file": os.path.join(tokdir, "tokenizer_config.json")})
            tmpl = env.from_string(src)
        else:  # text data only (tokenizer_config.json's special tokens)
            with open(os.path.join(tokdir, "tokenizer_config.json"), encoding="utf-8") as f:
                cfg = json.load(f)
            tokens = {k: R.token_text(cfg[k]) for k in R.SPECIAL if R.token_text(cfg.get(k)) is not None}

        def render(msgs, agp):
            return tmpl.render(messages=msgs, add_generation_prompt=agp, tools=None, documents=None, **tokens)

        eos = tokens["eos_token"]
        per = {}
        for kind in ("pairs", "unpaired", "sft", "text_pairs") if has_template else ("text_pairs",):
            rows = []
            with open(os.path.join(data, kind + ".jsonl"), encoding="utf-8") as f:
                for line in f:
                    ex = json.loads(line)
                    if kind in ("pairs", "text_pairs"):
                        p, comps = ex.get("prompt"), [ex["chosen"], ex["rejected"]]
                        if conv(comps[0]) and not conv(p):
                            p, c1, c2 = extract_prompt(*comps)
                            comps = [c1, c2]
                    elif "messages" in ex:  # TRL SFT language modelling: the whole conversation, every token
                        rows.append({"prompt": "", "full": [render(ex["messages"], False)]})
                        continue
                    else:
                        p, comps = ex["prompt"], [ex["completion"]]
                    if conv(p):
                        row = {"prompt": render(p, True), "full": [render(p + c, False) for c in comps]}
                    elif isinstance(p, str) and p:  # standard: ids(prompt + completion) after the prompt's, EOS
                        row = {"prompt": p, "full": [p + c for c in comps], "eos": eos}
                    else:
                        row = {"prompt": p or "", "completions": list(comps), "eos": eos}
                    if "label" in ex:
                        row["label"] = 1 if ex["label"] else 0
                    rows.append(row)
            per[kind] = rows
        if aol:
            per["sft_aol"] = aol_rows(env, aol, data)
        out[os.path.basename(os.path.normpath(tokdir))] = per
    json.dump(out, sys.stdout, ensure_ascii=False, indent=1)


if __name__ == "__main__":
    main()
