#!/usr/bin/env python3
"""The layering rule of README "Architecture", checked.

Each folder of the library is one layer; a file may use its own layer and the layers its rule lists (which sit
below it), plus the libraries its rule names. Checked two ways:

  includes  every #include of every source and header (src/, io/, include/prefopt/) against the rule of the file's
            layer; for the objectives also transitively (no mpi.h reachable through any header).
  symbols   (with --objects DIR, the library's object files) every undefined symbol of an object resolved to the
            object that defines it: calls must follow the same rule, and inside one folder the files must call
            each other without circles (a layer's .c never calls back into the driver that calls it).

usage: check_layers.py ROOT [--objects BUILD_DIR]    exit 0 when clean, 1 with one line per violation
"""
import os
import re
import subprocess
import sys

# layer -> (folders, public headers of include/prefopt/)
LAYERS = {
    "base": (["src/base"], ["common.h", "opts.h", "unit_stats.h", "files.h"]),
    "dist": (["src/dist"], ["agree.h", "grid.h", "dmat.h", "regions.h", "gemm_local.h", "gradsync.h", "trace.h"]),
    "objectives": (["src/objectives"], ["objectives.h", "metrics.h"]),
    "tokenizer": (["src/tokenizer"], ["tokenizer.h", "chat_template.h"]),
    "model": (["src/model"], ["model.h"]),
    "io": (["io/dataset", "io/pack", "io/checkpoint", "io/hf", "io/trace"],
           ["dataset.h", "pack.h", "checkpoint.h", "hf.h", "trace_export.h"]),
    "train": (["src/train"], ["train.h", "optim.h", "lora.h", "runctl.h", "memcheck.h", "banner.h", "generate.h",
                            "eval.h", "bench.h", "precision.h"]),
    "cli": (["src/cli"], []),
}

# what each layer may use besides itself: layers, then libraries (names from LIBS below)
RULES = {
    "base": ([], ["libc", "inih"]),
    "dist": (["base"], ["libc", "MPI", "BLIS", "oneDNN"]),
    "objectives": (["base"], ["libc", "cJSON"]),
    "tokenizer": (["base"], ["libc", "cJSON", "PCRE2", "utf8proc", "nettle"]),
    "model": (["base", "dist"], ["libc", "MPI", "BLIS"]),
    "io": (["base", "dist", "model", "tokenizer"], ["libc", "MPI", "HDF5", "cJSON", "nettle", "OTF2"]),
    "train": (["base", "dist", "objectives", "tokenizer", "model", "io"],
              ["libc", "MPI", "HDF5", "cJSON", "BLIS", "OpenMP"]),
    "cli": (["base", "dist", "objectives", "tokenizer", "model", "io", "train"],
            ["libc", "MPI", "HDF5", "cJSON", "BLIS", "OpenMP"]),
}

# system headers -> library; anything else in <...> is libc/POSIX
LIBS = {
    "mpi.h": "MPI", "hdf5.h": "HDF5", "blis.h": "BLIS", "cjson/cJSON.h": "cJSON", "cJSON.h": "cJSON",
    "pcre2.h": "PCRE2", "ini.h": "inih", "nettle/sha2.h": "nettle", "utf8proc.h": "utf8proc", "omp.h": "OpenMP",
    "oneapi/dnnl/dnnl.h": "oneDNN", "otf2/otf2.h": "OTF2",
}

INCLUDE_RE = re.compile(r'^\s*#\s*include\s*([<"])([^>"]+)[>"]', re.M)


def layer_of_path(rel):
    for name, (dirs, pubs) in LAYERS.items():
        for d in dirs:
            if rel.startswith(d + "/"):
                return name
        if rel.startswith("include/prefopt/") and os.path.basename(rel) in pubs:
            return name
    return None


def project_files(root):
    out = []
    for top in ("src", "io", "include/prefopt"):
        for dirpath, _, names in os.walk(os.path.join(root, top)):
            for n in sorted(names):
                if n.endswith((".c", ".h")):
                    out.append(os.path.relpath(os.path.join(dirpath, n), root))
    return sorted(out)


def resolve(root, rel, kind, target):
    """the project file an include names (rel path), or None for a system header"""
    if target.startswith("prefopt/"):
        return "include/" + target
    if kind == '"':
        here = os.path.join(os.path.dirname(rel), target)
        if os.path.exists(os.path.join(root, here)):
            return os.path.normpath(here)
        for dirs, _ in LAYERS.values():  # the build puts every layer folder on the private include path
            for d in dirs:
                cand = os.path.join(d, target)
                if os.path.exists(os.path.join(root, cand)):
                    return cand
    return None


def check_includes(root, files, problems):
    graph = {}
    libs_of = {}
    for rel in files:
        text = open(os.path.join(root, rel), encoding="utf-8", errors="replace").read()
        layer = layer_of_path(rel)
        if layer is None:
            problems.append(f"{rel}: not in any layer of the table (add its folder or header to LAYERS)")
            continue
        allowed_layers, allowed_libs = RULES[layer]
        graph[rel] = []
        libs_of[rel] = set()
        for m in INCLUDE_RE.finditer(text):
            kind, target = m.group(1), m.group(2)
            line = text.count("\n", 0, m.start()) + 1
            dep = resolve(root, rel, kind, target)
            if dep:
                dl = layer_of_path(dep)
                graph[rel].append(dep)
                if dl is None:
                    problems.append(f"{rel}:{line}: includes {target}, which belongs to no layer")
                elif dl != layer and dl not in allowed_layers:
                    problems.append(f"{rel}:{line}: {layer} includes {target} of layer {dl} "
                                    f"({layer} may use {', '.join(allowed_layers) or 'nothing else'})")
            elif kind == '"':
                problems.append(f"{rel}:{line}: includes \"{target}\", which is not a file of the tree")
            else:
                lib = LIBS.get(target, "libc")
                libs_of[rel].add(lib)
                if lib not in allowed_libs:
                    problems.append(f"{rel}:{line}: {layer} includes <{target}> ({lib}), which its rule does "
                                    f"not allow ({', '.join(allowed_libs)})")
    # transitively: nothing an objectives file includes may reach mpi.h
    def closure(f, seen):
        for d in graph.get(f, []):
            if d not in seen:
                seen.add(d)
                closure(d, seen)
        return seen
    for rel in files:
        if layer_of_path(rel) != "objectives":
            continue
        for d in sorted(closure(rel, set())):
            if "MPI" in libs_of.get(d, ()):
                problems.append(f"{rel}: reaches <mpi.h> through {d} (the objectives must not see MPI)")
                break


def check_symbols(root, objdir, problems):
    objs = []
    for dirpath, _, names in os.walk(objdir):
        if "CMakeFiles/prefopt_lib.dir" not in dirpath and "CMakeFiles/prefopt.dir" not in dirpath:
            continue
        for n in names:
            if n.endswith(".c.o"):
                o = os.path.join(dirpath, n)
                if os.path.exists(os.path.join(root, o.split(".dir/", 1)[1][:-2])):  # not a stale object
                    objs.append(o)
    if not objs:
        problems.append(f"{objdir}: no object files of prefopt_lib/prefopt found (build first)")
        return
    src_of = {}
    for o in objs:
        tail = o.split(".dir/", 1)[1][:-2]  # the source path relative to the root
        src_of[o] = tail
    defined, undefined = {}, {}
    for o in objs:
        out = subprocess.run(["nm", "-P", o], capture_output=True, text=True, check=True).stdout
        undefined[o] = set()
        for line in out.splitlines():
            parts = line.split()
            if len(parts) < 2:
                continue
            sym, typ = parts[0], parts[1]
            if typ == "U":
                undefined[o].add(sym)
            elif typ in "TDBRCVW":  # global definitions (lowercase letters are local)
                defined.setdefault(sym, o)
    edges = {}
    for o, syms in undefined.items():
        src = src_of[o]
        layer = layer_of_path(src)
        if layer is None:
            continue
        allowed = RULES[layer][0]
        for s in sorted(syms):
            d = defined.get(s)
            if not d or d == o:
                continue
            dsrc = src_of[d]
            dl = layer_of_path(dsrc)
            if dl != layer and dl not in allowed:
                problems.append(f"{src}: calls {s} of {dsrc} (layer {dl}; {layer} may use "
                                f"{', '.join(allowed) or 'nothing else'})")
            if dl == layer and os.path.dirname(dsrc) == os.path.dirname(src):
                edges.setdefault(src, {}).setdefault(dsrc, s)
    # circles among the files of one folder
    state = {}
    def visit(f, stack):
        state[f] = 1
        for g, sym in sorted(edges.get(f, {}).items()):
            if state.get(g) == 1:
                cyc = stack[stack.index(g):] + [g]
                problems.append("circle of calls in " + os.path.dirname(f) + ": " +
                                " -> ".join(os.path.basename(x) for x in cyc) + f" (e.g. {sym})")
            elif g not in state:
                visit(g, stack + [g])
        state[f] = 2
    for f in sorted(edges):
        if f not in state:
            visit(f, [f])


def main():
    args = sys.argv[1:]
    if not args:
        print(__doc__.strip().splitlines()[-1])
        return 2
    root = args[0]
    objdir = args[args.index("--objects") + 1] if "--objects" in args else None
    problems = []
    check_includes(root, project_files(root), problems)
    if objdir:
        check_symbols(root, objdir, problems)
    for p in problems:
        print("layering: " + p)
    if not problems:
        print("layering: clean (%d files%s)" % (len(project_files(root)), ", symbols checked" if objdir else ""))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
