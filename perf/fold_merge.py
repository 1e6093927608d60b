#!/usr/bin/python3
"""Folded stacks for prefopt profiles: collapse `perf script` output, merge ranks, show hotspots, draw a flame graph.

  fold_merge.py collapse perf.0.txt [...] -o rank0.folded        perf script text -> "a;b;c COUNT" lines
  fold_merge.py merge r0.folded r1.folded [--rank-prefix] -o all.folded
                                                                  sum over ranks (or keep "rankN;" as root frame)
  fold_merge.py hotspots all.folded [--top 25]                    self and inclusive shares per function, plus a
                                                                  per-library split (libblis, libmpi, prefopt, ...)
  fold_merge.py svg all.folded -o flame.svg [--title T]           a self-contained flame graph (no FlameGraph
                                                                  scripts needed: Debian 12 does not package them)
  fold_merge.py attribution perf.0.txt [...]                      of the samples in BLIS, the share whose stack
                                                                  reaches a prefopt function (how deep the
                                                                  unwinding got: perf/profile.sh -s)

Folded files from `prefopt bench --folded` (region timers: "prefopt_bench;step;forward;MPI 1234", microseconds)
work with merge, hotspots and svg as well. Uses only the standard library.
"""
import argparse
import collections
import html
import os
import re
import sys

FRAME = re.compile(r"^\s*[0-9a-fA-F]+\s+(.*?)\s+\(([^)]*)\)\s*$")


def collapse(lines, keep_offsets=False):
    """perf script (with call graphs) to folded stacks. Each sample is a header line and its frames, innermost
    first, then a blank line. A frame without a symbol is named after its library ([libfoo.so])."""
    out = collections.Counter()
    frames, in_sample, comm = [], False, ""
    for raw in lines:
        line = raw.rstrip("\n")
        if not line.strip():
            if in_sample:
                stack = [comm] + list(reversed(frames)) if comm else list(reversed(frames))
                if stack:
                    out[";".join(stack)] += 1
            frames, in_sample = [], False
            continue
        if not line.startswith((" ", "\t")):
            in_sample = True
            comm = line.split()[0] if line.split() else ""
            continue
        m = FRAME.match(line)
        if not m:
            continue
        sym, dso = m.group(1), m.group(2)
        if not keep_offsets:
            sym = re.sub(r"\+0x[0-9a-fA-F]+$", "", sym)
        if sym in ("[unknown]", ""):
            sym = "[" + os.path.basename(dso) + "]"
        frames.append(sym.replace(";", ":").replace(" ", "_"))
    if in_sample and frames:
        out[";".join(([comm] if comm else []) + list(reversed(frames)))] += 1
    return out


def attribution(lines):
    """(BLIS samples, of them with a frame of the prefopt executable above the BLIS frames)"""
    blis = attributed = 0
    frames = []
    def done():
        nonlocal blis, attributed
        if frames and "libblis" in frames[0][1]:
            blis += 1
            if any(os.path.basename(d) == "prefopt" or os.path.basename(d).startswith("bench_") for _, d in frames):
                attributed += 1
    for raw in lines:
        line = raw.rstrip("\n")
        if not line.strip():
            done()
            frames = []
            continue
        if not line.startswith((" ", "\t")):
            frames = []
            continue
        m = FRAME.match(line)
        if m:
            frames.append((m.group(1), m.group(2)))
    done()
    return blis, attributed


def read_folded(path):
    c = collections.Counter()
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            stack, _, n = line.rpartition(" ")
            try:
                c[stack] += int(float(n))
            except ValueError:
                continue
    return c


def write_folded(c, path):
    f = open(path, "w") if path and path != "-" else sys.stdout
    for stack, n in sorted(c.items()):
        if n > 0:
            f.write(f"{stack} {n}\n")
    if f is not sys.stdout:
        f.close()


LIBS = [("libblis", "BLIS (sgemm kernels)"), ("libmpi", "MPI"), ("mca_", "MPI transports"), ("libopen-pal", "MPI"),
        ("libscalapack", "ScaLAPACK/BLACS"), ("libgomp", "OpenMP runtime"), ("libm.so", "libm"),
        ("libc.so", "libc"), ("[kernel", "kernel"), ("libtorch", "libtorch")]


def hotspots(c, top):
    total = sum(c.values())
    if not total:
        print("no samples")
        return
    selfc, incl = collections.Counter(), collections.Counter()
    for stack, n in c.items():
        fr = stack.split(";")
        selfc[fr[-1]] += n
        for f in set(fr):
            incl[f] += n
    print(f"{total} samples (or microseconds for region files)")
    print(f"\n  {'self %':>7}  {'incl %':>7}  function (top {top} by self)")
    for f, n in selfc.most_common(top):
        print(f"  {100.0 * n / total:7.2f}  {100.0 * incl[f] / total:7.2f}  {f}")
    print(f"\n  {'incl %':>7}  function (top {top} inclusive)")
    for f, n in incl.most_common(top):
        print(f"  {100.0 * n / total:7.2f}  {f}")


def svg(c, path, title, width=1200, row=16):
    """A flame graph: root at the bottom, frame width proportional to samples, colour by library-ish name."""
    root = {"n": 0, "ch": {}}
    for stack, n in c.items():
        node = root
        node["n"] += n
        for f in stack.split(";"):
            node = node["ch"].setdefault(f, {"n": 0, "ch": {}})
            node["n"] += n
    total = root["n"] or 1

    def depth(node):
        return 1 + max((depth(ch) for ch in node["ch"].values()), default=0)

    D = depth(root)
    H = (D + 2) * row + 30
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{H}" font-family="monospace" '
           f'font-size="11">', f'<rect width="100%" height="100%" fill="#f8f8f8"/>',
           f'<text x="{width / 2}" y="18" text-anchor="middle" font-size="14">{html.escape(title)}</text>']

    def colour(name):
        h = sum(map(ord, name)) % 60
        if "bli_" in name or "blis" in name:
            return f"rgb(230,{120 + h},60)"
        if "MPI" in name or "mpi" in name or "mca_" in name or "opal" in name:
            return f"rgb(80,{140 + h},220)"
        return f"rgb(240,{80 + h * 2},{50 + h})"

    def draw(name, node, x, level):
        w = node["n"] / total * (width - 20)
        if w < 0.3:
            return
        y = H - (level + 1) * row - 10
        pct = 100.0 * node["n"] / total
        label = html.escape(f"{name} ({node['n']}, {pct:.2f}%)")
        out.append(f'<g><title>{label}</title><rect x="{x:.2f}" y="{y}" width="{w:.2f}" height="{row - 1}" '
                   f'fill="{colour(name)}" rx="2"/>')
        chars = int(w / 7)
        if chars >= 3:
            t = name if len(name) <= chars else name[:chars - 2] + ".."
            out.append(f'<text x="{x + 3:.2f}" y="{y + row - 4}">{html.escape(t)}</text>')
        out.append("</g>")
        cx = x
        for cn, ch in sorted(node["ch"].items()):
            draw(cn, ch, cx, level + 1)
            cx += ch["n"] / total * (width - 20)

    draw("all", root, 10, 0)
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("collapse")
    a.add_argument("inputs", nargs="+")
    a.add_argument("-o", "--output", default="-")
    a.add_argument("--keep-offsets", action="store_true")
    m = sub.add_parser("merge")
    m.add_argument("inputs", nargs="+")
    m.add_argument("-o", "--output", default="-")
    m.add_argument("--rank-prefix", action="store_true", help="keep each input as a root frame rankN (in order)")
    h = sub.add_parser("hotspots")
    h.add_argument("input")
    h.add_argument("--top", type=int, default=25)
    s = sub.add_parser("svg")
    s.add_argument("input")
    s.add_argument("-o", "--output", required=True)
    s.add_argument("--title", default="prefopt flame graph")
    t = sub.add_parser("attribution")
    t.add_argument("inputs", nargs="+")
    args = ap.parse_args()
    if args.cmd == "collapse":
        c = collections.Counter()
        for p in args.inputs:
            if p == "-":
                c.update(collapse(sys.stdin, args.keep_offsets))
                continue
            with open(p, errors="replace") as f:
                c.update(collapse(f, args.keep_offsets))
        write_folded(c, args.output)
    elif args.cmd == "merge":
        c = collections.Counter()
        for i, p in enumerate(args.inputs):
            mr = re.search(r"rank(\d+)\.folded$", p)  # the rank of rankN.folded (profile.sh -r picks ranks)
            name = "rank" + (mr.group(1) if mr else str(i))
            for stack, n in read_folded(p).items():
                c[(name + ";" if args.rank_prefix else "") + stack] += n
        write_folded(c, args.output)
    elif args.cmd == "attribution":
        b = a_ = 0
        for p in args.inputs:
            with open(p, errors="replace") as f:
                x, y = attribution(f)
                b, a_ = b + x, a_ + y
        print("BLIS samples %d, attributed to a prefopt caller %d (%.1f%%)" % (b, a_, 100.0 * a_ / b if b else 0.0))
    elif args.cmd == "hotspots":
        hotspots(read_folded(args.input), args.top)
    else:
        svg(read_folded(args.input), args.output, args.title)


if __name__ == "__main__":
    main()
