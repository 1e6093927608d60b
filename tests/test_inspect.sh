#!/usr/bin/env bash
# prefopt inspect --file on model files and checkpoints (the kind read from the HDF5 root attributes): the config,
# every dataset with dtype, shape and checksums -- the checksums equal those computed here with NumPy from the
# format's definition (sum over elements of mix(row-major index, float bits) mod 2^64, io/checkpoint/ckpt_io.h) --
# the tokenizer, a checkpoint's AdamW moments, step, data cursor and training options; a tensor changed behind the
# checksum's back or an unfinished file is one error line on every rank; datasets are still described as before.
# Also `train --tokenizer` (from scratch with a real vocabulary, GPT-2's vendored tokenizer): the model's vocabulary
# is the tokenizer's (counted here from tokenizer.json), the model file carries the tokenizer (same identity as the
# packed data, tokenizer_config.json beside it), data packed otherwise is refused, and --init with it is refused.
set -u
source "$(dirname "$0")/lib.sh"
P=${PREFOPT:?}
mpi_env_root
make_workdir d

for i in $(seq 1 24); do
  printf '{"prompt": "question %d?", "chosen": " answer %d yes", "rejected": " no %d"}\n' "$i" "$i" "$i"
done > pairs.jsonl
"$P" pack --input pairs.jsonl --output pairs.h5 --quiet || fail=1
"$P" train --data pairs.h5 --run-dir run --n-layer 2 --n-embd 16 --n-head 2 --max-position 32 --batch-size 4 \
    --max-steps 3 --save-interval 2 --peak-gflops 1 --loss ipo > train.log 2>&1 || { cat train.log; exit 1; }

"$P" inspect --file run/model.h5 > model.txt 2>&1
check '[ $? -eq 0 ] && head -1 model.txt | grep -qx "run/model.h5: prefopt model file v1, complete"' "model file: $(head -1 model.txt)"
check 'grep -q "config: gpt2 (hf gpt2), vocab_size 259, hidden_size 16, num_layers 2, num_heads 2" model.txt' "config line: $(sed -n 2p model.txt)"
check 'grep -qx "  tokenizer: byte" model.txt' "tokenizer identity: $(sed -n 3p model.txt)"
check 'grep -q "tensors: .*every checksum verified$" model.txt && ! grep -q "optim/" model.txt && ! grep -q "state:" model.txt' \
      "a model file: no moments, no state"
# every dataset of the file, its dtype, shape and checksums, against h5py + NumPy
refcheck() { $PY - "$1" "$2" <<'EOF'
import h5py, numpy as np, re, sys
M = (1 << 64) - 1
def mix(g, b):
    with np.errstate(over="ignore"):
        x = b.astype(np.uint64) * np.uint64(0xff51afd7ed558ccd) + g * np.uint64(0x9e3779b97f4a7c15) + np.uint64(0x632be59bd9b4e019)
        x ^= x >> np.uint64(29)
        x *= np.uint64(0xc4ceb9fe1a85ec53)
        x ^= x >> np.uint64(32)
    return x
def checksum(a):
    bits = np.ascontiguousarray(a, dtype="<f4").view("<u4").ravel()
    return int(mix(np.arange(bits.size, dtype=np.uint64), bits).astype(object).sum()) & M
lines = {}
for l in open(sys.argv[2]):
    m = re.match(r"    (\S+) (\S+) \[([0-9,]+)\] checksums? (\S+)$", l)
    if m:
        lines[m.group(1)] = (m.group(2), tuple(int(x) for x in m.group(3).split(",")), m.group(4).split(","))
f = h5py.File(sys.argv[1], "r")
want = {}
def visit(name, obj):
    if isinstance(obj, h5py.Dataset) and (name.startswith("model/") or name.startswith("optim/")):
        want[name] = obj
f.visititems(visit)
bad = []
if set(want) != set(lines):
    bad.append(("names", sorted(set(want) ^ set(lines))))
for name, ds in want.items():
    if name not in lines: continue
    dtype, shape, sums = lines[name]
    a = ds[...]
    stacked = name.split("/")[-1].startswith("h.")
    ref = [checksum(a[l]) for l in range(a.shape[0])] if stacked else [checksum(a)]
    if dtype != "float32" or shape != a.shape or [int(s, 16) for s in sums] != ref:
        bad.append((name, dtype, shape, a.shape, sums, ["%016x" % r for r in ref]))
if bad: print(bad)
sys.exit(1 if bad or not want else 0)
EOF
}
check 'refcheck run/model.h5 model.txt' "model datasets, shapes and checksums equal NumPy's"

ck=run/checkpoints/step-00000002.h5
"$P" inspect --file $ck > ck.txt 2>&1
check '[ $? -eq 0 ] && head -1 ck.txt | grep -qx "$ck: prefopt checkpoint file v1, complete"' "checkpoint: $(head -1 ck.txt)"
check 'grep -q "every checksum verified, AdamW moments too" ck.txt && grep -q "^    optim/v/wte float32" ck.txt' "moments listed"
check 'refcheck $ck ck.txt' "checkpoint datasets (moments too) and checksums equal NumPy's"
check 'grep -qx "  state: step 2, schedule step 2, epoch 0, tokens seen 0, lr .*, saved by 1 ranks" ck.txt || grep -q "  state: step 2, schedule step 2, epoch 0" ck.txt' "state: $(grep state: ck.txt)"
check 'grep -qx "  data cursor: seed 1234, epoch 0, step 2, batch 4" ck.txt' "cursor: $(grep cursor ck.txt)"
check 'grep -qx "    loss = ipo" ck.txt && grep -qx "    batch-size = 4" ck.txt' "the run's training options: $(grep -c '^    [a-z-]* = ' ck.txt) keys"

# damaged files: one line per rank, exit 1
$PY - <<'EOF'
import h5py, shutil
shutil.copy("run/model.h5", "corrupt.h5")
with h5py.File("corrupt.h5", "r+") as f:
    d = f["model/h.mlp.c_fc.weight"]
    d[1, 3, 5] = d[1, 3, 5] + 1.0
shutil.copy("run/model.h5", "unfinished.h5")
with h5py.File("unfinished.h5", "r+") as f:
    f.attrs["complete"] = 0
EOF
timeout 60 $MPI -n 2 "$P" inspect --file corrupt.h5 > corrupt.txt 2>&1; rc=$?
n=$(grep -c "prefopt: error: .*corrupt.h5: tensor 'h.1.mlp.c_fc.weight' is corrupt (checksum mismatch)" corrupt.txt)
check '[ $rc -eq 1 ] && [ "$n" -eq 2 ] && [ $(grep -c error corrupt.txt) -eq 2 ] && ! grep -q "^corrupt.h5:" corrupt.txt' \
      "a corrupt tensor: rc 1, one line per rank naming it (rc $rc): $(cat corrupt.txt | head -3)"
"$P" inspect --file unfinished.h5 > unfinished.txt 2>&1; rc=$?
check '[ $rc -eq 1 ] && grep -q "unfinished.h5: attribute .complete. is not 1" unfinished.txt' "unfinished file: $(cat unfinished.txt)"
"$P" inspect --file pairs.h5 > ds.txt 2>&1
check '[ $? -eq 0 ] && head -1 ds.txt | grep -q "pairs.h5: prefopt dataset v1, kind pairs, 24 examples"' "datasets as before: $(head -1 ds.txt)"

# --- train --tokenizer ------------------------------------------------------------------------------------------
mkdir g2
zcat "${PREFOPT_SOURCE_DIR:?}/tests/data/tokenizers/gpt2/tokenizer.json.gz" > g2/tokenizer.json
cp "$PREFOPT_SOURCE_DIR/tests/data/tokenizers/gpt2/tokenizer_config.json" g2/
vocab=$($PY -c "
import json; t=json.load(open('g2/tokenizer.json'))
ids=list(t['model']['vocab'].values())+[a['id'] for a in t['added_tokens']]; print(max(ids)+1)")
sha=$(sha256sum g2/tokenizer.json | cut -d' ' -f1)
"$P" pack --input pairs.jsonl --output g2pairs.h5 --tokenizer g2 --quiet || fail=1
"$P" train --data g2pairs.h5 --tokenizer g2 --run-dir tokrun --n-layer 1 --n-embd 16 --n-head 2 --max-position 32 \
    --batch-size 4 --max-steps 2 --peak-gflops 1 > tokrun.log 2>&1
check '[ $? -eq 0 ] && grep -q "model: gpt2, 1 layers, hidden 16, 2 heads (2 kv), vocab $vocab |" tokrun.log' \
      "train --tokenizer: vocabulary $vocab from the tokenizer: $(grep model: tokrun.log)"
"$P" inspect --file tokrun/model.h5 > tokrun.txt 2>&1
check 'grep -q "vocab_size $vocab," tokrun.txt && grep -q "^    model/wte float32 \[$vocab,16\]" tokrun.txt' "the model's embedding has the tokenizer's rows"
check 'grep -qx "  tokenizer: sha256:$sha (tokenizer.json $(stat -c %s g2/tokenizer.json) bytes), tokenizer_config.json $(stat -c %s g2/tokenizer_config.json) bytes" tokrun.txt' \
      "the model file carries the tokenizer: $(grep tokenizer: tokrun.txt)"
check '"$P" inspect --file g2pairs.h5 | grep -q "tokenizer sha256:$sha,"' "the data's identity is the same tokenizer's"
"$P" train --data pairs.h5 --tokenizer g2 --run-dir tokbad --n-layer 1 --n-embd 16 --n-head 2 --max-steps 1 > tokbad.log 2>&1; rc=$?
check '[ $rc -eq 1 ] && grep -q "prefopt: error: pairs.h5: tokenizer .byte. does not match the model.s .sha256:$sha." tokbad.log' \
      "data packed byte-level refused: $(grep error tokbad.log)"
"$P" train --data g2pairs.h5 --tokenizer g2 --init tokrun/model.h5 --run-dir tokinit --max-steps 1 > tokinit.log 2>&1; rc=$?
check '[ $rc -ne 0 ] && grep -q "a model trained from --init keeps the tokenizer of tokrun/model.h5" tokinit.log' \
      "--tokenizer with --init refused: $(grep error tokinit.log)"

finish test_inspect
