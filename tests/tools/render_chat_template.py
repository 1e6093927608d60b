#!/usr/bin/env python3
"""Reference chat-template renderer for prefopt's tests: python3-jinja2 (Debian) set up the way transformers'
apply_chat_template sets it up (transformers/utils/chat_template_utils.py, written here from its definition):

  * jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True) with the loopcontrols
    extension and a {% generation %} block extension that records where each block's output lands;
  * the filter tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False) = json.dumps(...);
  * the globals raise_exception(message) (raises TemplateError) and strftime_now(format) (datetime.now());
  * render(messages=..., tools=None, documents=None, add_generation_prompt=..., **special_tokens, **extra),
    where the special tokens are those of tokenizer_config.json (bos/eos/unk/sep/pad/cls/mask_token, strings or
    AddedToken objects, and additional_special_tokens) - transformers' special_tokens_map.

usage:
  render_chat_template.py CASES.json OUT.json        render every case (format below), write the results
  render_chat_template.py --compare CASES.json A.json B.json   compare two result files of CASES, print the
                                                              differences, exit 1 if any

CASES.json: {"templates": {name: {"file": tokenizer_config path} or {"source": text, "vars": {...}}},
             "cases": [{"t": name, "messages": [...], "agp": bool, "extra": {...}}]}
OUT.json: [{"text": str | null, "spans": [[start, end], ...] (UTF-8 byte offsets), "error": str | null}]
"""
import json
import sys
from contextlib import contextmanager
from datetime import datetime

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

SPECIAL = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


class GenerationSpans(jinja2.ext.Extension):
    """{% generation %}...{% endgeneration %}: outputs its body and records the character range it occupies in
    the text rendered so far (the blocks the template generator yielded before it), as transformers does."""

    tags = {"generation"}

    def __init__(self, environment):
        super().__init__(environment)
        environment.extend(generation_spans=self.track)
        self.blocks = None
        self.spans = None

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
        call = self.call_method("_support", [], [])
        return jinja2.nodes.CallBlock(call, [], [], body).set_lineno(lineno)

    @jinja2.pass_eval_context
    def _support(self, eval_ctx, caller):
        out = caller()
        if self.blocks is not None:
            start = len("".join(self.blocks))
            self.spans.append((start, start + len(out)))
        return out

    @contextmanager
    def track(self, blocks, spans):
        self.blocks, self.spans = blocks, spans
        try:
            yield
        finally:
            self.blocks = self.spans = None


def make_env():
    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt):
        return datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[GenerationSpans, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


def token_text(v):
    if isinstance(v, str):
        return v
    if isinstance(v, dict) and isinstance(v.get("content"), str):
        return v["content"]
    return None


def template_of(spec):
    """(source, special-token variables) of a templates entry"""
    if "file" in spec:
        with open(spec["file"], encoding="utf-8") as f:
            cfg = json.load(f)
        src = cfg["chat_template"]
        if isinstance(src, list):
            src = next(t["template"] for t in src if t["name"] == spec.get("which", "default"))
        tokens = {}
        for k in SPECIAL:
            s = token_text(cfg.get(k))
            if s is not None:
                tokens[k] = s
        add = [token_text(x) for x in cfg.get("additional_special_tokens") or []]
        add = [x for x in add if x is not None]
        if add:
            tokens["additional_special_tokens"] = add
        return src, tokens
    return spec["source"], dict(spec.get("vars", {}))


def render_case(env, compiled, tokens, case):
    blocks, spans = [], []
    kwargs = dict(tokens)
    kwargs.update(case.get("extra", {}))
    for k in ("tools", "documents"):
        kwargs.setdefault(k, None)
    with env.generation_spans(blocks, spans):
        for block in compiled.generate(messages=case["messages"], add_generation_prompt=case.get("agp", False),
                                       **kwargs):
            blocks.append(block)
    text = "".join(blocks)
    byte_spans = [[len(text[:a].encode("utf-8")), len(text[:b].encode("utf-8"))] for a, b in spans]
    text.encode("utf-8")  # a lone surrogate cannot be UTF-8: counts as an error, as in prefopt
    return {"text": text, "spans": byte_spans, "error": None}


def render_all(cases_path, out_path):
    with open(cases_path, encoding="utf-8") as f:
        spec = json.load(f)
    env = make_env()
    compiled = {}
    for name, t in spec["templates"].items():
        try:
            src, tokens = template_of(t)
            compiled[name] = (env.from_string(src), tokens, None)
        except Exception as e:  # a syntax error: every case of this template fails
            compiled[name] = (None, None, f"{type(e).__name__}: {e}")
    out = []
    for case in spec["cases"]:
        tmpl, tokens, err = compiled[case["t"]]
        if err:
            out.append({"text": None, "spans": [], "error": err})
            continue
        try:
            out.append(render_case(env, tmpl, tokens, case))
        except Exception as e:
            out.append({"text": None, "spans": [], "error": f"{type(e).__name__}: {e}"})
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False)


def compare(cases_path, a_path, b_path):
    with open(cases_path, encoding="utf-8") as f:
        cases = json.load(f)["cases"]
    with open(a_path, encoding="utf-8") as f:
        a = json.load(f)
    with open(b_path, encoding="utf-8") as f:
        b = json.load(f)
    if len(a) != len(b) or len(a) != len(cases):
        print(f"compare: {len(cases)} cases, {len(a)} and {len(b)} results")
        return 1
    bad = 0
    both_err = 0
    for i, (x, y) in enumerate(zip(a, b)):
        same = (x["error"] is None) == (y["error"] is None)
        if same and x["error"] is None:
            same = x["text"] == y["text"] and x["spans"] == y["spans"]
        if x["error"] is not None and y["error"] is not None:
            both_err += 1
        if not same:
            bad += 1
            if bad <= 15:
                c = cases[i]
                print(f"case {i} template {c['t']} agp={c.get('agp')} messages={json.dumps(c['messages'])[:200]}")
                for label, r in (("prefopt ", x), ("jinja2  ", y)):
                    print(f"  {label}: " + (f"ERROR {r['error']}" if r["error"] is not None
                                             else repr(r["text"])[:600] + f" spans={r['spans']}"))
    print(f"compare: {len(a) - bad} of {len(a)} cases identical ({both_err} fail in both), {bad} differ")
    return 1 if bad else 0


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--compare":
        sys.exit(compare(sys.argv[2], sys.argv[3], sys.argv[4]))
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    render_all(sys.argv[1], sys.argv[2])
