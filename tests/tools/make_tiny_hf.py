#!/usr/bin/python3
"""Writes a tiny random Hugging Face model directory (config.json, model.safetensors or shards with
model.safetensors.index.json, tokenizer.json) with numpy only: an independent safetensors writer for prefopt's
import tests. Faults can be injected to test the error messages.

usage: make_tiny_hf.py OUT --arch gpt2|llama|mistral|qwen2|qwen3|olmo2|gemma2|gemma3_text|phi3|smollm3 [--dtype f32|f16|bf16] [--shards N] [--seed S]
                       [--tie] [--no-prefix] [--drop NAME] [--bad-shape NAME] [--truncate]
                       [--set-config KEY=JSON] [--layers L] [--vocab V] [--positions P]
"""
import argparse, json, os, struct
import numpy as np


def tensors_for(arch, cfg, rng, prefix):
    t = {}
    r = lambda *s: (rng.standard_normal(s) * 0.2).astype(np.float32)
    if arch == "gpt2":
        C, V, P, L = cfg["n_embd"], cfg["vocab_size"], cfg["n_positions"], cfg["n_layer"]
        p = "transformer." if prefix else ""
        t[p + "wte.weight"] = r(V, C)
        t[p + "wpe.weight"] = r(P, C)
        for l in range(L):
            h = f"{p}h.{l}."
            t[h + "ln_1.weight"] = 1 + r(C)
            t[h + "ln_1.bias"] = r(C)
            t[h + "attn.c_attn.weight"] = r(C, 3 * C)       # Conv1D: [in][out]
            t[h + "attn.c_attn.bias"] = r(3 * C)
            t[h + "attn.c_proj.weight"] = r(C, C)
            t[h + "attn.c_proj.bias"] = r(C)
            t[h + "ln_2.weight"] = 1 + r(C)
            t[h + "ln_2.bias"] = r(C)
            t[h + "mlp.c_fc.weight"] = r(C, 4 * C)
            t[h + "mlp.c_fc.bias"] = r(4 * C)
            t[h + "mlp.c_proj.weight"] = r(4 * C, C)
            t[h + "mlp.c_proj.bias"] = r(C)
            t[h + "attn.bias"] = np.tril(np.ones((P, P), np.float32)).reshape(1, 1, P, P)  # old-style buffer
        t[p + "ln_f.weight"] = 1 + r(C)
        t[p + "ln_f.bias"] = r(C)
    else:
        C, V, L = cfg["hidden_size"], cfg["vocab_size"], cfg["num_hidden_layers"]
        H, KV, F = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["intermediate_size"]
        D = cfg.get("head_dim", C // H)
        gemma = arch.startswith("gemma")
        nw = (lambda *s: r(*s)) if gemma else (lambda *s: 1 + r(*s))  # Gemma's norms scale by (1 + w)
        t["model.embed_tokens.weight"] = r(V, C)
        for l in range(L):
            h = f"model.layers.{l}."
            if arch != "olmo2":  # OLMo 2 normalises the outputs of attention and MLP instead
                t[h + "input_layernorm.weight"] = nw(C)
            if arch == "phi3":  # fused: rows [q; k; v] and [gate; up]
                t[h + "self_attn.qkv_proj.weight"] = r((H + 2 * KV) * D, C)
            else:
                t[h + "self_attn.q_proj.weight"] = r(H * D, C)
                t[h + "self_attn.k_proj.weight"] = r(KV * D, C)
                t[h + "self_attn.v_proj.weight"] = r(KV * D, C)
            if arch == "qwen2":
                t[h + "self_attn.q_proj.bias"] = r(H * D)
                t[h + "self_attn.k_proj.bias"] = r(KV * D)
                t[h + "self_attn.v_proj.bias"] = r(KV * D)
            t[h + "self_attn.o_proj.weight"] = r(C, H * D)
            if arch in ("qwen3", "gemma3_text"):  # per head, over head_dim
                t[h + "self_attn.q_norm.weight"] = nw(D)
                t[h + "self_attn.k_norm.weight"] = nw(D)
            if arch == "olmo2":  # over the whole projection
                t[h + "self_attn.q_norm.weight"] = nw(H * D)
                t[h + "self_attn.k_norm.weight"] = nw(KV * D)
            t[h + "post_attention_layernorm.weight"] = nw(C)
            if gemma:
                t[h + "pre_feedforward_layernorm.weight"] = nw(C)
            if gemma or arch == "olmo2":
                t[h + "post_feedforward_layernorm.weight"] = nw(C)
            if arch == "phi3":
                t[h + "mlp.gate_up_proj.weight"] = r(2 * F, C)
            else:
                t[h + "mlp.gate_proj.weight"] = r(F, C)
                t[h + "mlp.up_proj.weight"] = r(F, C)
            t[h + "mlp.down_proj.weight"] = r(C, F)
        t["model.norm.weight"] = nw(C)
        if not cfg["tie_word_embeddings"]:
            t["lm_head.weight"] = r(V, C)
    return t


def config_for(arch, tie, layers):
    if arch == "gpt2":
        return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": 61, "n_embd": 16,
                "n_layer": layers, "n_head": 2, "n_positions": 32, "n_ctx": 32, "layer_norm_epsilon": 1e-5,
                "activation_function": "gelu_new", "bos_token_id": 60, "eos_token_id": 60}
    c = {"architectures": [{"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
                            "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM", "olmo2": "Olmo2ForCausalLM",
                            "gemma2": "Gemma2ForCausalLM", "gemma3_text": "Gemma3ForCausalLM",
                            "phi3": "Phi3ForCausalLM", "smollm3": "SmolLM3ForCausalLM"}[arch]],
         "model_type": arch, "vocab_size": 61, "hidden_size": 16, "num_hidden_layers": layers,
         "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 24, "max_position_embeddings": 32,
         "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "hidden_act": "silu", "tie_word_embeddings": tie,
         "rope_scaling": None, "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float32"}
    if arch == "mistral":
        c["sliding_window"] = None
    if arch == "qwen2":
        c["use_sliding_window"] = False
        c["sliding_window"] = 32
    # issue 20's architectures, each with what sets it apart switched on and windows shorter than the test
    # sequences (the keys are those of the transformers configs)
    if arch == "qwen3":  # explicit head_dim != hidden / heads, q/k norms, a window on the upper layer
        c.update(head_dim=6, attention_bias=False, use_sliding_window=True, sliding_window=3, max_window_layers=1,
                 layer_types=["full_attention", "sliding_attention"])
    if arch == "olmo2":
        c.update(attention_bias=False, rms_norm_eps=1e-6)
    if arch in ("gemma2", "gemma3_text"):
        del c["hidden_act"]
        c.update(hidden_activation="gelu_pytorch_tanh", head_dim=4, query_pre_attn_scalar=8, sliding_window=3,
                 attention_bias=False)
        if arch == "gemma2":  # small caps so that tanh bends the tiny model's scores and logits
            c.update(attn_logit_softcapping=2.0, final_logit_softcapping=3.0,
                     layer_types=["sliding_attention", "full_attention"])
        else:
            c.update(num_hidden_layers=max(layers, 3), rope_theta=10000.0, rope_local_base_freq=100.0,
                     rope_scaling={"rope_type": "linear", "factor": 2.0}, sliding_window_pattern=3,
                     attn_logit_softcapping=None, final_logit_softcapping=None)
    if arch == "phi3":  # head_dim 8, 6 of them rotated
        c.update(num_attention_heads=2, num_key_value_heads=1, partial_rotary_factor=0.75, sliding_window=4,
                 original_max_position_embeddings=32, resid_pdrop=0.0, embd_pdrop=0.0, attention_dropout=0.0)
    if arch == "smollm3":  # layer 1 without RoPE
        c.update(no_rope_layers=[1] + [0] * (layers - 1), use_sliding_window=False, sliding_window=None,
                 attention_bias=False, mlp_bias=False)
    return c


def encode(a, dtype):
    if dtype == "f32":
        return "F32", a.astype("<f4").tobytes()
    if dtype == "f16":
        return "F16", a.astype("<f2").tobytes()
    bits = a.astype(np.float32).view(np.uint32).astype(np.uint64)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16          # round to nearest even
    return "BF16", bits.astype("<u2").tobytes()


def write_safetensors(path, items, dtype, truncate=False):
    header, blobs, off = {"__metadata__": {"format": "pt"}}, [], 0
    for name, a in items:
        dt, raw = encode(a, dtype)
        shape = list(a.shape)
        header[name] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    data = struct.pack("<Q", len(h)) + h + b"".join(blobs)
    if truncate:
        data = data[: len(data) - 100]
    with open(path, "wb") as f:
        f.write(data)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--arch", default="gpt2")
    ap.add_argument("--dtype", default="f32")
    ap.add_argument("--shards", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--tie", action="store_true")
    ap.add_argument("--no-prefix", action="store_true")
    ap.add_argument("--drop")
    ap.add_argument("--bad-shape")
    ap.add_argument("--truncate", action="store_true")
    ap.add_argument("--set-config", action="append", default=[])
    ap.add_argument("--vocab", type=int, default=0, help="vocabulary size (0: 61); the tensors follow it")
    ap.add_argument("--positions", type=int, default=0, help="max positions (0: 32)")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    rng = np.random.default_rng(a.seed)
    cfg = config_for(a.arch, a.tie, a.layers)
    if a.vocab:
        cfg["vocab_size"] = a.vocab
    if a.positions:
        cfg["max_position_embeddings" if a.arch != "gpt2" else "n_positions"] = a.positions
        if a.arch == "gpt2":
            cfg["n_ctx"] = a.positions
    t = tensors_for(a.arch, cfg, rng, not a.no_prefix)
    for kv in a.set_config:  # only config.json changes: the tensors follow the unmodified config
        k, v = kv.split("=", 1)
        cfg[k] = json.loads(v)
    if a.drop:
        del t[a.drop]
    if a.bad_shape:  # a well-formed tensor of the wrong shape: one more row
        s = t[a.bad_shape].shape
        t[a.bad_shape] = np.zeros((s[0] + 1,) + s[1:], np.float32)
    with open(os.path.join(a.out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    with open(os.path.join(a.out, "tokenizer.json"), "w") as f:
        json.dump({"version": "1.0", "model": {"type": "BPE", "vocab": {"a": 0}, "merges": []},
                   "seed": a.seed}, f)
    items = list(t.items())
    if a.shards <= 1:
        write_safetensors(os.path.join(a.out, "model.safetensors"), items, a.dtype, a.truncate)
        return
    n = a.shards
    wm = {}
    for s in range(n):
        name = f"model-{s + 1:05d}-of-{n:05d}.safetensors"
        part = items[s::n]
        write_safetensors(os.path.join(a.out, name), part, a.dtype, a.truncate and s == n - 1)
        for k, _ in part:
            wm[k] = name
    with open(os.path.join(a.out, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": 0}, "weight_map": wm}, f, indent=2)


if __name__ == "__main__":
    main()
