#!/usr/bin/env bash
# prefopt tokenize: ids of a text with a real tokenizer.json, decode back, pieces, and the error paths' exit codes.
set -euo pipefail
: "${PREFOPT:?}" "${PREFOPT_SOURCE_DIR:?}"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
data="$PREFOPT_SOURCE_DIR/tests/data/tokenizers"
mkdir "$tmp/gpt2"
gzip -dc "$data/gpt2/tokenizer.json.gz" > "$tmp/gpt2/tokenizer.json"
cp "$data/gpt2/tokenizer_config.json" "$tmp/gpt2/"
fail() { echo "FAIL: $*" >&2; exit 1; }

# corpus text 0 and its ids from reference.json (Hugging Face tokenizers)
text=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["texts"][0])' "$data/corpus.json")
want=$(python3 -c 'import json,sys; print(" ".join(map(str, json.load(open(sys.argv[1]))["tokenizers"]["gpt2"]["cases"][0]["ids"])))' "$data/reference.json")
got=$("$PREFOPT" tokenize --tokenizer "$tmp/gpt2" --text "$text")
[ "$got" = "$want" ] || fail "ids: got '$got' want '$want'"

back=$("$PREFOPT" tokenize --tokenizer "$tmp/gpt2/tokenizer.json" --decode "$(echo "$want" | tr ' ' ,)")
[ "$back" = "$text" ] || fail "decode: got '$back'"

printf 'a<|endoftext|>' > "$tmp/in.txt"
[ "$("$PREFOPT" tokenize --tokenizer "$tmp/gpt2" --file "$tmp/in.txt")" = "64 50256" ] || fail "--file with a special"
[ "$("$PREFOPT" tokenize --tokenizer "$tmp/gpt2" --file "$tmp/in.txt" --no-special | wc -w)" -gt 2 ] || fail "--no-special"
"$PREFOPT" tokenize --tokenizer "$tmp/gpt2" --text "Hello world" --pieces | grep -q $'^995\t\xc4\xa0world\t world$' || fail "--pieces"

# byte-level default
[ "$("$PREFOPT" tokenize --text "hi<|eos|>")" = "104 105 257" ] || fail "byte-level"

# errors: unsupported model type (exit 1, message names it), usage (exit 2)
echo '{"model":{"type":"Unigram","vocab":[["a",0.0]]}}' > "$tmp/uni.json"
set +e
msg=$("$PREFOPT" tokenize --tokenizer "$tmp/uni.json" --text x 2>&1); rc=$?
set -e
[ $rc -eq 1 ] || fail "unsupported model: exit $rc"
echo "$msg" | grep -q "model.type 'Unigram' is not supported (BPE only)" || fail "message: $msg"
set +e
"$PREFOPT" tokenize --text x --decode 1 > /dev/null 2>&1; rc=$?
set -e
[ $rc -eq 2 ] || fail "two inputs: exit $rc"
echo "test_tokenize_cli: ok"
