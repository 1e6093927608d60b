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


def rope(x, theta):  # x [H,T,D]; HF rotate_half convention
    H, T, D = x.shape
    inv = 1.0 / theta ** (np.arange(0, D, 2) / D)
    f = np.outer(np.arange(T), inv)
    emb = np.concatenate([f, f], -1)
    cos, sin = np.cos(emb), np.sin(emb)
    rot = np.concatenate([-x[..., D // 2:], x[..., :D // 2]], -1)
    return x * cos + rot * sin


def llama(t, c, ids):
    g = lambda n: t[n].astype(np.float64)
    C, H = c["hidden_size"], c["num_attention_heads"]
    KV = c.get("num_key_value_heads", H)
    D = c.get("head_dim") or C // H
    eps, theta, T = c.get("rms_norm_eps", 1e-6), c.get("rope_theta", 10000.0), len(ids)
    bias = lambda n, k: g(n) if n in t else np.zeros(k)
    x = g("model.embed_tokens.weight")[ids]
    for l in range(c["num_hidden_layers"]):
        p = f"model.layers.{l}."
        a = rms_norm(x, g(p + "input_layernorm.weight"), eps)
        q = a @ g(p + "self_attn.q_proj.weight").T + bias(p + "self_attn.q_proj.bias", H * D)
        k = a @ g(p + "self_attn.k_proj.weight").T + bias(p + "self_attn.k_proj.bias", KV * D)
        v = a @ g(p + "self_attn.v_proj.weight").T + bias(p + "self_attn.v_proj.bias", KV * D)
        q = rope(q.reshape(T, H, D).transpose(1, 0, 2), theta)
        k = rope(k.reshape(T, KV, D).transpose(1, 0, 2), theta)
        v = v.reshape(T, KV, D).transpose(1, 0, 2)
        k, v = np.repeat(k, H // KV, 0), np.repeat(v, H // KV, 0)  # repeat_kv
        o = attend(q, k, v).transpose(1, 0, 2).reshape(T, H * D)
        x = x + o @ g(p + "self_attn.o_proj.weight").T
        m = rms_norm(x, g(p + "post_attention_layernorm.weight"), eps)
        gate = m @ g(p + "mlp.gate_proj.weight").T
        x = x + (gate / (1 + np.exp(-gate)) * (m @ g(p + "mlp.up_proj.weight").T)) @ g(p + "mlp.down_proj.weight").T
    x = rms_norm(x, g("model.norm.weight"), eps)
    head = g("model.embed_tokens.weight") if c.get("tie_word_embeddings", False) else g("lm_head.weight")
    return x @ head.T


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


main()
