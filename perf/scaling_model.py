#!/usr/bin/python3
"""Scaling model for prefopt DPO steps on 1 to 512 CPU nodes (perf/README.md, "Scaling model").

Predicted step time = compute + optimizer + data-parallel gradient all-reduce, from:
  * compute rate: the achieved GFLOP/s per core that `prefopt bench` measured (--bench-json: its JSON line; the
    rate is gflops / (ranks x BLIS threads)), times --cores per node. The same FLOP formula as the bench
    (prefopt_model_forward_flops: 2 per multiply-add, full T x T attention, LM head), 4 forwards per step
    (policy forward + backward = 3, reference = 1), prompt shared by chosen and rejected (packed rows).
  * optimizer: AdamW streams p, g, m, v and writes p, m, v (28 bytes/parameter) plus the gradient-norm pass
    (4 bytes/parameter) at --mem-bw GB/s per node.
  * gradient all-reduce: ring all-reduce of the fp32 gradients (4 bytes x parameters) in 32 MiB buckets, as
    prefopt_model_allreduce_grads does: per bucket 2 (N-1)/N x bytes / link bandwidth + 2 (N-1) x latency. No
    overlap with backward (the engine all-reduces after the backward), one rank group per node (tensor parallel
    over the node's cores; intra-node TP communication is inside the measured per-core rate when --bench-json
    comes from a multi-rank run, and otherwise not modelled).
  * the state must fit: 20 bytes/parameter (policy weights, gradients, two AdamW moments, reference weights) plus
    activations, checked against --node-mem GB (a warning, not a layout change: one TP group per node).
Weak scaling keeps --pairs per node (the global batch grows with N): efficiency = t(1) / t(N). Strong scaling
keeps --global-pairs (per-node pairs = global / N, N <= global): efficiency = t(1) / (N t(N)).

  /usr/bin/python3 perf/scaling_model.py --bench-json bench.json [--cores 64 --link-gbs 12.5 --latency-us 2]
"""
import argparse
import json
import math

SHAPES = {
    # Llama 3.2 1B (tied embeddings) and Llama 2 7B
    "llama-1b": dict(L=16, C=2048, H=32, KV=8, D=64, F=8192, V=128256, tied=True),
    "llama-7b": dict(L=32, C=4096, H=32, KV=32, D=128, F=11008, V=32000, tied=False),
    "llama-8b": dict(L=32, C=4096, H=32, KV=8, D=128, F=14336, V=128256, tied=False),  # Llama-3-8B (README worked example)
}


def params(s):
    C, L, HD, KD, F, V = s["C"], s["L"], s["H"] * s["D"], s["KV"] * s["D"], s["F"], s["V"]
    per_layer = C * HD + 2 * C * KD + HD * C + 3 * C * F + 2 * C
    return L * per_layer + V * C * (1 if s["tied"] else 2) + C


def forward_flops(s, rows, T):
    """prefopt_model_forward_flops for Llama (three MLP matrices)."""
    C, HD, KD, F, V = s["C"], s["H"] * s["D"], s["KV"] * s["D"], s["F"], s["V"]
    tok = rows * T
    per_layer = 2 * tok * (C * HD + 2 * C * KD + HD * C + 3 * C * F) + 4.0 * rows * T * T * HD
    return s["L"] * per_layer + 2 * tok * C * V


def activations_bytes(s, rows, T):
    """Layer activations the engine keeps without checkpointing (model_internal.h layer_acts: n1, q, k, v, y,
    xmid, n2, h1, h2, a + softmax probabilities) plus residual stream and logits, fp32."""
    C, HD, KD, F, V = s["C"], s["H"] * s["D"], s["KV"] * s["D"], s["F"], s["V"]
    tok = rows * T
    per_layer = tok * (3 * C + 2 * HD + 2 * KD + 3 * F) + rows * s["H"] * T * T
    return 4.0 * (s["L"] * (per_layer + tok * C) + 2 * tok * V)


def allreduce_s(nbytes, n, bw, lat, bucket=32 << 20):
    if n == 1:
        return 0.0
    t, left = 0.0, nbytes
    while left > 0:
        b = min(bucket, left)
        t += 2.0 * (n - 1) / n * b / bw + 2.0 * (n - 1) * lat
        left -= b
    return t


def step_time(s, pairs, P, Cn, Rn, n, a):
    T = P + Cn + Rn
    flops = 4.0 * forward_flops(s, pairs, T)
    comp = flops / a.node_flops
    npar = params(s)
    opt = 32.0 * npar / (a.mem_bw * 1e9)
    comm = allreduce_s(4.0 * npar, n, a.link_gbs * 1e9, a.latency_us * 1e-6)
    return comp, opt, comm, flops, pairs * T


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bench-json", help="a `prefopt bench` JSON line (measured rate); else --gflops-per-core")
    ap.add_argument("--gflops-per-core", type=float, default=0.0, help="sustained GFLOP/s per core")
    ap.add_argument("--cores", type=int, default=64, help="cores per node")
    ap.add_argument("--mem-bw", type=float, default=200.0, help="node memory bandwidth, GB/s (AdamW)")
    ap.add_argument("--node-mem", type=float, default=256.0, help="node memory, GB")
    ap.add_argument("--link-gbs", type=float, default=12.5, help="injection bandwidth per node, GB/s (100 Gb/s)")
    ap.add_argument("--latency-us", type=float, default=2.0, help="per-message latency, microseconds")
    ap.add_argument("--pairs", type=int, default=8, help="pairs per node per step (weak scaling)")
    ap.add_argument("--global-pairs", type=int, default=512, help="pairs per step (strong scaling)")
    ap.add_argument("--prompt-len", type=int, default=512)
    ap.add_argument("--chosen-len", type=int, default=256)
    ap.add_argument("--rejected-len", type=int, default=256)
    ap.add_argument("--shapes", default="llama-1b,llama-7b")
    ap.add_argument("--markdown", action="store_true", help="print README tables")
    a = ap.parse_args()
    src = f"--gflops-per-core {a.gflops_per_core}"
    if a.bench_json:
        with open(a.bench_json) as f:
            j = json.loads([l for l in f if l.startswith("{")][-1])
        a.gflops_per_core = j["gflops"] / (j["ranks"] * j["blis_threads"])
        src = (f"measured: prefopt bench {j['shape']} {j['ranks']} rank(s) x {j['blis_threads']} thread(s), "
               f"{j['gflops']:.1f} GFLOP/s, MFU {j['mfu']:.3f}, BLIS {j['blis_arch']}")
    if a.gflops_per_core <= 0:
        ap.error("need --bench-json or --gflops-per-core")
    a.node_flops = a.gflops_per_core * 1e9 * a.cores
    print(f"compute rate {a.gflops_per_core:.1f} GFLOP/s per core ({src}) x {a.cores} cores = "
          f"{a.node_flops * 1e-12:.2f} TFLOP/s per node; link {a.link_gbs} GB/s, latency {a.latency_us} us; "
          f"memory bandwidth {a.mem_bw} GB/s; rows [{a.prompt_len} | {a.chosen_len} | {a.rejected_len}]\n")
    nodes = [1 << k for k in range(10)]
    for name in a.shapes.split(","):
        s = SHAPES[name]
        npar = params(s)
        T = a.prompt_len + a.chosen_len + a.rejected_len
        mem = 20.0 * npar + activations_bytes(s, a.pairs, T)
        warn = "" if mem <= a.node_mem * 1e9 else f"  WARNING: needs {mem / 1e9:.0f} GB > {a.node_mem} GB per node"
        print(f"### {name}: {npar / 1e9:.2f} B parameters, state {20 * npar / 1e9:.1f} GB + activations "
              f"{activations_bytes(s, a.pairs, T) / 1e9:.1f} GB per node{warn}\n")
        print("| nodes | weak: step s | compute | AdamW | all-reduce | pair-tokens/s | efficiency "
              "| strong: pairs/node | step s | efficiency |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        base = sum(step_time(s, a.pairs, a.prompt_len, a.chosen_len, a.rejected_len, 1, a)[:3])
        sbase = sum(step_time(s, a.global_pairs, a.prompt_len, a.chosen_len, a.rejected_len, 1, a)[:3])
        for n in nodes:
            comp, opt, comm, flops, tok = step_time(s, a.pairs, a.prompt_len, a.chosen_len, a.rejected_len, n, a)
            t = comp + opt + comm
            row = (f"| {n} | {t:.2f} | {comp:.2f} | {opt:.3f} | {comm:.3f} | {n * tok / t:,.0f} | "
                   f"{base / t:.3f} |")
            if n <= a.global_pairs:
                sp = a.global_pairs // n
                c2, o2, m2, _, _ = step_time(s, sp, a.prompt_len, a.chosen_len, a.rejected_len, n, a)
                t2 = c2 + o2 + m2
                row += f" {sp} | {t2:.3f} | {sbase / (n * t2):.3f} |"
            else:
                row += " - | - | - |"
            print(row)
        print()


if __name__ == "__main__":
    main()
