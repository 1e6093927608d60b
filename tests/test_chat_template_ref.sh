#!/usr/bin/env bash
# Chat templates against the reference: every real template of tests/data/chat_templates/ (and the huggingface.js
# corpus) over the conversations of tests/tools/chat_template_cases.py, plus short templates for each construct,
# rendered by prefopt (build/tests/chat_template_tool) and by python3-jinja2 configured as transformers
# (tests/tools/render_chat_template.py): the texts and {% generation %} spans must be identical bytes, and a case
# that fails in one must fail in the other.
set -euo pipefail
build=${1:?usage: test_chat_template_ref.sh BUILD_DIR}
src=${PREFOPT_SOURCE_DIR:-$(cd "$(dirname "$0")/.." && pwd)}
PY=/usr/bin/python3
$PY -c "import jinja2" 2>/dev/null || { echo "skip: /usr/bin/python3 lacks jinja2 (python3-jinja2, tests/deps.sh)"; exit 77; }
work=$(mktemp -d "${TMPDIR:-/tmp}/prefopt_chat_ref.XXXXXX")
trap 'rm -rf "$work"' EXIT
$PY "$src/tests/tools/chat_template_cases.py" "$src/tests/data/chat_templates" > "$work/cases.json"
"$build/tests/chat_template_tool" "$work/cases.json" "$work/prefopt.json"
$PY "$src/tests/tools/render_chat_template.py" "$work/cases.json" "$work/jinja2.json"
$PY "$src/tests/tools/render_chat_template.py" --compare "$work/cases.json" "$work/prefopt.json" "$work/jinja2.json"
