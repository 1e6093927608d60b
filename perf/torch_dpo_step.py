#!/usr/bin/python3
"""PyTorch CPU baseline of `prefopt bench`: the identical DPO step on the identical shapes, for the side-by-side
ratio (perf/README.md).

Per step: zero the gradients, the policy's forward over the rows, the frozen reference's forward (no_grad) over
the same rows, the DPO loss (-log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r))), mean over pairs), the
policy's backward, clip_grad_norm_(1.0), torch.optim.AdamW. GPT-2 architecture (gelu_new, LayerNorm, tied LM
head), weights normal(0, 0.02) with residual projections scaled by 1/sqrt(2L) as prefopt_model_init_random.

--layout packed (default): the rows prefopt packs, [prompt | chosen | rejected] with the shared-prefix mask
(a token sees the prompt and its own branch) and the rejected positions restarting after the prompt, so the
FLOPs are exactly those of `prefopt bench` (same formula). --layout trl: TRL's layout, chosen and rejected as
separate causal rows of prompt + completion tokens (the prompt computed twice per model).

Runs on Debian's python3-torch (1.13, BLAS_INFO=generic: sgemm from libblas.so.3, which the Debian alternative
points at BLIS). BLIS_ARCH_TYPE defaults to 0 (skx), the kernel `prefopt` selects on this CPU, so both use the
same sgemm; pass --blis-arch "" to leave BLIS's own choice. The sgemm peak is measured in the same process with
torch.mm on 1024^3 (best of 7, before and after the steps), as prefopt bench measures its own.

  BLIS_NUM_THREADS=2 /usr/bin/python3 perf/torch_dpo_step.py --threads 2 --steps 5 [--amp bf16]
"""
import argparse
import json
import math
import os
import statistics
import sys
import time


def parse():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument("--max-position", type=int, default=1024)
    ap.add_argument("--pairs", type=int, default=2)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--chosen-len", type=int, default=64)
    ap.add_argument("--rejected-len", type=int, default=64)
    ap.add_argument("--layout", choices=["packed", "trl"], default="packed")
    ap.add_argument("--logits-to-keep", type=int, default=1,
                    help="1: the LM head only at the positions that predict completion tokens (prefopt's "
                         "--completion-logits 1, TRL's use_logits_to_keep); 0: at every position")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("BLIS_NUM_THREADS", "1")))
    ap.add_argument("--blis-arch", default="0", help="BLIS_ARCH_TYPE for libblas (0 = skx; '' = BLIS decides)")
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--lr", type=float, default=1e-6)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--amp", choices=["none", "bf16"], default="none",
                    help="bf16: torch.autocast('cpu', dtype=torch.bfloat16) around both forwards (a TRL user's one "
                         "line); the loss, backward and AdamW stay outside it, on fp32 parameters")
    ap.add_argument("--json", default="", help="also append the JSON line to this file")
    return ap.parse_args()


args = parse()
# BLIS reads these when libblas initialises: set them before torch loads it
if args.blis_arch != "":
    os.environ.setdefault("BLIS_ARCH_TYPE", args.blis_arch)
os.environ["BLIS_NUM_THREADS"] = str(args.threads)
os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

torch.set_num_threads(args.threads)
torch.manual_seed(args.seed)


class GPT2(torch.nn.Module):
    def __init__(self, L, C, H, V, P):
        super().__init__()
        self.L, self.C, self.H = L, C, H
        std, std_r = 0.02, 0.02 / math.sqrt(2 * L)
        self.wte = torch.nn.Parameter(torch.randn(V, C) * std)
        self.wpe = torch.nn.Parameter(torch.randn(P, C) * std)
        self.blocks = torch.nn.ModuleList()
        for _ in range(L):
            b = torch.nn.Module()
            b.ln1 = torch.nn.LayerNorm(C, eps=1e-5)
            b.q = torch.nn.Linear(C, C)
            b.k = torch.nn.Linear(C, C)
            b.v = torch.nn.Linear(C, C)
            b.o = torch.nn.Linear(C, C)
            b.ln2 = torch.nn.LayerNorm(C, eps=1e-5)
            b.fc = torch.nn.Linear(C, 4 * C)
            b.proj = torch.nn.Linear(4 * C, C)
            for lin, s in ((b.q, std), (b.k, std), (b.v, std), (b.o, std_r), (b.fc, std), (b.proj, std_r)):
                torch.nn.init.normal_(lin.weight, 0.0, s)
                torch.nn.init.zeros_(lin.bias)
            self.blocks.append(b)
        self.lnf = torch.nn.LayerNorm(C, eps=1e-5)

    def forward(self, tok, pos, mask, keep=None):
        """tok, pos: [R, T]; mask: [R, 1, T, T] additive; keep: positions to form logits at (None: all).
        Returns log-softmax logits [R, len(keep) or T, V]."""
        R, T = tok.shape
        H, D = self.H, self.C // self.H
        x = self.wte[tok] + self.wpe[pos]
        scale = 1.0 / math.sqrt(D)
        for b in self.blocks:
            h = b.ln1(x)
            q = b.q(h).view(R, T, H, D).transpose(1, 2)
            k = b.k(h).view(R, T, H, D).transpose(1, 2)
            v = b.v(h).view(R, T, H, D).transpose(1, 2)
            att = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) * scale + mask, dim=-1)
            y = torch.matmul(att, v).transpose(1, 2).reshape(R, T, self.C)
            x = x + b.o(y)
            x = x + b.proj(F.gelu(b.fc(b.ln2(x)), approximate="tanh"))
        if keep is not None:
            x = x[:, keep]
        x = self.lnf(x)
        return torch.log_softmax(F.linear(x, self.wte), dim=-1)


def build_rows(pairs, P, Cn, Rn, layout, V, gen):
    """Token ids, positions, additive masks, and for every predicted token (row, parent index, target id, unit)."""
    if layout == "packed":
        T = P + Cn + Rn
        seg = [0] * P + [1] * Cn + [2] * Rn
        pos = list(range(P)) + list(range(P, P + Cn)) + list(range(P, P + Rn))
        parent = [i - 1 for i in range(P)] + [P - 1 + j for j in range(Cn)] + \
                 [P - 1] + [P + Cn + j - 1 for j in range(1, Rn)]
        vis = torch.zeros(T, T, dtype=torch.bool)
        for i in range(T):
            for j in range(i + 1):
                vis[i, j] = seg[j] == 0 or seg[j] == seg[i]
        nrows = pairs
        tok = torch.randint(0, V, (nrows, T), generator=gen)
        rows, par, tgt, unit = [], [], [], []
        for k in range(pairs):
            for i in range(T):
                if parent[i] < 0 or seg[i] == 0:
                    continue  # DPO reads completion log-probs only
                rows.append(k)
                par.append(parent[i])
                tgt.append(int(tok[k, i]))
                unit.append(2 * k + (1 if seg[i] == 2 else 0))
        posr = torch.tensor(pos).unsqueeze(0).expand(nrows, T)
    else:
        T = P + max(Cn, Rn)
        nrows = 2 * pairs
        vis = torch.tril(torch.ones(T, T, dtype=torch.bool))
        tok = torch.randint(0, V, (nrows, T), generator=gen)
        rows, par, tgt, unit = [], [], [], []
        for r in range(nrows):
            n = P + (Cn if r % 2 == 0 else Rn)
            for i in range(P, n):
                rows.append(r)
                par.append(i - 1)
                tgt.append(int(tok[r, i]))
                unit.append(r)  # unit 2k = chosen, 2k+1 = rejected
        posr = torch.arange(T).unsqueeze(0).expand(nrows, T)
    mask = torch.zeros(T, T).masked_fill(~vis, float("-inf")).view(1, 1, T, T).expand(nrows, 1, T, T)
    # the positions that predict a completion token (the same in every row of these layouts), and each predicted
    # token's index among them: what a head restricted to them reads
    keep = sorted(set(par))
    at = {p: q for q, p in enumerate(keep)}
    idx = (torch.tensor(rows), torch.tensor(par), torch.tensor(tgt))
    idx_keep = (idx[0], torch.tensor([at[p] for p in par]), idx[2])
    return (tok, posr.contiguous(), mask.contiguous(), idx, torch.tensor(unit), T, nrows, torch.tensor(keep),
            idx_keep)


def seq_logps(logp, idx, unit, nunits):
    lp = logp[idx[0], idx[1], idx[2]]
    return torch.zeros(nunits, dtype=lp.dtype).index_add(0, unit, lp)


def forward_flops(L, C, H, V, F_, nrows, T, head_rows):
    """prefopt_model_forward_flops for GPT-2 (KD = HD = C, two MLP matrices, full T x T attention, the LM head at
    head_rows positions per row)."""
    tok = nrows * T
    per_layer = 2 * tok * (C * C + 2 * C * C + C * C + 2 * C * F_) + 4.0 * nrows * T * T * C
    return L * per_layer + 2 * nrows * head_rows * C * V


def sgemm_peak():
    """Best of 7 torch.mm of 1024^3 after a warm-up, as `prefopt bench` measures its own (noise only lowers it)."""
    n = 1024
    a, b = torch.rand(n, n), torch.rand(n, n)
    torch.mm(a, b)
    ts = []
    for _ in range(7):
        t0 = time.perf_counter()
        torch.mm(a, b)
        ts.append(time.perf_counter() - t0)
    return 2.0 * n ** 3 / min(ts)


def rss_peak_mib():
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def amp():
    """The autocast context of --amp (a no-op context for none)."""
    import contextlib
    if args.amp == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def bf16_peak():
    """Best of 7 bf16 torch.mm of 1024^3 (what autocast's products run on), for the MFU of an --amp bf16 run."""
    n = 1024
    a, b = torch.rand(n, n).bfloat16(), torch.rand(n, n).bfloat16()
    torch.mm(a, b)
    ts = []
    for _ in range(7):
        t0 = time.perf_counter()
        torch.mm(a, b)
        ts.append(time.perf_counter() - t0)
    return 2.0 * n ** 3 / min(ts)


def main():
    L, C, H, V = args.layers, args.hidden, args.heads, args.vocab
    gen = torch.Generator().manual_seed(args.seed)
    policy = GPT2(L, C, H, V, args.max_position)
    ref = GPT2(L, C, H, V, args.max_position)
    ref.load_state_dict(policy.state_dict())
    for p_ in ref.parameters():
        p_.requires_grad_(False)
    opt = torch.optim.AdamW(policy.parameters(), lr=args.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    peak_before = sgemm_peak()
    nunits = 2 * args.pairs
    chosen = torch.arange(0, nunits, 2)
    rejected = torch.arange(1, nunits, 2)
    times, losses = [], []
    for s in range(args.warmup + args.steps):
        tok, pos, mask, idx, unit, T, nrows, keep, idx_keep = build_rows(
            args.pairs, args.prompt_len, args.chosen_len, args.rejected_len, args.layout, V, gen)
        if args.logits_to_keep:
            idx = idx_keep
        else:
            keep = None
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with amp():
            pi = seq_logps(policy(tok, pos, mask, keep), idx, unit, nunits)
        with torch.no_grad(), amp():
            rf = seq_logps(ref(tok, pos, mask, keep), idx, unit, nunits)
        pi, rf = pi.float(), rf.float()
        z = args.beta * ((pi[chosen] - rf[chosen]) - (pi[rejected] - rf[rejected]))
        loss = -F.logsigmoid(z).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        opt.step()
        dt = time.perf_counter() - t0
        losses.append(float(loss))
        if s >= args.warmup:
            times.append(dt)
    tstep = statistics.median(times)
    peak_after = sgemm_peak()
    peak = max(peak_before, peak_after)
    if args.amp == "bf16":  # MFU against the rate of the products autocast runs, measured alike
        peak = peak_before = peak_after = bf16_peak()
    fwd = forward_flops(L, C, H, V, 4 * C, nrows, T, len(keep) if keep is not None else T)
    flops = 4.0 * fwd
    packed_tokens = args.pairs * (args.prompt_len + args.chosen_len + args.rejected_len)
    trl_tokens = args.pairs * (2 * args.prompt_len + args.chosen_len + args.rejected_len)
    nparams = sum(p_.numel() for p_ in policy.parameters())
    cfg = torch.__config__.show()
    import re
    blas = re.findall(r"BLAS_INFO=[^,]*|LAPACK_INFO=[^,]*|USE_MKLDNN=[^,]*|Intel\(R\) MKL-DNN v[0-9.]*|"
                      r"CPU capability usage: \w+", cfg)
    out = {
        "bench": "torch_dpo_step", "torch": torch.__version__, "layout": args.layout, "amp": args.amp,
        "logits_to_keep": bool(args.logits_to_keep), "layers": L, "hidden": C,
        "heads": H, "vocab": V, "params": nparams, "pairs": args.pairs, "prompt_len": args.prompt_len,
        "chosen_len": args.chosen_len, "rejected_len": args.rejected_len, "rows": nrows, "row_tokens": T,
        "threads": args.threads, "blis_arch_type": os.environ.get("BLIS_ARCH_TYPE", ""),
        "steps": args.steps, "warmup": args.warmup,
        "step_s": tstep, "step_s_min": min(times), "step_s_max": max(times),
        # tokens of the pairs (prompt counted once, as prefopt bench's tokens_per_s) and TRL's count
        "tokens_per_step": packed_tokens, "tokens_per_s": packed_tokens / tstep,
        "trl_tokens_per_step": trl_tokens, "trl_tokens_per_s": trl_tokens / tstep,
        "flops_forward": fwd, "flops_step": flops, "gflops": flops / tstep * 1e-9,
        "sgemm_peak_gflops": peak * 1e-9, "sgemm_before_gflops": peak_before * 1e-9,
        "sgemm_after_gflops": peak_after * 1e-9, "mfu": flops / tstep / peak,
        "loss_first": losses[0], "loss_last": losses[-1], "peak_rss_mib": rss_peak_mib(),
        "torch_config": "; ".join(blas),
    }
    print(f"torch {torch.__version__} ({'; '.join(blas)}), {args.threads} threads, BLIS_ARCH_TYPE="
          f"{out['blis_arch_type'] or 'unset'} | GPT-2 {L}x{C}, {nparams / 1e6:.1f}M params, layout {args.layout}: "
          f"{nrows} rows x {T} | step {tstep:.4f} s median of {args.steps} | {out['tokens_per_s']:.0f} pair tokens/s "
          f"| {out['gflops']:.2f} GFLOP/s | {'bf16 mm' if args.amp == 'bf16' else 'sgemm'} peak {peak * 1e-9:.2f} GFLOP/s | MFU {out['mfu']:.3f} | "
          f"loss {losses[0]:.6f}", file=sys.stderr)
    line = json.dumps(out)
    print(line)
    if args.json:
        with open(args.json, "a") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()
