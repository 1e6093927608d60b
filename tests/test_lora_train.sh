#!/usr/bin/env bash
# LoRA end to end on the synthetic preference task of test_train.sh (the chosen completion copies the prompt's
# first letter), tiny GPT-2 with adapters on every linear (c_attn's q/k/v, attn.c_proj, mlp.c_fc, mlp.c_proj):
#  - LoRA DPO (reference = the base with adapters off) raises held-out reward accuracy above 0.9, measured by
#    prefopt eval on the run's model.h5 (the adapters merged) against the initial model;
#  - DP=2 and 1x2 / 2x1 grids give the losses of one rank (1e-4 relative); the same seed gives bit-identical
#    losses; a run stopped at step 4 and resumed to 8 equals the straight run bit for bit, dropout on;
#  - the checkpoint holds adapters and moments only, with the base's path and checksum; resuming on another base
#    is one error line naming the checksum;
#  - export --hf of the checkpoint is a PEFT adapter directory whose tensors are the checkpoint's adapters
#    (h5py + NumPy, PEFT's names and shapes, c_attn as a block-diagonal rank 3r); export --merge-lora equals
#    W + (alpha/r) B A computed in NumPy from those PEFT files (1e-6) and every other tensor of the base's own
#    export bit for bit; train --lora-adapter on the exported directory starts from exactly those adapters
#    (held-out loss identical to the source run's, re-exported tensors byte-identical);
#  - a tiny Llama's export uses model.layers.L.self_attn.q_proj / mlp.gate_proj names and round-trips too.
set -u
source "$(dirname "$0")/lib.sh"
P=${PREFOPT:?}
mpi_env_root
make_workdir d

$PY - <<'EOF'
import json, random
r = random.Random(7)
L = "abcdefgh"
for name, n in (("train", 800), ("eval", 200)):
    with open(f"{name}.jsonl", "w") as f:
        for i in range(n):
            p = "".join(r.choice(L) for _ in range(4))
            c, rej = p[0] * 3, r.choice([x for x in L if x != p[0]]) * 3
            f.write(json.dumps({"prompt": p + ":", "chosen": c, "rejected": rej}) + "\n")
EOF
for s in train eval; do "$P" pack --input $s.jsonl --output $s.h5 --quiet || fail=1; done
TINY="--n-layer 1 --n-embd 32 --n-head 2 --max-position 16"
"$P" train --data train.h5 --run-dir init $TINY --seed 11 --epochs 0 > init.log 2>&1 || { cat init.log; exit 1; }
"$P" train --data train.h5 --run-dir other $TINY --seed 12 --epochs 0 > other.log 2>&1 || { cat other.log; exit 1; }
vals() { $PY -c "
import json,sys
for l in open('$1'):
    o=json.loads(l)
    if '$2' in o: print(repr(o['$2']))"; }

# --- LoRA DPO learns the task ------------------------------------------------------------------------------------
LORA="--lora-r 8 --lora-alpha 16 --lora-targets all-linear"
"$P" train --data train.h5 --eval-data eval.h5 --init init/model.h5 --loss dpo --lr 1e-2 $LORA --run-dir dpo \
    --batch-size 16 --max-steps 200 --eval-interval 100 --log-interval 1000 > dpo.log 2>&1
rc=$?
check '[ $rc -eq 0 ]' "LoRA DPO exits 0: $(tail -3 dpo.log)"
check 'grep -q "reference: the base (adapters off)" dpo.log && grep -q "^LoRA: r 8" dpo.log' "banner: $(head -5 dpo.log)"
"$P" eval --model dpo/model.h5 --ref init/model.h5 --data eval.h5 --out ev.jsonl --loss dpo > ev.txt 2>&1
acc=$($PY -c "import json;print(json.load(open('ev.jsonl.summary.json'))['eval/rewards/accuracies'])")
mar=$($PY -c "import json;print(json.load(open('ev.jsonl.summary.json'))['eval/rewards/margins'])")
check "$PY -c 'import sys; sys.exit(not ($acc > 0.9 and $mar > 0))'" "LoRA DPO: held-out reward accuracy $acc > 0.9, margin $mar > 0"
# the run's own eval (adapters live) and eval of the merged model.h5 agree
last=$(vals dpo/metrics.jsonl eval/rewards/margins | tail -1)
check "$PY -c 'import sys; sys.exit(not abs($last - $mar) <= 1e-4 * abs($mar))'" "merged model.h5 margin $mar == the run's $last"
echo "LoRA DPO: held-out reward accuracy $acc, margin $mar (run's own eval: $last)"

# --- equivalences ------------------------------------------------------------------------------------------------
COMMON="--data train.h5 --init init/model.h5 --loss dpo --lr 3e-3 --lr-scheduler constant --batch-size 8 --max-steps 6 --log-interval 1000 $LORA"
"$P" train $COMMON --run-dir base > base.log 2>&1 || { echo "FAILED base run"; cat base.log; fail=1; }
"$P" train $COMMON --run-dir base2 > base2.log 2>&1
$MPI -n 2 "$P" train $COMMON --run-dir dp2 --dp 2 > dp2.log 2>&1
$MPI -n 2 "$P" train $COMMON --run-dir tp12 --grid-cols 2 > tp12.log 2>&1
$MPI -n 2 "$P" train $COMMON --run-dir tp21 --grid-rows 2 > tp21.log 2>&1
close() { $PY - "$1" "$2" "$3" "$4" <<'EOF'
import json, sys
def losses(p):
    return [json.loads(l)["loss"] for l in open(p) if '"loss"' in l and '"eval/' not in l]
a, b, tol, n = losses(sys.argv[1]), losses(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
ok = len(a) == len(b) == n and all(abs(x - y) <= tol * max(abs(x), 1e-12) for x, y in zip(a, b))
if not ok: print(a, b)
sys.exit(0 if ok else 1)
EOF
}
check 'close base/metrics.jsonl base2/metrics.jsonl 0 6' "same seed, same grid: bit-identical losses"
check 'close base/metrics.jsonl dp2/metrics.jsonl 1e-4 6' "DP=2 == one rank: $(tail -2 dp2.log)"
check 'close base/metrics.jsonl tp12/metrics.jsonl 1e-4 6' "grid 1x2 == 1x1: $(tail -2 tp12.log)"
check 'close base/metrics.jsonl tp21/metrics.jsonl 1e-4 6' "grid 2x1 == 1x1: $(tail -2 tp21.log)"
# the adapters train: the loss moves off log 2 (B = 0 at the start: policy == reference). Moves, not falls: a
# 6-step run's last loss is one batch's, and whether that batch is below log 2 depends on the sample order; that
# LoRA DPO learns is checked by the 200-step run above (held-out accuracy > 0.9)
l=$(vals base/metrics.jsonl loss | tr '\n' ' ')
check "$PY -c 'import sys; l=[float(x) for x in \"$l\".split()]; sys.exit(not (abs(l[0] - 0.693147) < 1e-5 and abs(l[-1] - l[0]) > 1e-4))'" "LoRA losses move from log 2: $l"

# --- checkpoints: resume, base identity --------------------------------------------------------------------------
CUT="--data train.h5 --init init/model.h5 --loss dpo --lr 3e-3 --lr-scheduler constant --batch-size 8 --log-interval 1000 $LORA --lora-dropout 0.1"
"$P" train $CUT --max-steps 8 --run-dir straight > s1.log 2>&1
"$P" train $CUT --max-steps 4 --run-dir cut > c1.log 2>&1
"$P" train $CUT --max-steps 8 --run-dir cut > c2.log 2>&1
check 'grep -q "resumed from" c2.log' "resume found the checkpoint: $(tail -2 c2.log)"
vals straight/metrics.jsonl loss > l1.txt; vals cut/metrics.jsonl loss > l2.txt
check '[ $(wc -l < l1.txt) -eq 8 ] && cmp -s l1.txt l2.txt' "LoRA (dropout 0.1) resumed run == straight run: $(diff l1.txt l2.txt | head -4)"
ck=$(ls cut/checkpoints/step-*.h5 | tail -1)
$PY - "$ck" "$d/init/model.h5" <<'EOF' || { echo "FAILED: checkpoint layout"; fail=1; }
import h5py, sys
f = h5py.File(sys.argv[1], "r")
assert "model" not in f and "lora" in f, list(f)
names = sorted(f["lora"])
assert names and all(n.endswith(".lora_AT") or n.endswith(".lora_B") for n in names), names
assert sorted(f["optim/m"]) == names and sorted(f["optim/v"]) == names, (list(f["optim/m"]), names)
assert f.attrs["base_model"].decode() == sys.argv[2], f.attrs["base_model"]
assert f.attrs["lora"].decode().startswith("r=8 alpha=16 dropout=0.1"), f.attrs["lora"]
EOF
cp -r cut wrongbase
"$P" train ${CUT/init\/model.h5/other\/model.h5} --max-steps 10 --run-dir wrongbase > wb.log 2>&1
rc=$?
check '[ $rc -ne 0 ] && [ $(grep -c "checksum" wb.log) -ge 1 ] && grep -q "resume on the same base model" wb.log' \
      "resume on another base: one clear error (rc $rc): $(tail -2 wb.log)"

# --- PEFT export, merge, re-import ----------------------------------------------------------------------------------
"$P" export --model dpo/checkpoints --hf peft > ex1.log 2>&1 || { echo "FAILED: export peft: $(cat ex1.log)"; fail=1; }
"$P" export --model dpo/checkpoints --hf merged --merge-lora > ex2.log 2>&1 || { echo "FAILED: export merged: $(cat ex2.log)"; fail=1; }
"$P" export --model init/model.h5 --hf basehf > ex3.log 2>&1 || { echo "FAILED: export base: $(cat ex3.log)"; fail=1; }
$PY - dpo/checkpoints/step-00000200.h5 peft merged basehf <<'EOF' || { echo "FAILED: PEFT export / merge"; fail=1; }
import h5py, json, struct, sys, numpy as np
def st(path):
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8 + n])
    h.pop("__metadata__", None)
    out = {}
    for k, v in h.items():
        assert v["dtype"] == "F32", v
        s, e = v["data_offsets"]
        out[k] = np.frombuffer(b[8 + n + s:8 + n + e], dtype="<f4").reshape(v["shape"])
    return out
ck, peft, merged, basehf = sys.argv[1:5]
cfg = json.load(open(f"{peft}/adapter_config.json"))
assert cfg["peft_type"] == "LORA" and cfg["task_type"] == "CAUSAL_LM" and cfg["r"] == 8 and cfg["lora_alpha"] == 16, cfg
assert cfg["base_model_name_or_path"].endswith("init/model.h5"), cfg
assert sorted(cfg["target_modules"]) == ["attn.c_proj", "c_attn", "mlp.c_fc", "mlp.c_proj"], cfg["target_modules"]
assert cfg["rank_pattern"] == {"c_attn": 24} and cfg["alpha_pattern"] == {"c_attn": 48}, cfg
a = st(f"{peft}/adapter_model.safetensors")
f = h5py.File(ck, "r")
lo = f["lora"]
C, r = 32, 8
pre = "base_model.model.transformer.h.0."
assert set(a) == {pre + m + ".lora_" + x + ".weight" for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj") for x in "AB"}, sorted(a)
# A [r][in] = lora_AT transposed, B [out][r] as stored; c_attn: A stacked, B block-diagonal
for m, src in (("attn.c_proj", "h.attn.c_proj"), ("mlp.c_fc", "h.mlp.c_fc"), ("mlp.c_proj", "h.mlp.c_proj")):
    assert np.array_equal(a[pre + m + ".lora_A.weight"], lo[src + ".lora_AT"][0].T), m
    assert np.array_equal(a[pre + m + ".lora_B.weight"], lo[src + ".lora_B"][0]), m
A, B = a[pre + "attn.c_attn.lora_A.weight"], a[pre + "attn.c_attn.lora_B.weight"]
assert A.shape == (3 * r, C) and B.shape == (3 * C, 3 * r), (A.shape, B.shape)
for q, nm in enumerate("qkv"):
    assert np.array_equal(A[q * r:(q + 1) * r], lo[f"h.attn.{nm}_proj.lora_AT"][0].T), nm
    blk = np.zeros((C, 3 * r), np.float32)
    blk[:, q * r:(q + 1) * r] = lo[f"h.attn.{nm}_proj.lora_B"][0]
    assert np.array_equal(B[q * C:(q + 1) * C], blk), nm
assert np.any(B != 0), "B never trained"
# merged: W + (alpha/r) B A from the PEFT files, GPT-2 Conv1D weights being [in][out]; the rest bit-identical
m, bh = st(f"{merged}/model.safetensors"), st(f"{basehf}/model.safetensors")
assert set(m) == set(bh)
worst, changed = 0.0, 0
for k in bh:
    mod = k[len("transformer."):-len(".weight")] if k.endswith(".weight") else None
    key = "base_model.model." + (k[:-len(".weight")] if mod else "") + ".lora_A.weight"
    if mod and key in a:
        s = (48 / 24) if k.endswith("c_attn.weight") else 16 / 8
        delta = s * (a[key.replace("lora_A", "lora_B")].astype(np.float64) @ a[key].astype(np.float64))
        want = bh[k].astype(np.float64) + delta.T      # Conv1D: [in][out]
        err = np.max(np.abs(m[k] - want) / np.maximum(1.0, np.abs(want)))
        worst = max(worst, err)
        assert err <= 1e-6, (k, err)
        assert not np.array_equal(m[k], bh[k]), k
        changed += 1
    else:
        assert np.array_equal(m[k], bh[k]), k
assert changed == 4, changed
print(f"PEFT export matches the checkpoint; merged weights within {worst:.2e} of W + (alpha/r) B A; other tensors bit-identical")
EOF
# re-import: the exported adapters, untouched (lr 0), give the source run's held-out loss; re-export is identical
"$P" train --data train.h5 --eval-data eval.h5 --init init/model.h5 --loss dpo --lr 0 --batch-size 16 --max-steps 1 \
    --lora-adapter peft --run-dir reimp --log-interval 1000 > reimp.log 2>&1
rc=$?
check '[ $rc -eq 0 ]' "train --lora-adapter: $(tail -3 reimp.log)"
l_src=$(vals dpo/metrics.jsonl eval/loss | tail -1); l_imp=$(vals reimp/metrics.jsonl eval/loss | tail -1)
check '[ "$l_src" = "$l_imp" ]' "re-imported adapter's held-out loss $l_imp == source $l_src"
"$P" export --model reimp/checkpoints --hf peft2 > ex4.log 2>&1
check 'cmp -s peft/adapter_model.safetensors peft2/adapter_model.safetensors' "re-exported adapter tensors are byte-identical"
"$P" train --data train.h5 --init init/model.h5 --loss dpo --batch-size 16 --max-steps 1 --lora-adapter peft --lora-r 4 \
    --run-dir bad_r > bad_r.log 2>&1
rc=$?
check '[ $rc -ne 0 ] && grep -q "adapter peft has r 8" bad_r.log' "--lora-r disagreeing with the adapter: $(tail -1 bad_r.log)"

# --- Llama names --------------------------------------------------------------------------------------------------
"$P" train --data train.h5 --run-dir linit --arch llama $TINY --n-kv-head 1 --seed 3 --epochs 0 > linit.log 2>&1 || { cat linit.log; fail=1; }
"$P" train --data train.h5 --init linit/model.h5 --loss dpo --lr 3e-3 --batch-size 8 --max-steps 3 $LORA --run-dir ll \
    > ll.log 2>&1 || { echo "FAILED: llama LoRA run: $(tail -3 ll.log)"; fail=1; }
"$P" export --model ll/checkpoints --hf lpeft > ex5.log 2>&1 || { echo "FAILED: llama export: $(cat ex5.log)"; fail=1; }
$PY - lpeft <<'EOF' || { echo "FAILED: llama PEFT names"; fail=1; }
import json, struct, sys
b = open(f"{sys.argv[1]}/adapter_model.safetensors", "rb").read()
h = json.loads(b[8:8 + struct.unpack("<Q", b[:8])[0]]); h.pop("__metadata__", None)
cfg = json.load(open(f"{sys.argv[1]}/adapter_config.json"))
mods = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
assert sorted(cfg["target_modules"]) == sorted(m.split(".")[1] for m in mods), cfg["target_modules"]
want = {f"base_model.model.model.layers.0.{m}.lora_{x}.weight" for m in mods for x in "AB"}
assert set(h) == want, sorted(set(h) ^ want)
assert h["base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight"]["shape"] == [8, 32]
assert h["base_model.model.model.layers.0.self_attn.k_proj.lora_B.weight"]["shape"] == [16, 8]
assert h["base_model.model.model.layers.0.mlp.down_proj.lora_A.weight"]["shape"][0] == 8
EOF
"$P" train --data train.h5 --init linit/model.h5 --loss dpo --lr 0 --batch-size 8 --max-steps 1 --lora-adapter lpeft \
    --run-dir ll2 --log-interval 1000 > ll2.log 2>&1 && "$P" export --model ll2/checkpoints --hf lpeft2 > ex6.log 2>&1
check 'cmp -s lpeft/adapter_model.safetensors lpeft2/adapter_model.safetensors' "llama adapter round trip: $(tail -2 ll2.log)"

finish test_lora_train
