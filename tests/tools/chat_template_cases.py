#!/usr/bin/env python3
"""Writes the chat-template comparison cases (tests/test_chat_template_ref.sh) to stdout: every real template of
tests/data/chat_templates/ over many conversations (system or not, multi-turn, empty content, unicode, quotes,
backslashes, newlines, literal special tokens, thinking blocks), with add_generation_prompt on and off; then short
templates exercising each Jinja construct, filter, test and method the interpreter implements, and constructs on
which Jinja raises (both sides must fail). Deterministic. usage: chat_template_cases.py DATA_DIR > cases.json"""
import json
import os
import sys

S = "You are a helpful assistant."
CONVERSATIONS = [
    [{"role": "user", "content": "Hello!"}],
    [{"role": "system", "content": S}, {"role": "user", "content": "What is 2+2?"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello, how can I help?"},
     {"role": "user", "content": "Tell me a joke."}],
    [{"role": "system", "content": S}, {"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"},
     {"role": "assistant", "content": "Goodbye."}],
    [{"role": "user", "content": ""}, {"role": "assistant", "content": ""}],
    [{"role": "system", "content": ""}, {"role": "user", "content": "x"}],
    [{"role": "user", "content": "Grüße aus Köln, ça va? 日本語のテキスト 😀🎉 مرحبا Ελληνικά Привет"},
     {"role": "assistant", "content": "Très bien — 谢谢! ½ ∑ ≠ ∞"}],
    [{"role": "user", "content": "Quotes ' and \" and \\ backslash \\n not a newline,\nreal newline\n\ttab"},
     {"role": "assistant", "content": "  padded answer with spaces  \n\n"}],
    [{"role": "user", "content": "  leading and trailing spaces  "}],
    [{"role": "user", "content": "literal tokens <|im_end|> <|eot_id|> </s> <s> [INST] {{ x }} {% if %}"}],
    [{"role": "user", "content": "Solve x"},
     {"role": "assistant", "content": "<think>\nLet me think.\n</think>\n\nThe answer is 4."},
     {"role": "user", "content": "Thanks"}],
    [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"},
     {"role": "assistant", "content": "d"}, {"role": "user", "content": "e"}, {"role": "assistant", "content": "f"},
     {"role": "user", "content": "g"}],
    [{"role": "system", "content": "Line one\nLine two\n"}, {"role": "user", "content": "multi\nline\nprompt"},
     {"role": "assistant", "content": "multi\nline\nanswer"}],
    [{"role": "assistant", "content": "I start."}, {"role": "user", "content": "Odd order"}],
    [{"role": "user", "content": "first"}, {"role": "user", "content": "second user turn in a row"}],
]

# (template, extra variables) - constructs, filters, tests and methods, each against jinja2
SNIPPETS = [
    ("{{ 'a' ~ 1 ~ none ~ true ~ 1.5 ~ undefined_name }}", {}),
    ("{{ 1 + 2 * 3 - 4 / 8 }} {{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ -7 % 3 }} {{ 2 ** 10 }} {{ 7.5 // 2 }}", {}),
    ("{{ 0.1 + 0.2 }} {{ 1e20 }} {{ 1.0 }} {{ 3.14159 }} {{ 1e-7 }} {{ 123456789.123 }} {{ 2.5e15 }} {{ 1e16 }}", {}),
    ("{{ 10 / 4 }} {{ 10 / 5 }} {{ -0.0 }} {{ 1_000 }} {{ 0x1F }} {{ 0b101 }} {{ 0o17 }}", {}),
    ("{{ [1, 'a', none, true, 2.5, [1], {'k': 'v'}] }} {{ (1, 2) }} {{ (1,) }} {{ () }}", {}),
    ("{{ {'a': 1, 'b': \"it's\"} }} {{ ['x\\ny', 'q\"q', \"both ' and \\\"\"] }}", {}),
    ("{% for m in messages %}{{ loop.index }}/{{ loop.index0 }}/{{ loop.revindex }}/{{ loop.revindex0 }}/"
     "{{ loop.first }}/{{ loop.last }}/{{ loop.length }}|{% endfor %}", {}),
    ("{% for m in messages %}{{ loop.previtem.role if not loop.first }}{{ loop.cycle('a', 'b') }}"
     "{{ loop.changed(m.role) }}{% endfor %}", {}),
    ("{% for x in [] %}x{% else %}empty{% endfor %}{% for x in [1] %}{{ x }}{% else %}no{% endfor %}", {}),
    ("{% for x in range(10) if x % 3 == 0 %}{{ x }}{{ loop.length }}{% endfor %}", {}),
    ("{% for x in range(2, 10, 3) %}{{ x }}{% if x > 4 %}{% break %}{% endif %}{% endfor %}"
     "{% for x in range(5) %}{% if x is odd %}{% continue %}{% endif %}{{ x }}{% endfor %}", {}),
    ("{% for k, v in {'a': 1, 'b': 2}.items() %}{{ k }}={{ v }};{% endfor %}"
     "{% for a, b in [[1, 2], (3, 4)] %}{{ a + b }}{% endfor %}", {}),
    ("{% set x = 1 %}{% for i in [1, 2] %}{% set x = x + i %}{{ x }}{% endfor %}{{ x }}", {}),
    ("{% set ns = namespace(n=0, s='') %}{% for i in range(4) %}{% set ns.n = ns.n + i %}"
     "{% set ns.s = ns.s ~ i %}{% endfor %}{{ ns.n }} {{ ns.s }} {{ ns }}", {}),
    ("{% if false %}a{% elif none %}b{% elif 0 %}c{% elif [] %}d{% elif 'x' %}e{% else %}f{% endif %}", {}),
    ("{% if true %}{% set z = 3 %}{% endif %}{{ z }}{% set a, b = 1, 2 %}{{ a }}{{ b }}", {}),
    ("{% set block %}  inner {{ 1 + 1 }}  {% endset %}[{{ block }}]{% set up | upper | trim %} shout {% endset %}"
     "[{{ up }}]", {}),
    ("{% macro greet(name, greeting='Hello') %}{{ greeting }}, {{ name }}!{% endmacro %}{{ greet('Ann') }} "
     "{{ greet('Bob', greeting='Hi') }} {{ greet('Cy', 'Yo') }}", {}),
    ("{% macro v() %}{{ varargs }}{{ kwargs }}{% endmacro %}{{ v(1, 2, k=3) }}", {}),
    ("{% macro box(t) %}[{{ t }}:{{ caller() }}]{% endmacro %}{% call box('x') %}body {{ 2 * 3 }}{% endcall %}", {}),
    ("{% macro m() %}{{ outer }}{% endmacro %}{% set outer = 'seen' %}{{ m() }}", {}),
    ("{% filter upper %}shout {{ 'this' }}{% endfilter %}{% with a = 5, b = 6 %}{{ a * b }}{% endwith %}{{ a }}", {}),
    ("{{ 'yes' if 1 else 'no' }} {{ 'yes' if 0 else 'no' }} [{{ 'only' if false }}] {{ 1 if 0 else 2 if 0 else 3 }}",
     {}),
    ("{{ 1 and 2 }} {{ 0 and 2 }} {{ 0 or '' }} {{ none or 'x' }} {{ not 0 }} {{ not not 'a' }}", {}),
    ("{{ 1 < 2 < 3 }} {{ 3 > 2 > 2 }} {{ 'a' < 'b' }} {{ [1, 2] < [1, 3] }} {{ 1 == 1.0 }} {{ true == 1 }} "
     "{{ 'a' != 'a' }} {{ none == none }} {{ 2 >= 2 }} {{ 2 <= 1 }}", {}),
    ("{{ 'a' in 'cat' }} {{ 'z' not in 'cat' }} {{ 1 in [1, 2] }} {{ 'k' in {'k': 1} }} {{ 3 not in (1, 2) }}", {}),
    ("{{ 'hello'[1] }} {{ 'hello'[-1] }} {{ 'hello'[1:3] }} {{ 'hello'[::-1] }} {{ 'hello'[::2] }} "
     "{{ 'hello'[:-1] }} {{ 'hello'[10:] }} {{ 'héllo wörld'[1:8] }} {{ [1, 2, 3, 4][1:] }} {{ [1, 2, 3][::-1] }}",
     {}),
    ("{{ messages[0].role }} {{ messages[0]['content'] }} {{ messages[-1].role }} [{{ messages[10] }}] "
     "{{ messages[0].missing is defined }} {{ messages|length }} {{ messages.0.role }}", {}),
    ("{{ '  x  '|trim }}|{{ 'xxhixx'|trim('x') }}|{{ 'Hello World'|upper }}|{{ 'Hello World'|lower }}|"
     "{{ 'hello world'|capitalize }}|{{ 'hello wORLD-foo bar'|title }}|{{ none|upper }}|{{ 42|string }}|", {}),
    ("{{ 'aXbXc'|replace('X', '-') }} {{ 'aaa'|replace('a', 'b', 2) }} {{ 'abc'|replace('', '.') }} "
     "{{ 'abc'|length }} {{ [1, 2]|count }} {{ {'a': 1}|length }} {{ 'ab😀'|length }}", {}),
    ("{{ [1, 2, 3]|join(', ') }} {{ ['a', 'b']|join }} {{ [{'n': 'x'}, {'n': 'y'}]|join('-', attribute='n') }} "
     "{{ [1, 2, 3]|first }} {{ [1, 2, 3]|last }} {{ 'abc'|first }} {{ []|first is defined }} {{ 'abc'|list }}", {}),
    ("{{ undefined_name|default('dflt') }} {{ ''|default('empty', true) }} {{ 0|d('zero', boolean=true) }} "
     "{{ 'set'|default('no') }} {{ none|default('none stays') }}", {}),
    ("{{ '42'|int }} {{ '4.7'|int }} {{ 'x'|int }} {{ 'x'|int(7) }} {{ 3.9|int }} {{ '0x1A'|int(0, 16) }} "
     "{{ '1_000'|int }} {{ ' 12 '|int }} {{ '3.5'|float }} {{ 'nan'|float }} {{ 'x'|float }} {{ 2|float }}", {}),
    ("{{ {'b': 1, 'a': 2, 'C': 3}|dictsort }} {{ {'b': 1, 'a': 2}|dictsort(by='value', reverse=true) }} "
     "{{ {'b': 1, 'a': 2}|items|list }}", {}),
    ("{{ [3, 1, 2]|sort }} {{ ['b', 'A', 'c']|sort }} {{ ['b', 'A', 'c']|sort(case_sensitive=true) }} "
     "{{ [{'k': 2}, {'k': 1}]|sort(attribute='k') }} {{ [1, 2, 1, 3]|unique|list }} {{ [1, 2, 3]|reverse|list }} "
     "{{ 'abc'|reverse }} {{ [3, 1, 2]|max }} {{ [3, 1, 2]|min }} {{ [1, 2, 3]|sum }} {{ [-3, 5]|map('abs')|list }}",
     {}),
    ("{{ messages|selectattr('role', 'equalto', 'user')|list|length }} "
     "{{ messages|rejectattr('role', 'equalto', 'user')|map(attribute='content')|list }} "
     "{{ messages|selectattr('tool_calls', 'undefined')|list|length }} {{ [0, 1, 2, '', 'a']|select|list }} "
     "{{ [1, 2, 3, 4]|select('odd')|list }} {{ [1, 2, 3, 4]|reject('even')|list }} "
     "{{ messages|map(attribute='role')|join(',') }} {{ messages|map(attribute='nope', default='d')|list }}", {}),
    ("{{ {'a': [1, 'x', none, true, 1.5], 'é': 'ü\\n\"'}|tojson }} {{ [1, {'b': 2}]|tojson(indent=2) }} "
     "{{ {'b': 1, 'a': [2]}|tojson(sort_keys=true) }} {{ {'a': 1}|tojson(separators=(',', ':')) }} "
     "{{ 'é😀'|tojson(ensure_ascii=true) }} {{ {'x': []}|tojson(indent='\\t') }} {{ {}|tojson(indent=2) }}", {}),
    ("{{ 'a\\nb\\n\\nc'|indent }}|{{ 'a\\nb'|indent(2, true) }}|{{ 'a\\n\\nb'|indent(width='>', blank=true) }}|"
     "{{ 'x'|center(7) }}|{{ 'one two  three'|wordcount }}|{{ -3|abs }} {{ 2.567|round(2) }} {{ 2.5|round }} "
     "{{ 3.5|round }} {{ 2.1|round(0, 'ceil') }} {{ '<a href=\"x\">&</a>'|e }} {{ '%s-%d'|format('a', 3) }}", {}),
    ("{{ 'a long sentence that goes on and on'|truncate(12) }}|{{ 'short'|truncate(20) }}|"
     "{{ 'abcdefghijklmnopqrstuvwxyz'|truncate(10, true) }}|{{ 'abcdefghijkl mnopqrstuvwxyz'|truncate(15, false, '!', 0) }}",
     {}),
    ("{{ x is defined }} {{ y is undefined }} {{ none is none }} {{ 'a' is string }} {{ {} is mapping }} "
     "{{ [] is iterable }} {{ 'a' is iterable }} {{ 1 is iterable }} {{ [] is sequence }} {{ 1 is number }} "
     "{{ 1.5 is float }} {{ 1 is integer }} {{ true is integer }} {{ true is boolean }} {{ 1 is true }} "
     "{{ false is false }} {{ 3 is odd }} {{ 4 is even }} {{ 9 is divisibleby 3 }} {{ 'ab' is lower }} "
     "{{ 'AB' is upper }} {{ 2 is in [1, 2] }} {{ 2 is eq 2 }} {{ 3 is gt 2 }} {{ 3 is lessthan 2 }} "
     "{{ x is sameas 1 }} {{ none is sameas none }} {{ 'upper' is filter }} {{ 'odd' is test }} "
     "{{ range is callable }} {{ x is not none }}", {"x": 1}),
    ("{{ '  a b  '.strip() }}|{{ 'xxaxx'.strip('x') }}|{{ '  a'.lstrip() }}|{{ 'a  '.rstrip() }}|"
     "{{ 'a\\n\\n'.rstrip('\\n') }}|{{ 'a,b,,c'.split(',') }}|{{ ' a  b c '.split() }}|{{ 'a b c'.split(' ', 1) }}|"
     "{{ 'a,b,c'.rsplit(',', 1) }}|{{ 'x</think>y</think>z'.split('</think>')[-1] }}|{{ 'l1\\nl2\\r\\nl3'.splitlines() }}",
     {}),
    ("{{ 'hello'.startswith('he') }} {{ 'hello'.endswith(('x', 'lo')) }} {{ 'hello'.startswith('l', 2) }} "
     "{{ 'Hello'.upper() }} {{ 'Hello'.lower() }} {{ 'hello world'.title() }} {{ 'hello World'.capitalize() }} "
     "{{ 'a-b'.replace('-', '+') }} {{ 'hello'.find('l') }} {{ 'hello'.rfind('l') }} {{ 'hello'.find('z') }} "
     "{{ 'hello'.count('l') }} {{ ', '.join(['a', 'b']) }} {{ '{} and {}'.format(1, 'two') }} "
     "{{ '{0}{name}'.format('x', name='y') }} {{ '42'.isdigit() }} {{ 'ab'.isalpha() }} {{ ' '.isspace() }} "
     "{{ 'x'.center(5, '*') }} {{ 'x'.ljust(3) }}| {{ 'x'.rjust(3) }} {{ '7'.zfill(3) }} {{ 'a=b=c'.partition('=') }} "
     "{{ 'prefix-body'.removeprefix('prefix-') }}", {}),
    ("{{ d.get('a') }} {{ d.get('z') }} {{ d.get('z', 'dflt') }} {{ d.keys()|list }} {{ d.values()|list }} "
     "{{ d.items()|list }} {{ d.a }} {{ d['a'] }} {{ d.items is defined }} {{ [1, 2, 1].count(1) }} "
     "{{ [1, 2, 1].index(2) }} {{ d.copy() }}", {"d": {"a": 1, "b": [2]}}),
    ("{{ '%s|%5s|%-5s|%.2f|%d|%i|%r|%x|%05.1f|%%' % ('s', 'r', 'l', 3.14159, 42.9, 7, 'q', 255, 2.25) }} "
     "{{ 'v=%s' % 5 }} {{ '%(a)s-%(b)d' % {'a': 'x', 'b': 2} }}", {}),
    ("{{ 'a' * 3 }} {{ [1] * 2 }} {{ [1] + [2] }} {{ (1,) + (2,) }} {{ 'a' + 'b' }} {{ 1 + true }} {{ -(3) }} {{ +2 }}",
     {}),
    ("{{ range(3)|list }} {{ range(1, 4)|list }} {{ range(5, 0, -2)|list }} {{ dict(a=1, b='x') }} "
     "{{ namespace(a=1).a }} {{ 'x' if messages else 'y' }}", {}),
    ("{#- a comment -#}\n  {%- if true %}\n    yes\n  {%- endif %}\n{# another #}\nline\n  {% if true %}\n  kept\n  {% endif %}\n",
     {}),
    ("{% raw %}{{ not parsed }} {% if %}{% endraw %} after", {}),
    ("a  {{- ' b ' -}}  c\n  {%+ if true %}plus{% endif %}\n{% if true +%}\nkeep newline{% endif %}", {}),
    ("  {% if true %}\n\tindented\n  {% endif %}\n  {{ 'var' }}\n    {#- c #}\nend\n\n", {}),
    ("{{ 'esc: \\t|\\x41|\\u00e9|\\U0001F600|\\101|\\q|\\\\|\\'' }} {{ \"adjacent \" 'strings' }}", {}),
    ("{% set t = strftime_now('%Y') %}{{ t|length }}", {}),
    ("{{ messages[0].content|trim }}{{ add_generation_prompt }}{{ tools }}{{ documents }}{{ bos_token }}", {}),
    ("{% for m in messages %}{% generation %}[{{ m.content }}]{% endgeneration %}|{% endfor %}"
     "{% generation %}end{% endgeneration %}", {}),
    ("{{ 'x'|upper }}{% set l = [] %}{{ l.append }}", {}),
    ("{{ foo.bar }}", {}),
    ("{{ foo + 1 }}", {}),
    ("{{ raise_exception('custom failure') }}", {}),
    ("{{ 1 / 0 }}", {}),
    ("{{ 'a' < 1 }}", {}),
    ("{{ [1].append(2) }}", {}),
    ("{{ d.x.y }}", {"d": {}}),
    ("{% for a, b in [1] %}{% endfor %}", {}),
    ("{{ none|tojson }}{{ x|tojson }}", {}),
    ("{% if %}", {}),
    ("{{ 1 + }}", {}),
    ("{% for x in y %}", {}),
    ("{% endif %}", {}),
    ("{{ 'unterminated }}", {}),
    ("{% include 'x' %}", {}),
    ("{{ x|nosuchfilter }}", {}),
    ("{{ x is nosuchtest }}", {}),
    ("{% break %}", {}),
    ("{{ 'abc'.nosuchmethod() }}", {}),
    ("{{ range(1000000)|length }}", {}),
]


def main():
    data = sys.argv[1]
    spec = {"templates": {}, "cases": []}
    names = sorted(f[:-5] for f in os.listdir(data) if f.endswith(".json") and f != "hf_jinja_e2e.json")
    for name in names:
        spec["templates"][name] = {"file": os.path.join(data, name + ".json")}
    with open(os.path.join(data, "hf_jinja_e2e.json"), encoding="utf-8") as f:
        e2e = json.load(f)
    for model, src in e2e.items():
        spec["templates"]["e2e:" + model] = {"source": src, "vars": {"bos_token": "<s>", "eos_token": "</s>"}}
    for name in list(spec["templates"]):
        convs = CONVERSATIONS if not name.startswith("e2e:") else CONVERSATIONS[:4] + CONVERSATIONS[6:8]
        for conv in convs:
            for agp in (False, True):
                spec["cases"].append({"t": name, "messages": conv, "agp": agp})
    for i, (src, extra) in enumerate(SNIPPETS):
        name = f"snippet{i}"
        spec["templates"][name] = {"source": src, "vars": {"bos_token": "<s>"}}
        for conv in (CONVERSATIONS[3], CONVERSATIONS[6]):
            spec["cases"].append({"t": name, "messages": conv, "agp": True, "extra": extra})
    json.dump(spec, sys.stdout, ensure_ascii=False)


if __name__ == "__main__":
    main()
