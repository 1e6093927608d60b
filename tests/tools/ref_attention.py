#!/usr/bin/env python3
"""Checks prefopt's blocked attention kernel (src/model/attention_blocked.c, run by build/tests/test_attn_kernel)
against attention written here from its definition, in float64: forward output and logsumexp with NumPy, the
three gradients by torch's autograd through the same float64 definition (never through prefopt's formulas).

Definition (one row of the batch, one KV group of G query heads): key j is visible from query i when j <= i,
neither is padding (seg < 0), seg_j == 0 (shared prompt) or seg_j == seg_i (same branch), and, with a window W,
pos_i - pos_j < W. s_ij = scale q_i.k_j, soft-capped to cap*tanh(s/cap) when cap > 0; o_i = sum_j softmax_j(s_ij)
v_j over the visible j, lse_i = log sum_j exp(s_ij); a padded query has o = 0 (its lse is not compared).

Without torch the gradients come from the closed form of the same definition, in NumPy float64: dv = P^T dO,
dP = dO V^T, dS = P o (dP - sum_j P o dP) (times 1 - tanh^2 under a cap), dq = scale dS K, dk = scale dS^T Q.

--bf16 runs the kernel's bf16 products (vdpbf16ps: bf16 inputs, fp32 accumulation). q, k, v and dout are then
rounded to bf16 here before both the kernel and the reference see them, so the kernel's own rounding of them is
exact and what remains is its rounding of the blocks it makes (P for o and dv, dS for dq and dk: a relative 2^-9
each) and fp32 accumulation; the tolerance for that is stated in tests/test_attn_kernel.sh. Exit 77 (skip) when
the CPU has no AVX512-BF16.

usage: ref_attention.py KERNEL_BINARY WORKDIR [TOL] [--bf16]  (exit 1 on any mismatch)
"""
import os
import subprocess
import sys

import numpy as np

try:
    import torch
except ImportError:
    torch = None


def visible_mask(seg, pos, window):
    T = len(seg)
    i = np.arange(T)[:, None]
    j = np.arange(T)[None, :]
    si, sj = seg[:, None].astype(int), seg[None, :].astype(int)
    m = (j <= i) & (si >= 0) & (sj >= 0) & ((sj == 0) | (sj == si))
    if window > 0:
        m &= (pos[:, None].astype(np.int64) - pos[None, :]) < window
    return m


def reference_numpy(case):
    seg, pos, W, scale, cap = case["seg"], case["pos"], case["window"], case["scale"], case["softcap"]
    M = visible_mask(seg, pos, W)
    rows = M.any(axis=1)
    q, k, v, dout = (case[x].astype(np.float64) for x in ("q", "k", "v", "dout"))
    S = scale * np.einsum("gid,jd->gij", q, k)
    t = np.tanh(S / cap) if cap > 0 else None
    if cap > 0:
        S = cap * t
    S = np.where(M[None], S, -np.inf)
    S = np.where(rows[None, :, None], S, 0.0)
    mx = S.max(axis=2, keepdims=True)
    lse = (mx + np.log(np.exp(S - mx).sum(axis=2, keepdims=True)))[:, :, 0]
    P = np.exp(S - lse[:, :, None]) * rows[None, :, None]
    o = np.einsum("gij,jd->gid", P, v)
    dv = np.einsum("gij,gid->jd", P, dout)
    dP = np.einsum("gid,jd->gij", dout, v)
    dS = P * (dP - (P * dP).sum(axis=2, keepdims=True))
    if cap > 0:
        dS = dS * (1.0 - t * t)
    dq = scale * np.einsum("gij,jd->gid", dS, k)
    dk = scale * np.einsum("gij,gid->jd", dS, q)
    return {"o": o, "lse": lse, "dq": dq, "dk": dk, "dv": dv}, rows


def reference(case):
    if torch is None:
        return reference_numpy(case)
    seg, pos, W, scale, cap = case["seg"], case["pos"], case["window"], case["scale"], case["softcap"]
    M = torch.from_numpy(visible_mask(seg, pos, W))
    rows = M.any(dim=1)
    q = torch.tensor(case["q"], dtype=torch.float64, requires_grad=True)
    k = torch.tensor(case["k"], dtype=torch.float64, requires_grad=True)
    v = torch.tensor(case["v"], dtype=torch.float64, requires_grad=True)
    dout = torch.tensor(case["dout"], dtype=torch.float64)
    S = scale * torch.einsum("gid,jd->gij", q, k)
    if cap > 0:
        S = cap * torch.tanh(S / cap)
    S = S.masked_fill(~M, float("-inf"))
    S = torch.where(rows[None, :, None], S, torch.zeros_like(S))  # padded queries: no NaN, zeroed below
    lse = torch.logsumexp(S, dim=2)
    P = torch.exp(S - lse[:, :, None]) * rows[None, :, None]
    o = torch.einsum("gij,jd->gid", P, v)
    (o * dout).sum().backward()
    return {"o": o.detach().numpy(), "lse": lse.detach().numpy(), "dq": q.grad.numpy(), "dk": k.grad.numpy(),
            "dv": v.grad.numpy()}, rows.numpy()


def packed(prompt, chosen, rejected, pad):
    """a packed DPO row: prompt (seg 0), chosen (1), rejected (2, positions restarting after the prompt), padding"""
    seg = np.array([0] * prompt + [1] * chosen + [2] * rejected + [-1] * pad, dtype=np.int8)
    pos = np.array(list(range(prompt + chosen)) + list(range(prompt, prompt + rejected)) + [0] * pad, dtype=np.int32)
    return seg, pos


def make_cases(rng):
    cases = []

    def add(name, seg, pos, D, G, window=0, softcap=0.0, scale=None, amp=1.0):
        T = len(seg)
        cases.append({"name": name, "seg": seg, "pos": pos, "window": window, "softcap": softcap,
                      "scale": 1.0 / np.sqrt(D) if scale is None else scale, "D": D, "G": G,
                      "q": (amp * rng.standard_normal((G, T, D))).astype(np.float32),
                      "k": (amp * rng.standard_normal((T, D))).astype(np.float32),
                      "v": rng.standard_normal((T, D)).astype(np.float32),
                      "dout": rng.standard_normal((G, T, D)).astype(np.float32)})

    T = 150  # not a multiple of the block (64): a 22-row last block
    add("causal T=150", np.zeros(T, np.int8), np.arange(T, dtype=np.int32), 16, 1)
    add("causal T=40 (one partial block)", np.zeros(40, np.int8), np.arange(40, dtype=np.int32), 8, 1)
    seg, pos = packed(100, 120, 80, 30)  # T = 330: the rejected branch skips whole chosen blocks
    add("packed DPO + padding, GQA 2", seg, pos, 16, 2)
    add("packed DPO, window 40, GQA 3", seg, pos, 8, 3, window=40)
    seg, pos = packed(70, 90, 60, 0)
    add("packed DPO, softcap 5 (scores up to ~20)", seg, pos, 16, 2, softcap=5.0, scale=1.0, amp=1.5)
    add("window 70 + softcap 8, padding", *packed(200, 0, 0, 37), 16, 2, window=70, softcap=8.0, amp=1.5)
    add("padding inside a block, T=129", *packed(10, 50, 60, 9), 32, 1)
    add("head_dim 80 (a 64-column and a 16-column tile), GQA 2", *packed(40, 30, 30, 0), 80, 2)
    return cases


def write_case(path, c):
    T = len(c["seg"])
    with open(path, "wb") as f:
        np.array([T, c["D"], c["G"], c["window"]], np.int32).tofile(f)
        np.array([c["scale"], c["softcap"]], np.float32).tofile(f)
        c["seg"].astype(np.int8).tofile(f)
        c["pos"].astype(np.int32).tofile(f)
        for key in ("q", "k", "v", "dout"):
            c[key].astype(np.float32).tofile(f)


def read_out(path, c):
    T, D, G = len(c["seg"]), c["D"], c["G"]
    x = np.fromfile(path, np.float32)
    out, at = {}, 0
    for key, shape in (("o", (G, T, D)), ("lse", (G, T)), ("dq", (G, T, D)), ("dk", (T, D)), ("dv", (T, D))):
        n = int(np.prod(shape))
        out[key] = x[at:at + n].reshape(shape).astype(np.float64)
        at += n
    assert at == len(x), "output size"
    return out


def bf16_round(x):
    """float32 to the nearest bf16 (ties to even), returned as float32"""
    b = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    b = (b + 0x7FFF + ((b >> 16) & 1)) & 0xFFFF0000
    return b.astype(np.uint32).view(np.float32)


def main():
    args = [a for a in sys.argv[1:] if a != "--bf16"]
    bf16 = len(args) < len(sys.argv) - 1
    kernel, work = args[0], args[1]
    tol = float(args[2]) if len(args) > 2 else 1e-5
    rng = np.random.default_rng(16)
    fail = 0
    print("gradients: " + ("torch autograd" if torch is not None else "NumPy closed form") +
          (", bf16 products (inputs rounded to bf16 first)" if bf16 else ""))
    for n, c in enumerate(make_cases(rng)):
        if bf16:
            for key in ("q", "k", "v", "dout"):
                c[key] = bf16_round(c[key])
        fin, fout = os.path.join(work, f"attn{n}.in"), os.path.join(work, f"attn{n}.out")
        write_case(fin, c)
        r = subprocess.run([kernel, fin, fout] + (["bf16"] if bf16 else []))
        if r.returncode == 77:
            print("skipped: this CPU has no AVX512-BF16")
            return 77
        if r.returncode != 0:
            print(f"FAIL {c['name']}: kernel exit {r.returncode}")
            fail = 1
            continue
        got = read_out(fout, c)
        ref, rows = reference(c)
        got["lse"] = got["lse"][:, rows]  # padded rows' lse is not defined
        ref["lse"] = ref["lse"][:, rows]
        errs, bad = [], 0
        for key in ("o", "lse", "dq", "dk", "dv"):
            # error relative to the tensor's largest entry (float32 against float64: ~1e-7 expected)
            e = np.max(np.abs(got[key] - ref[key])) / max(np.max(np.abs(ref[key])), 1e-30)
            errs.append(f"{key} {e:.1e}")
            if not e <= tol:
                bad = fail = 1
        print(("FAIL " if bad else "ok   ") + f"{c['name']}: " + ", ".join(errs))
    print("attention kernel vs float64 reference: " + ("FAIL" if fail else f"all within {tol:g}"))
    return fail


if __name__ == "__main__":
    sys.exit(main())
