#!/usr/bin/env bash
# prefopt pack end to end: every input layout, h5py reading what pack wrote (no prefopt code), truncation and
# dropping, the held-out split, bad input (file:line:field, no output left), malformed files stopping both ranks
# of `mpiexec -n 2` with the same message within 30 s, and the pack throughput on token-id JSONL.
set -u
source "$(dirname "$0")/lib.sh"
$PY -c 'import h5py' 2>/dev/null || { echo "skip: /usr/bin/python3 has no h5py"; exit 77; }
DATA="$PREFOPT_SOURCE_DIR/tests/data"
make_workdir W /tmp/prefopt_test_pack.XXXXXX
MPI="mpiexec -n 2 --oversubscribe --bind-to none"

for k in pairs unpaired sft; do
  "$PREFOPT" pack --input "$DATA/$k.jsonl" --output $k.h5 > $k.log 2>&1 && [ -f $k.h5 ] && ok "pack $k" || { bad "pack $k"; cat $k.log; }
done
grep -q "kept 5 train; dropped 0" pairs.log && ok "pairs summary" || { bad "pairs summary"; cat pairs.log; }
grep -q "throughput:" pairs.log && ok "throughput printed" || bad "no throughput line"
h5dump -H pairs.h5 > /dev/null && ok "h5dump reads pairs.h5" || bad "h5dump"

# h5py, no prefopt code: attributes, CSR layout, values of hand-checkable byte-level examples
$PY - <<'EOF' || fail=1
import h5py, numpy as np, sys
def s(x): return x.decode() if isinstance(x, bytes) else str(x)
def ex(f, field, i):
    o = f[field + "/offsets"]; return f[field + "/tokens"][o[i]:o[i+1]].tolist()
def b(t, eos=True): return [c for c in t.encode()] + ([257] if eos else [])
errs = []
def want(c, m):
    if not c: errs.append(m)
with h5py.File("pairs.h5", "r") as f:
    want(int(f.attrs["format_version"]) == 1 and s(f.attrs["kind"]) == "pairs", "attrs")
    want(int(f.attrs["vocab_size"]) == 259 and s(f.attrs["tokenizer"]) == "byte", "vocab/tokenizer")
    want((int(f.attrs["bos_id"]), int(f.attrs["eos_id"]), int(f.attrs["pad_id"])) == (256, 257, 258), "specials")
    want(int(f.attrs["num_examples"]) == 5 and f["chosen/offsets"].shape == (6,), "counts")
    want(f["prompt/tokens"].dtype == np.int32 and f["prompt/offsets"].dtype == np.int64, "dtypes")
    want(ex(f, "prompt", 1) == b("Q?", False) and ex(f, "chosen", 1) == b("yes!") and ex(f, "rejected", 1) == b("no"), "example 1")
    want(ex(f, "prompt", 2) == [1, 2, 3] and ex(f, "chosen", 2) == [4, 5, 257] and ex(f, "rejected", 2) == [6, 257], "ids example")
    want(ex(f, "prompt", 3) == b("Human: hi Assistant: ", False) and ex(f, "chosen", 3) == b("hello"), "implicit prompt")
with h5py.File("unpaired.h5", "r") as f:
    want(s(f.attrs["kind"]) == "unpaired" and f["label"][:].tolist() == [1, 0, 1, 0] and f["label"].dtype == np.uint8, "labels")
    want(ex(f, "completion", 3) == b("meh"), "unpaired completion")
with h5py.File("sft.h5", "r") as f:
    want(ex(f, "prompt", 1) == [] and ex(f, "completion", 1) == b("plain text"), "plain text")
    want(ex(f, "completion", 2) == b("A<|im_end|>\n"), "messages")
for e in errs: print("FAIL: h5py:", e)
if not errs: print("ok: h5py reads and checks the packed files")
sys.exit(1 if errs else 0)
EOF

# a Hugging Face BPE tokenizer: ids equal `prefopt tokenize`, identity = sha256 of the tokenizer.json
TOKGZ="$DATA/tokenizers/gpt2/tokenizer.json.gz"
if [ -f "$TOKGZ" ]; then
  mkdir gpt2 && gunzip -c "$TOKGZ" > gpt2/tokenizer.json
  want_ids="$("$PREFOPT" tokenize --tokenizer gpt2 --text 'yes!' --no-special) 50256"
  want_id="sha256:$(sha256sum gpt2/tokenizer.json | cut -d' ' -f1)"
  "$PREFOPT" pack --input "$DATA/pairs.jsonl" --output bpe.h5 --tokenizer gpt2 > bpe.log 2>&1 || { bad "pack with gpt2"; cat bpe.log; }
  got=$($PY -c '
import h5py
f = h5py.File("bpe.h5", "r"); o = f["chosen/offsets"]
print(f.attrs["tokenizer"].decode(), int(f.attrs["vocab_size"]), int(f.attrs["eos_id"]))
print(" ".join(str(x) for x in f["chosen/tokens"][o[1]:o[2]]))')
  [ "$got" = "$want_id 50257 50256
$want_ids" ] && ok "gpt2 tokenizer: ids and identity" || bad "gpt2 tokenizer: got '$got', want '$want_id 50257 50256 / $want_ids'"
fi

# --unpair: each pair becomes (prompt, chosen, 1) and (prompt, rejected, 0)
"$PREFOPT" pack --input "$DATA/pairs.jsonl" --output up.h5 --unpair > up.log 2>&1 || bad "pack --unpair"
$PY - <<'EOF' || fail=1
import h5py, sys
with h5py.File("up.h5", "r") as f:
    o, t, po, pt = f["completion/offsets"][:], f["completion/tokens"][:], f["prompt/offsets"][:], f["prompt/tokens"][:]
    c = lambda i: t[o[i]:o[i+1]].tolist()
    good = f.attrs["kind"] == b"unpaired" and f["label"][:].tolist() == [1, 0] * 5 and c(2) == list(b"yes!") + [257] \
        and c(3) == list(b"no") + [257] and pt[po[2]:po[3]].tolist() == pt[po[3]:po[4]].tolist() == list(b"Q?")
    print("ok: --unpair" if good else "FAIL: --unpair")
    sys.exit(0 if good else 1)
EOF

# the format is an interface: a dataset written from scratch by h5py (str attributes, int64 scalars, bool labels)
$PY - <<'EOF'
import h5py, numpy as np
with h5py.File("byhand.h5", "w") as f:
    f.attrs.update(format_version=1, kind="unpaired", num_examples=2, vocab_size=259, tokenizer="byte",
                   bos_id=256, eos_id=257, pad_id=258)
    for name, seqs in (("prompt", [[1, 2], [3]]), ("completion", [[4, 257], [5, 6, 257]])):
        f[name + "/tokens"] = np.array(sum(seqs, []), dtype=np.int32)
        f[name + "/offsets"] = np.cumsum([0] + [len(x) for x in seqs]).astype(np.int64)
    f["label"] = np.array([True, False])
EOF
timeout 30 $MPI "$PREFOPT" inspect --file byhand.h5 > out.txt 2>&1 && grep -q "labels: 1 desirable, 1 undesirable" out.txt \
  && ok "a dataset written by h5py alone passes validation" || { bad "h5py-written dataset"; cat out.txt; }

# --add-bos: plain text gets [BOS] as its prompt, so every text token is predicted
"$PREFOPT" pack --input "$DATA/sft.jsonl" --output bos.h5 --add-bos > bos.log 2>&1 || bad "pack --add-bos"
$PY -c '
import h5py, sys
f = h5py.File("bos.h5", "r"); o, t = f["prompt/offsets"][:], f["prompt/tokens"][:]
sys.exit(0 if t[o[1]:o[2]].tolist() == [256] and t[o[0]:o[1]].tolist() == [256] + list(b"x=") else 1)' \
  && ok "--add-bos" || bad "--add-bos"

# truncation: keep_end keeps the prompt's end and cuts completions; drop drops
"$PREFOPT" pack --input "$DATA/pairs.jsonl" --output t.h5 --max-prompt-len 2 --max-len 5 > t.log 2>&1 || bad "pack keep_end"
$PY - <<'EOF' || fail=1
import h5py, sys
with h5py.File("t.h5", "r") as f:
    def ex(field, i):
        o = f[field + "/offsets"]; return f[field + "/tokens"][o[i]:o[i+1]].tolist()
    good = ex("prompt", 1) == list(b"Q?") and ex("chosen", 1) == list(b"yes") and ex("prompt", 2) == [2, 3] \
        and ex("chosen", 2) == [4, 5, 257] and int(f.attrs["num_examples"]) == 5
    print("ok: keep_end truncation" if good else "FAIL: keep_end truncation")
    sys.exit(0 if good else 1)
EOF
grep -q "truncated: prompts 3, completions 3" t.log && ok "truncation counts" || { bad "truncation counts"; cat t.log; }
"$PREFOPT" pack --input "$DATA/pairs.jsonl" --output d.h5 --max-prompt-len 3 --max-len 6 --truncation drop > d.log 2>&1 || bad "pack drop"
grep -q "kept 2 train; dropped 3" d.log && grep -q "prompt too long 2, over max length 1" d.log && ok "drop mode" || { bad "drop mode"; cat d.log; }

# held-out split: deterministic in the seed, complete, different for another seed
$PY -c '
import json
with open("many.jsonl", "w") as f:
    for i in range(300): f.write(json.dumps({"prompt": "p%d" % i, "completion": "c%d" % i}) + "\n")'
for r in a b; do "$PREFOPT" pack --input many.jsonl --output tr$r.h5 --eval-fraction 0.3 --eval-out ev$r.h5 --seed 5 > s$r.log 2>&1 || bad "split $r"; done
"$PREFOPT" pack --input many.jsonl --output trc.h5 --eval-fraction 0.3 --eval-out evc.h5 --seed 6 > sc.log 2>&1 || bad "split c"
$PY - <<'EOF' || fail=1
import h5py, sys
def prompts(p):
    with h5py.File(p, "r") as f:
        o, t = f["prompt/offsets"][:], f["prompt/tokens"][:]
        return [bytes(t[o[i]:o[i+1]].tolist()).decode() for i in range(len(o) - 1)]
ta, ea, tb, eb, tc = prompts("tra.h5"), prompts("eva.h5"), prompts("trb.h5"), prompts("evb.h5"), prompts("trc.h5")
good = ta == tb and ea == eb and sorted(ta + ea) == sorted("p%d" % i for i in range(300)) and 50 < len(ea) < 130 and ta != tc
print("ok: eval split (%d train, %d eval)" % (len(ta), len(ea)) if good else "FAIL: eval split")
sys.exit(0 if good else 1)
EOF

# bad input: one line naming file, line and field; no output file, no temp file
printf '{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "chosen": 5, "rejected": "c"}\n' > bad1.jsonl
printf '{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "chosen": "b" "rejected": "c"}\n' > bad2.jsonl
printf '{"prompt_ids": [1], "chosen_ids": [2, 900], "rejected_ids": [3]}\n' > bad3.jsonl
printf '{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "completion": "b"}\n' > bad4.jsonl
printf '{"prompt": "a", "completion": "b", "label": "yes"}\n' > bad5.jsonl
expect_bad_input() {
  local f=$1 pat=$2
  rm -f out.h5 out.h5.tmp.*
  if "$PREFOPT" pack --input $f --output out.h5 > /dev/null 2> err.txt; then bad "$f accepted"; return; fi
  grep -q -- "$pat" err.txt && ok "$f: $(cat err.txt)" || { bad "$f: want '$pat', got: $(cat err.txt)"; }
  ls out.h5 out.h5.tmp.* > /dev/null 2>&1 && bad "$f left an output file" || true
}
expect_bad_input bad1.jsonl "bad1.jsonl:3: field 'chosen': expected a string, an array of token ids"
expect_bad_input bad2.jsonl "bad2.jsonl:2: invalid JSON"
expect_bad_input bad3.jsonl "bad3.jsonl:1: field 'chosen_ids': token id 900 at index 1 is outside the vocabulary"
expect_bad_input bad4.jsonl "bad4.jsonl:2: a 'sft' example in a 'pairs' dataset"
expect_bad_input bad5.jsonl "bad5.jsonl:1: field 'label': expected true/false or 1/0"
timeout 30 $MPI "$PREFOPT" pack --input bad1.jsonl --output out.h5 > /dev/null 2> err.txt
rc=$?
[ $rc -ne 0 ] && [ $rc -ne 124 ] && [ "$(grep -c "^prefopt: error: bad1.jsonl:3: field 'chosen'" err.txt)" -eq 2 ] && [ ! -e out.h5 ] \
  && ok "pack under mpiexec -n 2: both ranks report the bad line" || { bad "pack under mpiexec -n 2 (rc $rc)"; cat err.txt; }

# malformed dataset files, written with h5py: both ranks stop with the same line, non-zero, within 30 s
$PY - <<'EOF'
import h5py, shutil, numpy as np
def variant(name, fn):
    shutil.copy("pairs.h5", name)
    with h5py.File(name, "r+") as f: fn(f)
def nonmono(f): o = f["chosen/offsets"]; o[2] = o[3] + 1
def bigid(f): f["rejected/tokens"][4] = 300
def floats(f):
    t = f["prompt/tokens"][:]; del f["prompt/tokens"]; f["prompt/tokens"] = t.astype(np.float32)
def missing(f): del f["rejected/offsets"]
def kind(f): f.attrs["kind"] = "triples"
variant("nonmono.h5", nonmono); variant("bigid.h5", bigid); variant("floats.h5", floats)
variant("missing.h5", missing); variant("kind.h5", kind)
open("noth5.h5", "w").write("hello\n")
EOF
expect_malformed() {
  local f=$1 pat=$2; shift 2
  local t0=$(date +%s)
  timeout 30 $MPI "$PREFOPT" inspect --file $f "$@" > out.txt 2> err.txt
  local rc=$? dt=$(( $(date +%s) - t0 ))
  local lines=$(grep -c "^prefopt: error: " err.txt) distinct=$(grep "^prefopt: error: " err.txt | sort -u | wc -l)
  if [ $rc -eq 0 ] || [ $rc -eq 124 ]; then bad "$f: rc $rc"; cat err.txt; return; fi
  if [ "$lines" -ne 2 ] || [ "$distinct" -ne 1 ] || ! grep -q -- "$pat" err.txt; then
    bad "$f: want 2 identical lines matching '$pat'"; cat err.txt; return; fi
  ok "$f (rc $rc, ${dt}s): $(grep -m1 '^prefopt: error: ' err.txt)"
}
expect_malformed nonmono.h5 "dataset 'chosen/offsets' is not monotonic at example 2"
expect_malformed bigid.h5 "dataset 'rejected/tokens': token id 300 at position 4 (example 1) is outside the vocabulary"
expect_malformed floats.h5 "dataset 'prompt/tokens' has type float32, expected int32"
expect_malformed missing.h5 "dataset 'rejected/offsets' is missing"
expect_malformed kind.h5 "attribute 'kind' is 'triples'"
expect_malformed noth5.h5 "cannot open as an HDF5 file"
expect_malformed pairs.h5 "vocabulary size 259 is larger than the model's 200 rows" --expect-vocab 200
# a model with more rows than the tokenizer has tokens (padded embeddings, Qwen2/2.5) reads the data
timeout 30 "$PREFOPT" inspect --file pairs.h5 --expect-vocab 50257 > padded.txt 2>&1 && grep -q "kind pairs, 5 examples" padded.txt \
  && ok "padded vocabulary: a 50257-row model reads 259-token data" || { bad "padded vocabulary"; cat padded.txt; }
expect_malformed pairs.h5 "tokenizer 'byte' does not match" --expect-tokenizer sha256:abc
timeout 30 $MPI "$PREFOPT" inspect --file pairs.h5 --expect-vocab 259 > out.txt 2>&1 && grep -q "kind pairs, 5 examples" out.txt \
  && ok "a good file passes under mpiexec -n 2" || { bad "good file"; cat out.txt; }

# throughput on token-id JSONL (one core): about 40 MB, ids 0..255 in lines of ~1.5k ids
$PY - <<'EOF'
import random
random.seed(1)
with open("ids.jsonl", "w") as f:
    line = lambda n: "[" + ", ".join(str(random.randrange(256)) for _ in range(n)) + "]"
    rows = [('{"prompt_ids": %s, "chosen_ids": %s, "rejected_ids": %s}\n' % (line(300), line(600), line(600))) for _ in range(64)]
    for i in range(4000): f.write(rows[i % 64])
EOF
"$PREFOPT" pack --input ids.jsonl --output ids.h5 > ids.log 2>&1 || bad "pack ids.jsonl"
grep "throughput" ids.log | sed 's/^ */measured: pack /'
# streaming: peak memory for ~28 MB of JSONL stays within 16 MB of the peak for a 6-line file
if [ -x /usr/bin/time ]; then
  small=$(/usr/bin/time -f %M "$PREFOPT" pack --input "$DATA/pairs.jsonl" --output m1.h5 --quiet 2>&1 | tail -1)
  big=$(/usr/bin/time -f %M "$PREFOPT" pack --input ids.jsonl --output m2.h5 --quiet 2>&1 | tail -1)
  [ $((big - small)) -lt 16384 ] && ok "bounded memory: peak RSS ${small} KB (6 lines) vs ${big} KB (28 MB)" \
    || bad "memory grows with the input: ${small} KB vs ${big} KB"
fi
exit $fail
