#!/usr/bin/python3
"""Independent check of a prefopt model file against the HF directory it was imported from (numpy + h5py):
every logical tensor equals the mapped HF tensor converted to fp32 bit for bit, the per-layer stacking is as
documented in checkpoint.h, and every stored checksum equals a numpy re-implementation of checkpoint.c's.

usage: check_hf_import.py HF_DIR MODEL.h5"""
import json, os, struct, sys
import h5py
import numpy as np

M64 = (1 << 64) - 1


def read_st(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        hdr = json.loads(f.read(n))
        data = f.read()
    out = {}
    for k, v in hdr.items():
        if k == "__metadata__":
            continue
        b, e = v["data_offsets"]
        raw = data[b:e]
        if v["dtype"] == "F32":
            a = np.frombuffer(raw, "<f4")
        elif v["dtype"] == "F16":
            a = np.frombuffer(raw, "<f2").astype(np.float32)
        else:
            a = (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
        out[k] = a.reshape(v["shape"])
    return out


def read_dir(d):
    if os.path.exists(os.path.join(d, "model.safetensors")):
        return read_st(os.path.join(d, "model.safetensors"))
    wm = json.load(open(os.path.join(d, "model.safetensors.index.json")))["weight_map"]
    t = {}
    for f in sorted(set(wm.values())):
        t.update(read_st(os.path.join(d, f)))
    return t


def checksum(a):
    """sum over the row-major elements of mix(index, float bits) mod 2^64 (checkpoint.c)"""
    with np.errstate(over="ignore"):
        b = a.astype(np.float32).reshape(-1).view(np.uint32).astype(np.uint64)
        g = np.arange(b.size, dtype=np.uint64)
        x = b * np.uint64(0xff51afd7ed558ccd) + g * np.uint64(0x9e3779b97f4a7c15) + np.uint64(0x632be59bd9b4e019)
        x ^= x >> np.uint64(29)
        x *= np.uint64(0xc4ceb9fe1a85ec53)
        x ^= x >> np.uint64(32)
        return int(x.sum(dtype=np.uint64))


def expected(hf, arch, cfg):
    """prefopt logical name -> fp32 array, from the HF tensors"""
    e = {}
    if arch == "gpt2":
        t = {k[len("transformer."):] if k.startswith("transformer.") else k: v for k, v in hf.items()}
        C = cfg["n_embd"]
        e["wte"], e["wpe"] = t["wte.weight"], t["wpe.weight"]
        e["ln_f.weight"], e["ln_f.bias"] = t["ln_f.weight"], t["ln_f.bias"]
        for l in range(cfg["n_layer"]):
            h = f"h.{l}."
            for k in ("ln_1.weight", "ln_1.bias", "ln_2.weight", "ln_2.bias", "attn.c_proj.bias", "mlp.c_fc.bias",
                      "mlp.c_proj.bias"):
                e[h + k] = t[h + k]
            for k in ("attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight"):
                e[h + k] = t[h + k].T
            w, b = t[h + "attn.c_attn.weight"].T, t[h + "attn.c_attn.bias"]
            for i, q in enumerate(("q_proj", "k_proj", "v_proj")):
                e[h + f"attn.{q}.weight"] = w[i * C:(i + 1) * C]
                e[h + f"attn.{q}.bias"] = b[i * C:(i + 1) * C]
    else:
        for k, v in hf.items():
            if k.endswith("rotary_emb.inv_freq"):
                continue
            if k == "model.embed_tokens.weight":
                e["embed_tokens"] = v
            elif k == "lm_head.weight":
                if not cfg.get("tie_word_embeddings", False):
                    e[k] = v
            elif k.endswith("self_attn.qkv_proj.weight"):  # Phi-3: rows [q; k; v]
                H = cfg["num_attention_heads"]
                KV = cfg.get("num_key_value_heads", H)
                D = cfg.get("head_dim") or cfg["hidden_size"] // H
                b = k[len("model."):-len("qkv_proj.weight")]
                e[b + "q_proj.weight"], e[b + "k_proj.weight"], e[b + "v_proj.weight"] = np.split(
                    v, [H * D, H * D + KV * D])
            elif k.endswith("mlp.gate_up_proj.weight"):  # Phi-3: rows [gate; up]
                b = k[len("model."):-len("gate_up_proj.weight")]
                e[b + "gate_proj.weight"], e[b + "up_proj.weight"] = np.split(v, 2)
            else:
                e[k[len("model."):]] = v
    return e


def main():
    d, path = sys.argv[1], sys.argv[2]
    cfg = json.load(open(os.path.join(d, "config.json")))
    arch = "gpt2" if cfg["model_type"] == "gpt2" else "llama"
    exp = expected(read_dir(d), arch, cfg)
    f = h5py.File(path, "r")
    assert f.attrs["arch"].decode() == arch, f.attrs["arch"]
    assert int(f.attrs["complete"]) == 1
    seen = set()
    for name, want in exp.items():
        parts = name.split(".")
        layer = next((i for i, p in enumerate(parts) if i > 0 and p.isdigit()), None)
        if layer is None:
            ds, idx = f["model/" + name], None
        else:
            ds = f["model/" + ".".join(parts[:layer] + parts[layer + 1:])]
            idx = int(parts[layer])
        have = ds[()] if idx is None else ds[idx]
        seen.add(ds.name)
        if have.shape != want.shape or not np.array_equal(have.view(np.uint32), want.astype(np.float32).view(np.uint32)):
            sys.exit(f"FAIL {name}: values differ (shapes {have.shape} {want.shape})")
        sums = ds.attrs["checksum"]
        if int(sums[0 if idx is None else idx]) != checksum(want):
            sys.exit(f"FAIL {name}: checksum attribute differs from the numpy re-implementation")
    extra = set("/model/" + k for k in f["model"].keys()) - seen
    if extra:
        sys.exit(f"FAIL datasets not accounted for: {sorted(extra)}")
    tok = os.path.join(d, "tokenizer.json")
    if os.path.exists(tok):
        assert f["tokenizer.json"][()].tobytes() == open(tok, "rb").read(), "tokenizer.json bytes differ"
    print(f"ok: {len(exp)} tensors in {len(seen)} datasets match {d}")


if __name__ == "__main__":
    main()
