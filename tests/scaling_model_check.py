#!/usr/bin/python3
"""Checks of perf/scaling_model.py against closed forms written here from the definitions (README "Scaling model"):
the ring formula, the overlap and gather timelines in their limits, ZeRO-1's traffic and memory, the bf16 factor,
and that the defaults still give the original table. Exit 0 when all hold."""
import argparse
import importlib.util
import math
import sys

src = sys.argv[1]
spec = importlib.util.spec_from_file_location("sm", f"{src}/perf/scaling_model.py")
sm = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sm)
fails = []


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what)
    if not cond:
        fails.append(what)


def close(x, y, rel=1e-9):  # timelines subtract ~1e5 s windows
    return abs(x - y) <= rel * max(abs(x), abs(y), 1e-300)


def opts(**kw):
    a = argparse.Namespace(node_flops=186.5e9 * 64, mem_bw=200.0, link_gbs=12.5, latency_us=2.0, precision="fp32",
                           bf16_factor=3.82, overlap=0, overlap_fraction=0.65, zero_stage=0, grad_reduce_dtype="fp32",
                           grad_bucket_mib=32.0, buckets="chunks")
    for k, v in kw.items():
        setattr(a, k, v)
    return a


s7, s1 = sm.SHAPES["llama-7b"], sm.SHAPES["llama-1b"]
T = 1024
bw, lat = 12.5e9, 2e-6
# 1. ring: one 1 GB bucket over 256 nodes, one collective
n, nb = 256, 1.0e9
check(close(sm.ring_s(nb, n, bw, lat, 2, float("inf")), 2 * (n - 1) / n * nb / bw + 2 * (n - 1) * lat),
      "ring all-reduce = 2 (n-1)/n B/bw + 2 (n-1) lat")
check(close(sm.ring_s(nb, n, bw, lat, 1, float("inf")) * 2, sm.ring_s(nb, n, bw, lat, 2, float("inf"))),
      "reduce-scatter is half an all-reduce")
check(sm.ring_s(nb, 1, bw, lat, 2) == 0.0, "one node moves nothing")
# 2. buckets cover every parameter once; 7B: head, 32 layers, embeddings (each layer > 32 MiB)
bk = sm.buckets(s7, 2, T, 32 << 20, 4.0)
check(sum(p for p, _ in bk) == sm.params(s7), "buckets hold every parameter once")
check(len(bk) == 34, f"7B at 32 MiB: 34 buckets (got {len(bk)})")
check(close(sum(f for _, f in bk), sm.forward_flops(s7, 2, T)), "bucket FLOPs sum to the forward")
# 3. overlap limits, one step of the 7B at 256 nodes, 2 pairs per node, layer buckets
base = dict(buckets="layers")
blk = sm.step_time(s7, 2, 512, 256, 256, 256, opts(**base))
ov0 = sm.step_time(s7, 2, 512, 256, 256, 256, opts(overlap=1, overlap_fraction=0.0, **base))
check(close(ov0["comm"], blk["comm"]), "overlap fraction 0 exposes the whole blocking reduction")
big = opts(overlap=1, overlap_fraction=1.0, node_flops=1e9, **base)  # backward far longer than the traffic
ov1 = sm.step_time(s7, 2, 512, 256, 256, 256, big)
# the embeddings' backward has no FLOPs here, so layer 0's bucket is ready at the very end too
last = sum(sm.ring_s(4.0 * p, 256, bw, lat, 2, float("inf")) for p, _ in bk[-2:])
check(close(ov1["comm"], last), "long backward, full overlap: only the last buckets (layer 0, embeddings) exposed")
fr = [sm.step_time(s7, 2, 512, 256, 256, 256, opts(overlap=1, overlap_fraction=f, **base))["comm"]
      for f in (0.0, 0.3, 0.65, 1.0)]
check(all(x >= y for x, y in zip(fr, fr[1:])), "exposed time falls as the overlap fraction grows")
ov65 = sm.step_time(s7, 2, 512, 256, 256, 256, opts(overlap=1, **base))
ideal = sm.step_time(s7, 2, 512, 256, 256, 256, opts(overlap=1, overlap_fraction=1.0, **base))["comm"]
check(close(ov65["comm"], ideal + 0.35 * (blk["comm"] - ideal), 1e-9),
      "exposed = ideal + (1 - fraction) x (blocking - ideal)")
# 4. ZeRO-1: reduce-scatter (half the ring) + fp32 weight gather; AdamW / d; nothing at one node
z = sm.step_time(s7, 2, 512, 256, 256, 256, opts(zero_stage=1, **base))
check(close(z["comm"], blk["comm"] / 2), "zero 1 blocking: reduce-scatter = half the all-reduce")
check(close(z["gather"], blk["comm"] / 2), "zero 1 blocking: fp32 weight all-gather = the other half")
check(close(z["opt"], blk["opt"] / 256), "zero 1: AdamW on 1/d of the parameters")
z1 = sm.step_time(s7, 2, 512, 256, 256, 1, opts(overlap=1, zero_stage=1, **base))
b1 = sm.step_time(s7, 2, 512, 256, 256, 1, opts(**base))
check(close(z1["t"], b1["t"]), "one node: zero 1 + overlap = blocking")
zg = sm.step_time(s7, 2, 512, 256, 256, 256, opts(overlap=1, zero_stage=1, overlap_fraction=1.0,
                                                  node_flops=1e9, **base))
check(close(zg["gather"], sum(sm.ring_s(4.0 * p, 256, bw, lat, 1, float("inf")) for p, _ in bk[-2:])),
      "long forward, full overlap: only the gathers of embeddings and layer 0 (needed at once) are exposed")
for prec, full in (("fp32", 20.0), ("bf16", 20.0)):
    t1, o1 = sm.state_bytes_per_param(opts(precision=prec, zero_stage=1), 1)
    t8, o8 = sm.state_bytes_per_param(opts(precision=prec, zero_stage=1), 8)
    wcopy = 2.0 if prec == "bf16" else 0.0
    check(t1 == full and close(o8, 8 + wcopy + 8 / 8) and close(t8, 12 + 8 / 8),
          f"{prec} state: {full:g} B/param at d 1; weights+grads+optimizer 8{'+2' if wcopy else ''} + 8/d")
# 5. bf16 compute and bf16 gradient bytes
bf = sm.step_time(s7, 2, 512, 256, 256, 256, opts(precision="bf16", **base))
check(close(bf["comp"] * 3.82, blk["comp"]) and close(bf["comm"], blk["comm"]),
      "bf16: compute / factor, gradients still fp32 on the wire")
hb = sm.step_time(s7, 2, 512, 256, 256, 256, opts(grad_reduce_dtype="bf16", **base))
check(abs(hb["comm"] - blk["comm"] / 2) < 34 * 2 * 255 * lat, "bf16 gradient reduction: half the bytes")
# 6. defaults = the original model (README's old table: 7B strong 256 nodes 0.604, 1B weak 512 nodes 0.871)
a = opts()
r1 = sm.step_time(s7, 512, 512, 256, 256, 1, a)["t"]
r = sm.step_time(s7, 2, 512, 256, 256, 256, a)["t"]
check(round(r1 / (256 * r), 3) == 0.604, f"defaults: 7B strong at 256 nodes 0.604 (got {r1 / (256 * r):.3f})")
w1 = sm.step_time(s1, 8, 512, 256, 256, 1, a)["t"]
w = sm.step_time(s1, 8, 512, 256, 256, 512, a)["t"]
check(round(w1 / w, 3) == 0.871, f"defaults: 1B weak at 512 nodes 0.871 (got {w1 / w:.3f})")
print(f"{len(fails)} failure(s)")
sys.exit(1 if fails else 0)
