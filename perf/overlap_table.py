#!/usr/bin/env python3
"""The table of perf/measure_overlap.sh: per configuration the medians over repetitions (step time, exposed
gradient communication, of it the wait after backward, the weight all-gather), and per rank count the fraction
of the blocking path's exposed time that overlap removed, taken within each repetition and then the median.
usage: overlap_table.py OUT_DIR"""
import json
import os
import statistics
import sys

out = sys.argv[1]
rows = {}
for f in sorted(os.listdir(out)):
    if f.endswith(".jsonl"):
        rows[f[:-6]] = [json.loads(l) for l in open(os.path.join(out, f)) if l.strip()]
med = statistics.median
print("| ranks | configuration | buckets (early) | step s | exposed grad comm s | of it waiting after backward s | weight all-gather s | reps |")
print("|---:|---|---:|---:|---:|---:|---:|---:|")
names = {"o0": "blocking (--overlap-grad-reduce 0)", "o1": "overlap", "z1": "overlap, --zero-stage 1",
         "bf": "overlap, --grad-reduce-dtype bf16"}
for np in (2, 4):
    for k in ("o0", "o1", "z1", "bf"):
        r = rows.get(f"np{np}_{k}")
        if not r:
            continue
        print(f"| {np} | {names[k]} | {r[0]['grad_buckets']} ({r[0]['grad_buckets_early']}) | "
              f"{med(x['step_s'] for x in r):.3f} | {med(x['grad_comm_exposed_s'] for x in r):.4f} | "
              f"{med(x['grad_comm_wait_s'] for x in r):.4f} | {med(x['param_gather_s'] for x in r):.4f} | {len(r)} |")
for np in (2, 4):
    a, b = rows.get(f"np{np}_o0"), rows.get(f"np{np}_o1")
    if a and b:
        n = min(len(a), len(b))
        hid = [1 - b[i]["grad_comm_exposed_s"] / a[i]["grad_comm_exposed_s"] for i in range(n)
               if a[i]["grad_comm_exposed_s"] > 0]
        sp = [a[i]["step_s"] / b[i]["step_s"] for i in range(n)]
        print(f"\n{np} ranks: overlap hid {med(hid):.2f} of the blocking path's exposed communication "
              f"(per repetition {', '.join(f'{h:.2f}' for h in hid)}); step time ratio blocking/overlap "
              f"{med(sp):.3f} ({', '.join(f'{s:.3f}' for s in sp)})")
