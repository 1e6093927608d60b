#!/usr/bin/python3
"""Per-unit results of a packed batch (tests/test_arch.c: DPO rows [prompt | chosen | rejected], SFT rows,
padding) against the float64 numpy forward of ref_forward.py on the HF directory: every branch is run as its own
unpacked sequence (prompt + branch, positions 0..n-1), so the rejected branch never sees the chosen answer and a
sliding window counts positions of that sequence. Compares logp_completion, logp_all and the logits sums
(1e-4 relative), the token counts and argmax hits (exactly).

usage: ref_packed.py HF_DIR TEST_ARCH_OUT.txt..."""
import json, os, sys
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from check_hf_import import read_dir
from ref_forward import gpt2, llama


def read_out(out):
    b, res = {}, []
    for line in open(out):
        w = line.split()
        if w[0] == "batch":
            b["nrows"], b["T"], b["nunits"] = int(w[1]), int(w[2]), int(w[3])
        elif w[0] in ("tokens", "seg", "unit"):
            b[w[0]] = np.array([int(x) for x in w[1:]]).reshape(b["nrows"], b["T"])
        elif w[0] == "result":
            res.append([float(x) for x in w[2:]])
    return b, np.array(res)


def reference(t, c, b):
    fwd = gpt2 if c["model_type"] == "gpt2" else llama
    want = np.zeros((b["nunits"], 6))
    for r in range(b["nrows"]):
        seg, tok, unit = b["seg"][r], b["tokens"][r], b["unit"][r]
        branches = sorted(set(seg[seg > 0].tolist()))
        for br in branches:
            idx = [i for i in range(b["T"]) if seg[i] == 0 or seg[i] == br]
            ids = tok[idx]
            logits = fwd(t, c, ids)
            lsm = logits - logits.max(-1, keepdims=True)
            lsm = lsm - np.log(np.exp(lsm).sum(-1, keepdims=True))
            for k in range(1, len(idx)):
                i = idx[k]
                prompt = seg[i] == 0
                if prompt and br != branches[0]:
                    continue  # shared prompt tokens count in the first branch's unit only
                u, lp = unit[i], lsm[k - 1, ids[k]]
                want[u, 1] += lp
                want[u, 3] += 1
                if not prompt:
                    want[u, 0] += lp
                    want[u, 2] += 1
                    want[u, 4] += logits[k - 1].mean()
                    want[u, 5] += int(np.argmax(logits[k - 1]) == ids[k])
    return want


def main():
    d = sys.argv[1]
    c = json.load(open(os.path.join(d, "config.json")))
    t = read_dir(d)
    want, bad = None, 0
    for out in sys.argv[2:]:  # the runs on several grids: one reference
        b, res = read_out(out)
        if want is None:
            want, b0 = reference(t, c, b), b
        elif any(not np.array_equal(b[k], b0[k]) for k in ("tokens", "seg", "unit")):
            sys.exit(f"FAIL {out}: not the batch of {sys.argv[2]}")
        err = np.abs(res[:, [0, 1, 4]] - want[:, [0, 1, 4]]) / np.maximum(np.abs(want[:, [0, 1, 4]]), 1.0)
        counts = np.array_equal(res[:, [2, 3, 5]], want[:, [2, 3, 5]])
        if err.max() > 1e-4 or not counts:
            print(f"FAIL {out}: packed units differ (max rel err {err.max():.2e}, counts "
                  f"{'equal' if counts else 'DIFFER'})\n  prefopt:\n{res}\n  reference:\n{want}")
            bad = 1
        else:
            print(f"ok {os.path.basename(out)}: {b['nunits']} units of packed DPO/SFT rows within {err.max():.2e} "
                  f"of the numpy reference")
    sys.exit(bad)


if __name__ == "__main__":
    main()
