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
    prefopt_model_allreduce_grads did: per bucket 2 (N-1)/N x bytes / link bandwidth + 2 (N-1) x latency. No
    overlap with backward (the defaults: the original model), one rank group per node (tensor parallel
    over the node's cores; intra-node TP communication is inside the measured per-core rate when --bench-json
    comes from a multi-rank run, and otherwise not modelled).
  * the state must fit: 20 bytes/parameter (policy weights, gradients, two AdamW moments, reference weights) plus
    activations, checked against --node-mem GB (a warning, not a layout change: one TP group per node).
Options for the engine's data-parallel paths (README "The scaling model with overlap, ZeRO-1 and bf16"):
  * --overlap 1: gradsync.c's buckets (backward order: head, layer L-1 .. 0, embeddings; closed at the first layer
    boundary past --grad-bucket-mib); bucket b's ring starts when backward (2 forwards' FLOPs per piece) has left
    it and the link is free; exposed = ideal + (1 - --overlap-fraction) x (blocking - ideal), the ideal being
    what runs past the end of backward (0.65: the measured share of the wait after backward that overlap removed,
    2 ranks x 1 thread on this machine).
  * --zero-stage 1: ring reduce-scatter per bucket + fp32 weight all-gather (in forward order, hidden behind the
    policy forward with --overlap 1, same fraction), AdamW on 1/N; state 12 + 8/N bytes/parameter.
  * --precision bf16: compute rate x --bf16-factor (3.82: measured oneDNN bf16 / BLIS sgemm over the engine's
    products); gradients, their reduction and AdamW stay fp32. --grad-reduce-dtype bf16 halves gradient bytes.
  * --buckets layers: ring latency once per gradsync bucket (chunks, the default: once per 32 MiB).
  * --compare: one table of fp32/bf16 x blocking/overlap/overlap+zero1 efficiencies per shape.
Weak scaling keeps --pairs per node (the global batch grows with N): efficiency = t(1) / t(N). Strong scaling
keeps --global-pairs (per-node pairs = global / N, N <= global): efficiency = t(1) / (N t(N)).

  /usr/bin/python3 perf/scaling_model.py --bench-json bench.json [--cores 64 --link-gbs 12.5 --latency-us 2]
  /usr/bin/python3 perf/scaling_model.py --bench-json bench.json --compare --buckets layers
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


def ring_s(nbytes, n, bw, lat, phases, chunk=32 << 20):
    """Ring collective over n nodes in chunks of `chunk` bytes: per chunk phases x (n-1)/n x bytes / bw +
    phases x (n-1) x latency (phases 2: all-reduce = reduce-scatter + all-gather; 1: either half)."""
    if n == 1:
        return 0.0
    t, left = 0.0, nbytes
    while left > 0:
        b = min(chunk, left)
        t += phases * ((n - 1) / n * b / bw + (n - 1) * lat)
        left -= b
    return t


def allreduce_s(nbytes, n, bw, lat, bucket=32 << 20):
    return ring_s(nbytes, n, bw, lat, 2, bucket)


def pieces(s, rows, T):
    """The flat gradient buffer in the order backward finishes it (src/model/params.c: reverse registry order):
    (parameters, forward FLOPs) for the LM head with the final norm, then layer L-1 .. 0, then the embeddings
    (which hold the head's matrix too when the embeddings are tied: that gradient is final only after the
    embedding backward)."""
    C, HD, KD, F, V = s["C"], s["H"] * s["D"], s["KV"] * s["D"], s["F"], s["V"]
    tok = rows * T
    layer_p = C * HD + 2 * C * KD + HD * C + 3 * C * F + 2 * C
    layer_f = 2 * tok * (C * HD + 2 * C * KD + HD * C + 3 * C * F) + 4.0 * rows * T * T * HD
    head_f = 2 * tok * C * V
    if s["tied"]:
        return [(C, head_f)] + [(layer_p, layer_f)] * s["L"] + [(V * C, 0.0)]
    return [(V * C + C, head_f)] + [(layer_p, layer_f)] * s["L"] + [(V * C, 0.0)]


def buckets(s, rows, T, bucket_bytes, elem):
    """gradsync.c's buckets: a bucket closes at the first piece boundary past bucket_bytes. Returns
    (parameters, forward FLOPs of its pieces) per bucket, in backward order."""
    out, p, f = [], 0, 0.0
    for pp, ff in pieces(s, rows, T):
        p, f = p + pp, f + ff
        if p * elem >= bucket_bytes:
            out.append((p, f))
            p, f = 0, 0.0
    if p:
        out.append((p, f))
    return out


def overlap_exposed(ready, costs, total_window, frac):
    """Buckets start when ready (and the link is free), one after the other; exposed = what runs past the end
    of the window. frac is the share of the ideally hidden time that is really hidden: exposed = sim + (1 - frac)
    x (serial - sim)."""
    end = 0.0
    for r, c in zip(ready, costs):
        end = max(end, r) + c
    sim = max(0.0, end - total_window)
    serial = sum(costs)
    return sim + (1.0 - frac) * (serial - sim)


def gather_exposed(costs_fwd_order, fwd_times, frac):
    """ZeRO-1 weight all-gather started after the optimizer, all buckets issued at once in forward order
    (gradsync_gather_start), serialised on the link; forward waits for a bucket's weights before its layers."""
    t, done = 0.0, 0.0
    for c, ft in zip(costs_fwd_order, fwd_times):
        done += c
        t = max(t, done) + ft
    sim = max(0.0, t - sum(fwd_times))
    serial = sum(costs_fwd_order)
    return sim + (1.0 - frac) * (serial - sim)


def step_time(s, pairs, P, Cn, Rn, n, a):
    """Returns dict: comp, opt, comm (exposed gradient reduction), gather (exposed weight gather), flops, tok."""
    T = P + Cn + Rn
    flops = 4.0 * forward_flops(s, pairs, T)
    rate = a.node_flops * (a.bf16_factor if a.precision == "bf16" else 1.0)
    comp = flops / rate
    npar = params(s)
    bw, lat = a.link_gbs * 1e9, a.latency_us * 1e-6
    d = n if a.zero_stage == 1 else 1
    opt = 32.0 * npar / d / (a.mem_bw * 1e9)
    elem = 2.0 if a.grad_reduce_dtype == "bf16" else 4.0
    phases = 1 if a.zero_stage == 1 else 2  # reduce-scatter alone, or all-reduce
    gather = 0.0
    # chunks: one collective per 32 MiB of the buffer (the original model; its table is reproduced with the
    # defaults); layers: one collective per gradsync.c bucket (what the engine issues, blocking or overlapped)
    chunk = (32 << 20) if a.buckets == "chunks" else float("inf")
    if not a.overlap and a.zero_stage == 0 and elem == 4.0 and a.buckets == "chunks":
        comm = allreduce_s(4.0 * npar, n, bw, lat)  # the original model, unchanged
    else:
        bk = buckets(s, pairs, T, a.grad_bucket_mib * (1 << 20), 4.0)
        costs = [ring_s(elem * p, n, bw, lat, phases, chunk) for p, _ in bk]
        if a.overlap:
            # backward = 2 forwards' FLOPs of each piece, head first; the window is the policy backward
            bt = [2.0 * f / rate for _, f in bk]
            ready, acc = [], 0.0
            for x in bt:
                acc += x
                ready.append(acc)
            comm = overlap_exposed(ready, costs, acc, a.overlap_fraction)
        else:
            comm = sum(costs)
        if a.zero_stage == 1:
            gcost = [ring_s(4.0 * p, n, bw, lat, 1, chunk) for p, _ in reversed(bk)]  # fp32 weights, forward order
            if a.overlap:
                gather = gather_exposed(gcost, [f / rate for _, f in reversed(bk)], a.overlap_fraction)
            else:
                gather = sum(gcost)
    return dict(comp=comp, opt=opt, comm=comm, gather=gather, flops=flops, tok=pairs * T,
                t=comp + opt + comm + gather)


def state_bytes_per_param(a, d):
    """Per node (one replica): policy weights + gradients + AdamW moments + reference. fp32: 4 + 4 + 8 + 4;
    ZeRO-1 divides the moments by d (the fp32 weights stay whole on every replica: they are what is gathered);
    bf16 (README "What runs in bf16") adds a 2-byte bf16 copy of the policy and holds the reference in bf16 only."""
    moments = 8.0 / (d if a.zero_stage == 1 else 1)
    if a.precision == "bf16":
        return 4 + 2 + 4 + moments + 2, 4 + 2 + 4 + moments
    return 4 + 4 + moments + 4, 4 + 4 + moments


MODES = {"blocking": (0, 0), "overlap": (1, 0), "overlap+zero1": (1, 1)}


def table(s, a, nodes):
    """The per-configuration table (the original layout, plus the exposed weight gather when ZeRO-1 is on)."""
    base = step_time(s, a.pairs, a.prompt_len, a.chosen_len, a.rejected_len, 1, a)["t"]
    sbase = step_time(s, a.global_pairs, a.prompt_len, a.chosen_len, a.rejected_len, 1, a)["t"]
    zg = a.zero_stage == 1
    print("| nodes | weak: step s | compute | AdamW | " + ("exposed reduce-scatter | exposed gather | " if zg else
          ("exposed all-reduce | " if a.overlap else "all-reduce | ")) + "pair-tokens/s | efficiency "
          "| strong: pairs/node | step s | efficiency |")
    print("|---:|---:|---:|---:|---:|" + ("---:|" if zg else "") + "---:|---:|---:|---:|---:|")
    for n in nodes:
        r = step_time(s, a.pairs, a.prompt_len, a.chosen_len, a.rejected_len, n, a)
        t = r["t"]
        row = (f"| {n} | {t:.2f} | {r['comp']:.2f} | {r['opt']:.3f} | {r['comm']:.3f} | "
               + (f"{r['gather']:.3f} | " if zg else "") + f"{n * r['tok'] / t:,.0f} | {base / t:.3f} |")
        if n <= a.global_pairs:
            sp = a.global_pairs // n
            t2 = step_time(s, sp, a.prompt_len, a.chosen_len, a.rejected_len, n, a)["t"]
            row += f" {sp} | {t2:.3f} | {sbase / (n * t2):.3f} |"
        else:
            row += " - | - | - |"
        print(row)
    print()


def compare(names, a, nodes):
    """One table per shape: weak and strong efficiency for fp32/bf16 x blocking/overlap/overlap+zero1, each
    against one node of the same configuration."""
    keep = (a.precision, a.overlap, a.zero_stage)
    for name in names:
        s = SHAPES[name]
        cols = [(p, m) for p in ("fp32", "bf16") for m in MODES]
        print(f"### {name}: efficiency (weak: {a.pairs} pairs/node; strong: {a.global_pairs} pairs/step), "
              f"overlap fraction {a.overlap_fraction}, bf16 factor {a.bf16_factor}, grad-reduce "
              f"{a.grad_reduce_dtype}, buckets {a.grad_bucket_mib} MiB ({a.buckets})\n")
        hdr = " | ".join(f"{p} {m}" for p, m in cols)
        print(f"| nodes | scaling | {hdr} |")
        print("|---:|---|" + "---:|" * len(cols))
        res = {}
        for p, m in cols:
            a.precision, (a.overlap, a.zero_stage) = p, MODES[m]
            wb = step_time(s, a.pairs, a.prompt_len, a.chosen_len, a.rejected_len, 1, a)["t"]
            sb = step_time(s, a.global_pairs, a.prompt_len, a.chosen_len, a.rejected_len, 1, a)["t"]
            for n in nodes:
                w = step_time(s, a.pairs, a.prompt_len, a.chosen_len, a.rejected_len, n, a)
                res[(p, m, n, "weak")] = (w["t"], wb / w["t"])
                if n <= a.global_pairs:
                    st = step_time(s, a.global_pairs // n, a.prompt_len, a.chosen_len, a.rejected_len, n, a)
                    res[(p, m, n, "strong")] = (st["t"], sb / (n * st["t"]))
        for kind in ("weak", "strong"):
            for n in nodes:
                cells = []
                for p, m in cols:
                    v = res.get((p, m, n, kind))
                    cells.append("-" if v is None else f"{v[1]:.3f} ({v[0]:.2f} s)")
                print(f"| {n} | {kind} | " + " | ".join(cells) + " |")
        print()
    a.precision, a.overlap, a.zero_stage = keep


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
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                    help="bf16: compute rate x --bf16-factor (fp32 masters, gradients and AdamW unchanged)")
    ap.add_argument("--bf16-factor", type=float, default=round(53.5 / 14.0, 2),
                    help="bf16 / fp32 GEMM rate; default 3.82 = oneDNN bf16 53.5 / BLIS sgemm 14.0 GFLOP/s, "
                         "FLOP-weighted over the engine's products (perf/results/bf16/gemm_backends.txt)")
    ap.add_argument("--overlap", type=int, choices=(0, 1), default=0,
                    help="1: bucket reductions overlap the backward (--overlap-grad-reduce 1); 0: after it")
    ap.add_argument("--overlap-fraction", type=float, default=0.65,
                    help="share of the ideally hidden communication that is hidden (0.65: measured share of the "
                         "wait after backward that overlap removed, 2 ranks x 1 thread, README 'Scaling model')")
    ap.add_argument("--zero-stage", type=int, choices=(0, 1), default=0,
                    help="1: reduce-scatter + fp32 weight all-gather (in the next forward when --overlap 1), "
                         "AdamW on 1/dp of the parameters")
    ap.add_argument("--grad-reduce-dtype", choices=("fp32", "bf16"), default="fp32")
    ap.add_argument("--grad-bucket-mib", type=float, default=32.0, help="gradient bucket size (gradsync.c)")
    ap.add_argument("--buckets", choices=("chunks", "layers"), default="chunks",
                    help="latency count: chunks = one ring per 32 MiB (the original model, default); layers = "
                         "one ring per gradsync bucket (closed at the first layer boundary past "
                         "--grad-bucket-mib, as the engine issues them)")
    ap.add_argument("--compare", action="store_true",
                    help="efficiency table of fp32/bf16 x blocking/overlap/overlap+zero1 instead of the "
                         "per-configuration tables")
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
    if not 0.0 <= a.overlap_fraction <= 1.0 or a.bf16_factor <= 0:
        ap.error("--overlap-fraction must lie in [0, 1] and --bf16-factor be positive")
    a.node_flops = a.gflops_per_core * 1e9 * a.cores
    print(f"compute rate {a.gflops_per_core:.1f} GFLOP/s per core ({src}) x {a.cores} cores = "
          f"{a.node_flops * 1e-12:.2f} TFLOP/s per node; link {a.link_gbs} GB/s, latency {a.latency_us} us; "
          f"memory bandwidth {a.mem_bw} GB/s; rows [{a.prompt_len} | {a.chosen_len} | {a.rejected_len}]\n")
    nodes = [1 << k for k in range(10)]
    if a.compare:
        compare(a.shapes.split(","), a, nodes)
        return
    default = (a.precision, a.overlap, a.zero_stage, a.grad_reduce_dtype, a.buckets) == ("fp32", 0, 0, "fp32", "chunks")
    if not default:
        print(f"precision {a.precision}" + (f" (compute x {a.bf16_factor})" if a.precision == "bf16" else "")
              + f", overlap {a.overlap}" + (f" (fraction {a.overlap_fraction})" if a.overlap else "")
              + f", zero-stage {a.zero_stage}, grad-reduce {a.grad_reduce_dtype}, buckets {a.grad_bucket_mib} MiB "
              f"({a.buckets})\n")
    for name in a.shapes.split(","):
        s = SHAPES[name]
        npar = params(s)
        T = a.prompt_len + a.chosen_len + a.rejected_len
        act = activations_bytes(s, a.pairs, T)
        if default:
            state = 20.0 * npar
            mem = state + act
            warn = "" if mem <= a.node_mem * 1e9 else f"  WARNING: needs {mem / 1e9:.0f} GB > {a.node_mem} GB per node"
            print(f"### {name}: {npar / 1e9:.2f} B parameters, state {state / 1e9:.1f} GB + activations "
                  f"{act / 1e9:.1f} GB per node{warn}\n")
        else:
            tot1, om1 = state_bytes_per_param(a, 1)
            totd, omd = state_bytes_per_param(a, 512)
            print(f"### {name}: {npar / 1e9:.2f} B parameters, state {tot1 * npar / 1e9:.1f} GB "
                  f"({tot1:g} B/param; weights+gradients+optimizer {om1:g}, at 512 nodes {omd:.3f} B/param, "
                  f"state {totd * npar / 1e9:.1f} GB) + activations {act / 1e9:.1f} GB per node\n")
        table(s, a, nodes)


if __name__ == "__main__":
    main()
