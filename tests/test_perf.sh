#!/usr/bin/env bash
# prefopt bench on tiny shapes, and the PMPI interposer (tests/perf.cmake). $1: the build directory.
set -u
source "$(dirname "$0")/lib.sh"
P=${PREFOPT:?}
B=${1:?build dir}
[ -x "$PY" ] || PY=python3
tiny="--shape tiny --prompt-len 8 --chosen-len 4 --rejected-len 4 --steps 2 --warmup 1 --table=0"

rm -f bench.jsonl folded.txt pmpi.jsonl pmpi_dp.jsonl
# 1. one rank, GPT-2 tiny: every field, FLOPs = the hand formula, loss ln 2 at step 1 (policy == reference)
"$P" bench $tiny --folded folded.txt --json bench.jsonl > out1.txt 2> err1.txt; rc=$?
check '[ $rc -eq 0 ]' "bench tiny exits 0 (rc $rc): $(cat err1.txt)"
grep '^{' out1.txt | tail -1 > j1.json
check 'cmp -s j1.json bench.jsonl' "--json appends the same line"
"$PY" - j1.json <<'PYEOF' || fail=1
import json, math, sys
j = json.load(open(sys.argv[1]))
need = ["step_s", "tokens_per_s", "trl_tokens_per_s", "gflops", "sgemm_peak_gflops_per_rank", "mfu", "flops_forward",
        "flops_step", "flops_forward_trl", "flops_step_trl", "phases_s", "memory_mib", "blis_arch", "blis_threads",
        "loss_first", "mpi_s"]
miss = [k for k in need if k not in j]
assert not miss, f"missing fields {miss}"
for ph in ["step", "forward", "reference", "loss", "backward", "dp_allreduce", "optimizer", "communication"]:
    v = j["phases_s"][ph]
    assert v["min"] <= v["avg"] <= v["max"] and v["min"] >= 0, (ph, v)
for k in ["peak_rss", "state_lower_bound", "baseline_rss", "activations_policy", "activations_reference"]:
    assert k in j["memory_mib"], k
assert j["memory_mib"]["peak_rss"]["max"] >= j["memory_mib"]["state_lower_bound"]["max"] > 0
# hand formula: per layer 2*tok*(4*C*C + 2*C*F) + 4*rows*T*T*C, head 2*rows*R*C*V (GPT-2 tiny: L2 C32 F128 V64)
# with R the head's positions per row: by default only those that predict a completion token, on [8 | 4 | 4]
# the chosen answer's parents 7..10 and the rejected's 7, 12..14: R = 7 of T = 16 (TRL's rows 8+4: R = 4)
L, C, F, V = 2, 32, 128, 64
def fwd(rows, T, R):
    tok = rows * T
    return L * (2 * tok * (4 * C * C + 2 * C * F) + 4 * rows * T * T * C) + 2 * rows * R * C * V
assert j["completion_logits"] is True
assert j["flops_forward"] == fwd(2, 16, 7) == 1761280, j["flops_forward"]
assert j["flops_step"] == 4 * fwd(2, 16, 7), j["flops_step"]
assert j["flops_forward_trl"] == fwd(4, 12, 4), j["flops_forward_trl"]   # 2 pairs -> 4 rows of 8+4
assert j["tokens_per_step"] == 32 and j["trl_tokens_per_step"] == 48
assert abs(j["loss_first"] - math.log(2)) < 1e-6, j["loss_first"]
assert j["mfu"] > 0 and j["tokens_per_s"] > 0 and j["mpi_s"] is None
assert abs(j["gflops"] - j["flops_step"] / j["step_s"] * 1e-9) < 1e-6 * j["gflops"]
PYEOF
check 'grep -qE "^prefopt_bench;step;forward [0-9]+$" folded.txt' "folded stacks have step;forward: $(head -3 folded.txt)"

# 1b. the LM head at every position (--completion-logits 0): the full head's FLOPs, the same first loss
"$P" bench $tiny --completion-logits 0 > out1b.txt 2>&1; rc=$?
check '[ $rc -eq 0 ]' "bench --completion-logits 0 exits 0: $(tail -2 out1b.txt)"
grep '^{' out1b.txt | tail -1 > j1b.json
"$PY" - j1b.json <<'PYEOF' || fail=1
import json, math, sys
j = json.load(open(sys.argv[1]))
assert j["completion_logits"] is False
L, C, F, V = 2, 32, 128, 64
def fwd(rows, T):
    tok = rows * T
    return L * (2 * tok * (4 * C * C + 2 * C * F) + 4 * rows * T * T * C) + 2 * tok * C * V
assert j["flops_forward"] == fwd(2, 16) == 1835008, j["flops_forward"]
assert j["flops_forward_trl"] == fwd(4, 12), j["flops_forward_trl"]
assert abs(j["loss_first"] - math.log(2)) < 1e-6, j["loss_first"]
PYEOF

# 2. Llama-shaped (GQA, SwiGLU): FLOPs with three MLP matrices and narrower K/V
"$P" bench --shape custom --arch llama --n-layer 2 --n-embd 32 --n-head 4 --n-kv-head 2 --vocab 64 \
    --max-position 64 --prompt-len 8 --chosen-len 4 --rejected-len 4 --steps 1 --warmup 0 --table=0 > out2.txt 2>&1; rc=$?
check '[ $rc -eq 0 ]' "bench llama tiny exits 0: $(tail -2 out2.txt)"
grep '^{' out2.txt | tail -1 > j2.json
"$PY" - j2.json <<'PYEOF' || fail=1
import json, math, sys
j = json.load(open(sys.argv[1]))
L, C, HD, KD, F, V, rows, T = 2, 32, 32, 16, 96, 64, 2, 16
tok = rows * T
f = L * (2 * tok * (C * HD + 2 * C * KD + HD * C + 3 * C * F) + 4 * rows * T * T * HD) + 2 * rows * 7 * C * V
assert j["ffn"] == F and j["flops_forward"] == f, (j["ffn"], j["flops_forward"], f)
assert abs(j["loss_first"] - math.log(2)) < 1e-6
PYEOF

# 3. two ranks on a 1x2 grid with the PMPI library preloaded: its summary lists MPI_Allreduce, MPI_Allgatherv
#    and MPI_Reduce_scatter with bytes > 0,
#    bench splits MPI time out of the phases, and the data-parallel run (dp 2) all-reduces gradients
LIB="$B/libprefopt_pmpi.so"
if ! command -v mpiexec >/dev/null || [ ! -f "$LIB" ]; then echo "no mpiexec or $LIB"; exit 77; fi

timeout 300 mpiexec -n 2 --oversubscribe --bind-to none -x LD_PRELOAD="$LIB" -x PREFOPT_PMPI_OUT="$PWD/pmpi.jsonl" \
    "$P" bench $tiny --grid-cols 2 > out3.txt 2> err3.txt; rc=$?
check '[ $rc -eq 0 ]' "2-rank bench under LD_PRELOAD exits 0 (rc $rc): $(tail -3 err3.txt)"
grep '^{' out3.txt | tail -1 > j3.json
"$PY" - pmpi.jsonl j3.json <<'PYEOF' || fail=1
import json, sys
p = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])["pmpi"]
assert p["ranks"] == 2, p
a = p["calls"]["MPI_Allreduce"]
assert a["calls"] > 0 and a["bytes"] > 0 and a["s_min"] <= a["s_avg"] <= a["s_max"], a
assert "step/forward" in p["regions"] and p["regions"]["step/forward"]["bytes"] > 0, p["regions"].keys()
# on 1x2 the products all-gather (in place: the bytes are my own share) and reduce-scatter instead of psgemm
g, r = p["calls"]["MPI_Allgatherv"], p["calls"]["MPI_Reduce_scatter"]
assert g["calls"] > 0 and g["bytes"] > 0 and r["calls"] > 0 and r["bytes"] > 0, (g, r)
j = json.load(open(sys.argv[2]))
assert j["grid_cols"] == 2 and j["ranks"] == 2
assert j["mpi_s"] is not None and j["mpi_s"]["forward"]["max"] > 0, j["mpi_s"]
assert j["phases_s"]["communication"] == j["mpi_s"]["step"] and j["communication_source"].startswith("pmpi")
assert j["flops_forward"] == 1761280
PYEOF
timeout 300 mpiexec -n 2 --oversubscribe --bind-to none -x LD_PRELOAD="$LIB" -x PREFOPT_PMPI_OUT="$PWD/pmpi_dp.jsonl" \
    "$P" bench $tiny --dp 2 --overlap-grad-reduce 0 > out4.txt 2> err4.txt; rc=$?
check '[ $rc -eq 0 ]' "dp=2 bench exits 0 (rc $rc): $(tail -3 err4.txt)"
grep '^{' out4.txt | tail -1 > j4.json
"$PY" - pmpi_dp.jsonl j4.json <<'PYEOF' || fail=1
import json, sys
p = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])["pmpi"]
# the all-reduces are inside the region or its per-bucket sub-regions (step/dp_allreduce/bucket)
dp = {"bytes": sum(v["bytes"] for k, v in p["regions"].items() if k.startswith("step/dp_allreduce"))}
j = json.load(open(sys.argv[2]))
# the gradient all-reduce moves the whole flat gradient buffer once per step on each rank (4 bytes a float)
per_step_rank = dp["bytes"] / (2 * (j["steps"] + j["warmup"]))
assert per_step_rank >= 4 * j["params"], (per_step_rank, j["params"])
assert j["dp"] == 2 and j["tokens_per_step"] == 64 and j["flops_step"] == 2 * 4 * 1761280
assert j["overlap_grad_reduce"] is False and j["grad_buckets_early"] == 0 and j["grad_comm_exposed_s"] > 0, j
PYEOF
# 4. with overlap (the default at dp 2) the buckets' collectives start inside backward: their bytes are counted
#    in step/backward/bucket (gradsync.c's region around each bucket's start), one bucket per layer
#    (--grad-bucket-mib 0.01), each started during backward
rm -f pmpi_ov.jsonl
timeout 300 mpiexec -n 2 --oversubscribe --bind-to none -x LD_PRELOAD="$LIB" -x PREFOPT_PMPI_OUT="$PWD/pmpi_ov.jsonl" \
    "$P" bench $tiny --dp 2 --grad-bucket-mib 0.01 > out5.txt 2> err5.txt; rc=$?
check '[ $rc -eq 0 ]' "dp=2 overlapped bench exits 0 (rc $rc): $(tail -3 err5.txt)"
grep '^{' out5.txt | tail -1 > j5.json
"$PY" - pmpi_ov.jsonl j5.json <<'PYEOF' || fail=1
import json, sys
p = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])["pmpi"]
j = json.load(open(sys.argv[2]))
bw = p["regions"]["step/backward/bucket"]
per_step_rank = bw["bytes"] / (2 * (j["steps"] + j["warmup"]))
assert per_step_rank >= 4 * j["params"], (per_step_rank, j["params"])
assert p["calls"]["MPI_Iallreduce"]["calls"] >= 3 * (j["steps"] + j["warmup"]), p["calls"]["MPI_Iallreduce"]
assert j["overlap_grad_reduce"] is True and j["grad_buckets"] == 3 and j["grad_buckets_early"] == 3, j
PYEOF
exit $fail
