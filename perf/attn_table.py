#!/usr/bin/env python3
"""Table of perf/attn_bench.sh's raw output: per repetition the step time (median of the run's steps), the
attention region's seconds per step (policy forward + reference forward + backward) and peak RSS, old and new;
medians over repetitions and the new/old ratios within each repetition (interleaved runs).
   perf/attn_table.py DIR"""
import glob
import os
import re
import statistics as st
import sys

d = sys.argv[1]
rows = {}
for f in sorted(glob.glob(os.path.join(d, "*.[0-9]*.txt"))):
    which, rep = os.path.basename(f).split(".")[:2]
    t = open(f).read()
    step = float(re.search(r"^step ([0-9.]+) s median of (\d+)", t, re.M).group(1))
    nsteps = int(re.search(r"^step [0-9.]+ s median of (\d+)", t, re.M).group(1))
    att = sum(float(m.group(1)) for m in re.finditer(r"^\s+attention\s+\d+\s+([0-9.]+)", t, re.M)) / nsteps
    rss = float(re.search(r"peak RSS ([0-9.]+)", t).group(1))
    load = re.search(r"load average: ([0-9.]+)", t).group(1)
    rows.setdefault(rep, {})[which] = (step, att, rss, load)
print("| rep | old step s | new step s | new/old | old attention s/step | new attention s/step | new/old | "
      "old peak RSS MiB | new peak RSS MiB | load (old, new) |")
print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
R = {"step": [], "att": []}
for rep in sorted(rows, key=int):
    o, n = rows[rep].get("old"), rows[rep].get("new")
    if not o or not n:
        continue
    R["step"].append(n[0] / o[0])
    R["att"].append(n[1] / o[1])
    print(f"| {rep} | {o[0]:.2f} | {n[0]:.2f} | {n[0]/o[0]:.2f} | {o[1]:.2f} | {n[1]:.2f} | {n[1]/o[1]:.2f} | "
          f"{o[2]:.0f} | {n[2]:.0f} | {o[3]}, {n[3]} |")
med = lambda k, i: st.median(rows[r][k][i] for r in rows if "old" in rows[r] and "new" in rows[r])
print(f"| median | {med('old',0):.2f} | {med('new',0):.2f} | {st.median(R['step']):.2f} | {med('old',1):.2f} | "
      f"{med('new',1):.2f} | {st.median(R['att']):.2f} | {med('old',2):.0f} | {med('new',2):.0f} | |")
