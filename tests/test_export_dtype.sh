#!/usr/bin/env bash
# export --dtype: a model imported from bfloat16 safetensors (torch_dtype "bfloat16") exports as BF16 by default,
# every tensor byte-identical to the original; --dtype fp32 writes its exact fp32 values; a float32 model exports
# F32 by default and with --dtype bf16 every element is torch's round-to-nearest-even bfloat16 of the fp32 value
# (torch from /usr/bin/python3 as the independent reference; a numpy integer implementation where torch is
# missing); config.json's torch_dtype names what was written; a bad --dtype is one error line.
set -u
source "$(dirname "$0")/lib.sh"
B=$1
T=$PREFOPT_SOURCE_DIR/tests/tools
requires_python numpy
make_workdir W "$B/test_export_dtype.XXXXXX"
cat > cmp.py <<'PYEOF'
import json, struct, sys
import numpy as np
def load(path):
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    hdr = json.loads(raw[8:8 + n]); hdr.pop("__metadata__", None)
    out = {}
    for k, e in hdr.items():
        b, en = e["data_offsets"]
        out[k] = (e["dtype"], e["shape"], raw[8 + n + b:8 + n + en])
    return out
def f32(dt, data):
    if dt == "F32": return np.frombuffer(data, "<f4")
    if dt == "BF16": return (np.frombuffer(data, "<u2").astype(np.uint32) << 16).view(np.float32)
    if dt == "F16": return np.frombuffer(data, "<f2").astype(np.float32)
    raise SystemExit("dtype " + dt)
def bf16_bits(x):
    try:
        import torch
        return torch.from_numpy(x.copy()).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16), "torch"
    except ImportError:
        u = x.view(np.uint32).astype(np.uint64)
        r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
        return r, "numpy"
mode, orig, new, cfg = sys.argv[1:5]
a, b = load(orig), load(new)
want_dt = {"same": None, "f32": "F32", "bf16": "BF16"}[mode]
# GPT-2 checkpoints carry attn.bias (the causal mask buffer), which is no weight and is not exported
extra = [k for k in set(a) ^ set(b) if not k.endswith(".attn.bias") or k in b]
if extra: sys.exit(f"tensor names differ: {sorted(extra)}")
ref = "-"
for k in b:
    da, sa, xa = a[k]; db, sb, xb = b[k]
    if sa != sb: sys.exit(f"{k}: shape {sa} -> {sb}")
    if mode == "same":
        if (da, xa) != (db, xb): sys.exit(f"{k}: {da} -> {db}, bytes differ")
    elif db != want_dt:
        sys.exit(f"{k}: dtype {db}, want {want_dt}")
    elif mode == "f32":
        if not np.array_equal(f32(da, xa), f32(db, xb)): sys.exit(f"{k}: fp32 values differ")
    else:
        bits, ref = bf16_bits(f32(da, xa))
        got = np.frombuffer(xb, "<u2")
        if not np.array_equal(bits, got):
            i = int(np.argmax(bits != got)); sys.exit(f"{k}: element {i}: {got[i]:#06x}, {ref} rounds to {bits[i]:#06x}")
td = json.load(open(cfg))["torch_dtype"]
want_td = {"BF16": "bfloat16", "F32": "float32"}[want_dt or a[next(iter(b))][0]]
if td != want_td: sys.exit(f"config.json torch_dtype {td}, want {want_td}")
print(f"ok {mode}: {len(a)} tensors ({ref})")
PYEOF

# a bfloat16 model
$PY "$T/make_tiny_hf.py" bf/hf --arch llama --dtype bf16 --shards 1 --seed 3 --set-config 'torch_dtype="bfloat16"' || bad "generator bf16"
"$PREFOPT" import --hf bf/hf --out bf/a.h5 > /dev/null || bad "import bf16"
"$PREFOPT" export --model bf/a.h5 --hf bf/out > /dev/null || bad "export bf16 default"
$PY cmp.py same bf/hf/model.safetensors bf/out/model.safetensors bf/out/config.json || bad "bf16 default export"
"$PREFOPT" export --model bf/a.h5 --hf bf/out32 --dtype fp32 > /dev/null || bad "export --dtype fp32"
$PY cmp.py f32 bf/hf/model.safetensors bf/out32/model.safetensors bf/out32/config.json || bad "--dtype fp32 export"
# GPT-2 (Conv1D transposes, fused c_attn) in float32, values that are not bf16 numbers
$PY "$T/make_tiny_hf.py" f/hf --arch gpt2 --dtype f32 --shards 1 --seed 4 || bad "generator f32"
"$PREFOPT" import --hf f/hf --out f/a.h5 > /dev/null || bad "import f32"
"$PREFOPT" export --model f/a.h5 --hf f/out > /dev/null || bad "export f32 default"
$PY cmp.py same f/hf/model.safetensors f/out/model.safetensors f/out/config.json || bad "f32 default export"
"$PREFOPT" export --model f/a.h5 --hf f/out16 --dtype bf16 > /dev/null || bad "export --dtype bf16"
$PY cmp.py bf16 f/hf/model.safetensors f/out16/model.safetensors f/out16/config.json || bad "--dtype bf16 export"
# the bf16 export imports again (through the reader's BF16 path) and its model file is fp32 with the rounded values
"$PREFOPT" import --hf f/out16 --out f/b.h5 > /dev/null || bad "re-import of the bf16 export"
"$PREFOPT" export --model f/b.h5 --hf f/again --dtype bf16 > /dev/null && cmp -s f/out16/model.safetensors f/again/model.safetensors \
  || bad "bf16 -> import -> bf16 export is not byte-identical"
"$PREFOPT" export --model f/a.h5 --hf f/bad --dtype fp16 > /dev/null 2> err.txt; rc=$?
[ $rc -ne 0 ] && [ "$(wc -l < err.txt)" -ge 1 ] && grep -q "export --dtype 'fp16': expected bf16 or fp32" err.txt \
  || bad "bad --dtype: rc $rc, $(cat err.txt)"
finish test_export_dtype
