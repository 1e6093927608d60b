#!/usr/bin/python3
"""Reference forward of GPT2LMHeadModel and LlamaForCausalLM (Mistral, Qwen2) in float64 numpy, written from the
Hugging Face modeling code, reading the HF directory itself (config.json + safetensors; not prefopt's file).
Compares the per-token log-probs that tests/test_hf_forward.c wrote (lines "seq ids..." / "logp ...").

usage: ref_forward.py HF_DIR PREFOPT_OUT.txt [rtol]"""
import json, os, sys
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from check_hf_import import read_dir  # the independent safetensors reader


def layer_norm(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def rms_norm(x, w, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def softmax(x):
    x = x - x.max(-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(-1, keepdims=True)


def attend(q, k, v):  # q [H,T,D], k/v [H,T,D], causal
    T, D = q.shape[1], q.shape[2]
    s = q @ k.transpose(0, 2, 1) / np.sqrt(D)
    s = s + np.triu(np.full((T, T), -np.inf), 1)
    return softmax(s) @ v


def gpt2(t, c, ids):
    g = lambda n: t.get("transformer." + n, t.get(n)).astype(np.float64)
    C, H = c["n_embd"], c["n_head"]
    D, eps, T = C // H, c.get("layer_norm_epsilon", 1e-5), len(ids)
    x = g("wte.weight")[ids] + g("wpe.weight")[np.arange(T)]
    for l in range(c["n_layer"]):
        p = f"h.{l}."
        a = layer_norm(x, g(p + "ln_1.weight"), g(p + "ln_1.bias"), eps)
        qkv = a @ g(p + "attn.c_attn.weight") + g(p + "attn.c_attn.bias")   # Conv1D: x @ W[in][out]
        q, k, v = (qkv[:, i * C:(i + 1) * C].reshape(T, H, D).transpose(1, 0, 2) for i in range(3))
        o = attend(q, k, v).transpose(1, 0, 2).reshape(T, C)
        x = x + o @ g(p + "attn.c_proj.weight") + g(p + "attn.c_proj.bias")
        m = layer_norm(x, g(p + "ln_2.weight"), g(p + "ln_2.bias"), eps)
        h = m @ g(p + "mlp.c_fc.weight") + g(p + "mlp.c_fc.bias")
        h = 0.5 * h * (1 + np.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h ** 3)))  # gelu_new
        x = x + h @ g(p + "mlp.c_proj.weight") + g(p + "mlp.c_proj.bias")
    x = layer_norm(x, g("ln_f.weight"), g("ln_f.bias"), eps)
    return x @ g("wte.weight").T


def layer_kinds(c):
    """per layer: (sliding window or None, uses RoPE, uses the local RoPE base), from the transformers configs"""
    mt, L = c["model_type"], c["num_hidden_layers"]
    W = c.get("sliding_window")
    if mt in ("qwen2", "qwen3", "smollm3") and not c.get("use_sliding_window", False):
        W = None
    lt = c.get("layer_types")
    if lt is None:
        if mt in ("mistral", "phi3"):
            lt = ["sliding_attention"] * L
        elif mt.startswith("gemma"):
            pat = 2 if mt == "gemma2" else c.get("sliding_window_pattern", 6)
            lt = ["sliding_attention" if (l + 1) % pat else "full_attention" for l in range(L)]
        elif mt in ("qwen2", "qwen3", "smollm3"):
            lt = ["sliding_attention" if l >= c.get("max_window_layers", 0) else "full_attention" for l in range(L)]
        else:
            lt = ["full_attention"] * L
    rope = [True] * L
    if mt == "smollm3":
        nr = c.get("no_rope_layers") or [int((l + 1) % c.get("no_rope_layer_interval", 4) != 0) for l in range(L)]
        rope = [bool(x) for x in nr]
    out = []
    for l in range(L):
        sl = lt[l] == "sliding_attention"
        out.append((W if sl else None, rope[l], sl and mt == "gemma3_text"))
    return out


def inv_freq(c, D, local):
    R = int(D * c.get("partial_rotary_factor", 1.0))
    base = c.get("rope_local_base_freq", 10000.0) if local else c.get("rope_theta", 10000.0)
    inv = 1.0 / base ** (np.arange(0, R, 2) / R)
    rs = None if local else c.get("rope_scaling")
    if rs:
        kind = rs.get("rope_type", rs.get("type"))
        if kind == "linear":
            inv = inv / rs["factor"]
        elif kind == "llama3":  # transformers' _compute_llama3_parameters
            factor, low, high = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
            old_len = rs["original_max_position_embeddings"]
            low_wl, high_wl = old_len / low, old_len / high
            wavelen = 2 * np.pi / inv
            scaled = np.where(wavelen > low_wl, inv / factor, inv)
            smooth = (old_len / wavelen - low) / (high - low)
            smoothed = (1 - smooth) * scaled / factor + smooth * scaled
            medium = ~(wavelen < high_wl) & ~(wavelen > low_wl)
            inv = np.where(medium, smoothed, scaled)
        elif kind != "default":
            raise SystemExit(f"reference: rope_scaling {kind} not implemented here")
    return inv


def rope(x, inv):  # x [H,T,D]; HF rotate_half over the first R = 2 len(inv) features, the rest passes
    H, T, D = x.shape
    R = 2 * len(inv)
    f = np.outer(np.arange(T), inv)
    emb = np.concatenate([f, f], -1)
    cos, sin = np.cos(emb), np.sin(emb)
    xr, xp = x[..., :R], x[..., R:]
    rot = np.concatenate([-xr[..., R // 2:], xr[..., :R // 2]], -1)
    return np.concatenate([xr * cos + rot * sin, xp], -1)


def attend_full(q, k, v, scale, cap, window):  # causal, optional tanh soft-cap and sliding window
    T = q.shape[1]
    s = q @ k.transpose(0, 2, 1) * scale
    if cap:
        s = cap * np.tanh(s / cap)
    i, j = np.arange(T)[:, None], np.arange(T)[None, :]
    ok = (j <= i) & ((i - j < window) if window else True)
    s = np.where(ok, s, -np.inf)
    return softmax(s) @ v


def llama(t, c, ids):
    """LlamaForCausalLM and the family of issue 20, from transformers' modeling files: Mistral (sliding window),
    Qwen2 (qkv bias), Qwen3 (per-head q/k RMSNorm before RoPE), OLMo 2 (norms after attention and MLP, q/k norms
    over the whole projection), Gemma 2/3 ((1+w) RMSNorm, sqrt(hidden) embedding scale, sandwich norms,
    query_pre_attn_scalar, GeGLU tanh, soft-caps, local RoPE base), Phi-3 (fused qkv/gate_up, partial rotary),
    SmolLM3 (no-RoPE layers)."""
    g = lambda n: t[n].astype(np.float64)
    mt = c["model_type"]
    gemma, olmo2, phi3 = mt.startswith("gemma"), mt == "olmo2", mt == "phi3"
    C, H = c["hidden_size"], c["num_attention_heads"]
    KV = c.get("num_key_value_heads", H)
    D = c.get("head_dim") or C // H
    eps, T = c.get("rms_norm_eps", 1e-6), len(ids)
    bias = lambda n, k: g(n) if n in t else np.zeros(k)
    norm = (lambda x, w: rms_norm(x, 1.0 + w, eps)) if gemma else (lambda x, w: rms_norm(x, w, eps))
    scale = c.get("query_pre_attn_scalar", 256) ** -0.5 if gemma else D ** -0.5
    acap = c.get("attn_logit_softcapping", 50.0 if mt == "gemma2" else None)
    fcap = c.get("final_logit_softcapping", 30.0 if mt == "gemma2" else None)
    x = g("model.embed_tokens.weight")[ids]
    if gemma:
        x = x * np.sqrt(C)
    for l, (window, use_rope, local) in enumerate(layer_kinds(c)):
        p = f"model.layers.{l}."
        a = x if olmo2 else norm(x, g(p + "input_layernorm.weight"))
        if phi3:
            q, k, v = np.split(a @ g(p + "self_attn.qkv_proj.weight").T, [H * D, H * D + KV * D], -1)
        else:
            q = a @ g(p + "self_attn.q_proj.weight").T + bias(p + "self_attn.q_proj.bias", H * D)
            k = a @ g(p + "self_attn.k_proj.weight").T + bias(p + "self_attn.k_proj.bias", KV * D)
            v = a @ g(p + "self_attn.v_proj.weight").T + bias(p + "self_attn.v_proj.bias", KV * D)
        if olmo2:
            q, k = norm(q, g(p + "self_attn.q_norm.weight")), norm(k, g(p + "self_attn.k_norm.weight"))
        q = q.reshape(T, H, D).transpose(1, 0, 2)
        k = k.reshape(T, KV, D).transpose(1, 0, 2)
        v = v.reshape(T, KV, D).transpose(1, 0, 2)
        if mt in ("qwen3", "gemma3_text"):
            q, k = norm(q, g(p + "self_attn.q_norm.weight")), norm(k, g(p + "self_attn.k_norm.weight"))
        if use_rope:
            inv = inv_freq(c, D, local)
            q, k = rope(q, inv), rope(k, inv)
        k, v = np.repeat(k, H // KV, 0), np.repeat(v, H // KV, 0)  # repeat_kv
        o = attend_full(q, k, v, scale, acap, window).transpose(1, 0, 2).reshape(T, H * D)
        o = o @ g(p + "self_attn.o_proj.weight").T
        if gemma or olmo2:
            o = norm(o, g(p + "post_attention_layernorm.weight"))
        x = x + o
        if olmo2:
            m = x
        else:
            m = norm(x, g(p + ("pre_feedforward_layernorm.weight" if gemma else "post_attention_layernorm.weight")))
        if phi3:
            gate, up = np.split(m @ g(p + "mlp.gate_up_proj.weight").T, 2, -1)
        else:
            gate, up = m @ g(p + "mlp.gate_proj.weight").T, m @ g(p + "mlp.up_proj.weight").T
        if gemma:  # gelu_pytorch_tanh
            act = 0.5 * gate * (1 + np.tanh(np.sqrt(2 / np.pi) * (gate + 0.044715 * gate ** 3)))
        else:
            act = gate / (1 + np.exp(-gate))
        y = (act * up) @ g(p + "mlp.down_proj.weight").T
        if gemma or olmo2:
            y = norm(y, g(p + "post_feedforward_layernorm.weight"))
        x = x + y
    x = norm(x, g("model.norm.weight"))
    head = g("model.embed_tokens.weight") if c.get("tie_word_embeddings", gemma) else g("lm_head.weight")
    logits = x @ head.T
    if fcap:
        logits = fcap * np.tanh(logits / fcap)
    return logits


def main():
    d, out = sys.argv[1], sys.argv[2]
    rtol = float(sys.argv[3]) if len(sys.argv) > 3 else 1e-4
    c = json.load(open(os.path.join(d, "config.json")))
    t = read_dir(d)
    fwd = gpt2 if c["model_type"] == "gpt2" else llama
    lines = open(out).read().split("\n")
    worst, n = 0.0, 0
    for i in range(0, len(lines) - 1, 2):
        ids = [int(s) for s in lines[i].split()[1:]]
        got = np.array([float(s) for s in lines[i + 1].split()[1:]])
        logits = fwd(t, c, np.array(ids))
        lp = logits - logits.max(-1, keepdims=True)
        lp = lp - np.log(np.exp(lp).sum(-1, keepdims=True))
        want = np.array([lp[j - 1, ids[j]] for j in range(1, len(ids))])
        err = np.abs(got - want) / np.maximum(np.abs(want), 1.0)
        worst, n = max(worst, err.max()), n + len(want)
        if err.max() > rtol:
            sys.exit(f"FAIL {d}: sequence {ids}: prefopt {got} reference {want}")
    print(f"ok {d}: {n} token log-probs within {worst:.2e} (relative, floor 1) of the numpy reference")


if __name__ == "__main__":
    main()
