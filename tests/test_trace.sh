#!/usr/bin/env bash
# --trace on 2 ranks (1x2 grid) and 4 ranks (1x2 grid x 2 replicas), checked with tools that are not prefopt:
#  - otf2-print reads the OTF2 archive; walking its events per location (an independent parser, below) finds the
#    expected regions with the right counts (steps, micro-batch forwards, one forward/reference/backward pass per
#    layer) and MPI collectives on the TP-row communicator inside the layers. Data parallel (src/dist/gradsync.c):
#    each step enters region "bucket 0" twice (the tiny model is one bucket): once around the start of its
#    nonblocking MPI_Iallreduce on the duplicated DP communicator (named "dp" like its original) and once around
#    its completion in grad_reduce; the start is in step/backward/bucket with --overlap-grad-reduce on (the
#    default for dp > 1) and in step/grad_reduce/bucket with 0 - both are run, so either placement regressing fails;
#  - trace.json parses (python3 json), has one process per rank with one track each, balanced B/E, and exactly one
#    MPI_Iallreduce of gradients over dp per rank per step (and no blocking MPI_Allreduce of gradients);
#  - the losses with tracing on are bit-identical to tracing off; --trace-steps 2:3 traces exactly steps 2 and 3;
#  - a 4 KiB buffer (flushed many times inside each step) gives the same event counts;
#  - a run killed (SIGKILL of one rank) mid-way leaves spool files from which `prefopt trace-summary` builds an
#    archive otf2-print reads, with the steps flushed before the kill.
# The step time with tracing on vs off is printed (not asserted).
set -u
source "$(dirname "$0")/lib.sh"
P=${PREFOPT:?}
mpi_env_root
command -v otf2-print >/dev/null || { echo "otf2-print missing (apt-get install otf2-tools)"; exit 1; }
make_workdir d

$PY - <<'PYEOF'
import json, random
r = random.Random(5)
L = "abcdefgh"
with open("train.jsonl", "w") as f:
    for i in range(64):
        p = "".join(r.choice(L) for _ in range(4))
        c, rej = p[0] * 3, r.choice([x for x in L if x != p[0]]) * 3
        f.write(json.dumps({"prompt": p + ":", "chosen": c, "rejected": rej}) + "\n")
PYEOF
"$P" pack --input train.jsonl --output train.h5 --quiet || exit 1
NL=2
TINY="--n-layer $NL --n-embd 32 --n-head 2 --max-position 16 --seed 3 --loss dpo --batch-size 4 --max-steps 4"

# the independent reader: otf2-print's event list -> counts of (region path, event) per location
cat > walk.py <<'PYEOF'
import re, sys, json, collections
ev = re.compile(r'^(ENTER|LEAVE|MPI_COLLECTIVE_END)\s+(\d+)\s+(\d+)\s+(.*)$')
stacks = collections.defaultdict(list)
count = collections.Counter()
last = {}
for line in open(sys.argv[1]):
    m = ev.match(line)
    if not m:
        continue
    kind, loc, ts, rest = m.group(1), int(m.group(2)), int(m.group(3)), m.group(4)
    assert ts >= last.get(loc, 0), "time goes back on location %d" % loc
    last[loc] = ts
    if kind == "MPI_COLLECTIVE_END":
        comm = re.search(r'Communicator: "(\w+)', rest).group(1)
        op = re.search(r'Operation: (\w+)', rest).group(1)
        path = "/".join(re.sub(r" \d+$", "", x) for x in stacks[loc][:-1])  # without the MPI call's own region
        count[(loc, "coll", path, op, comm)] += 1
        continue
    name = re.search(r'Region: "([^"]*)"', rest).group(1)
    if kind == "ENTER":
        stacks[loc].append(name)
        count[(loc, "enter", name)] += 1
    else:
        assert stacks[loc] and stacks[loc][-1] == name, "unbalanced leave %s on %d" % (name, loc)
        stacks[loc].pop()
for loc, s in stacks.items():
    assert not s, "regions left open on %d: %s" % (loc, s)
json.dump([[list(k), v] for k, v in count.items()], open(sys.argv[2], "w"))
PYEOF
cat > check.py <<'PYEOF'
import json, sys
counts = {tuple(k): v for k, v in json.load(open(sys.argv[1]))}
nranks, dp, nl, steps, overlap = (int(a) for a in sys.argv[2:7])
bad = []
def want(key, n):
    got = counts.get(key, 0)
    if got != n:
        bad.append("%s: %d, want %d" % (key, got, n))
for r in range(nranks):
    want((r, "enter", "step"), steps)
    want((r, "enter", "forward"), steps)          # one micro-batch per step
    want((r, "enter", "reference"), steps)
    want((r, "enter", "backward"), steps)
    want((r, "enter", "optimizer"), steps)
    want((r, "enter", "data_read"), steps)
    want((r, "enter", "lm_head"), 3 * steps)      # policy forward, reference forward, backward
    for l in range(nl):
        want((r, "enter", "layer %d" % l), 3 * steps)
    want((r, "enter", "checkpoint_write"), 1)
    if dp > 1:
        want((r, "enter", "grad_reduce"), steps)
        # one bucket (a tiny model is below the 8M-float bucket): entered at its start and at its completion
        want((r, "enter", "bucket 0"), 2 * steps)
        start, other = ("step/backward/bucket", "step/grad_reduce/bucket") if overlap else \
            ("step/grad_reduce/bucket", "step/backward/bucket")
        want((r, "coll", start, "ALLREDUCE", "dp"), steps)   # MPI_Iallreduce is OTF2's ALLREDUCE
        want((r, "coll", other, "ALLREDUCE", "dp"), 0)
    # tensor parallelism: collectives over the TP row inside the layers' forward
    if counts.get((r, "coll", "step/forward/layer", "ALLREDUCE", "tp_row"), 0) < steps * nl:
        bad.append("rank %d: too few tp_row all-reduces in step/forward/layer" % r)
if bad:
    print("\n".join(bad)); sys.exit(1)
PYEOF
cat > json_check.py <<'PYEOF'
import json, sys
d = json.load(open(sys.argv[1]))
nranks, dp_allreduce = int(sys.argv[2]), int(sys.argv[3])
ev = d["traceEvents"]
tracks = {(e["pid"], e["tid"]) for e in ev}
assert tracks == {(r, 0) for r in range(nranks)}, "tracks %s" % sorted(tracks)
names = {e["pid"]: e["args"]["name"] for e in ev if e.get("ph") == "M" and e["name"] == "process_name"}
assert names == {r: "rank %d" % r for r in range(nranks)}, names
depth = {}
for e in ev:
    if e["ph"] in "BE":
        depth[e["pid"]] = depth.get(e["pid"], 0) + (1 if e["ph"] == "B" else -1)
        assert depth[e["pid"]] >= 0
assert all(v == 0 for v in depth.values()), depth
def grads(name):
    return sum(1 for e in ev if e["ph"] == "X" and e["name"] == name and e["args"].get("comm") == "dp"
               and e["args"]["bytes"] > 1000)
n = grads("MPI_Iallreduce")
assert n == dp_allreduce, "dp all-reduces (MPI_Iallreduce) of gradients in JSON: %d, want %d" % (n, dp_allreduce)
assert grads("MPI_Allreduce") == 0, "blocking dp all-reduces of gradients in JSON: %d" % grads("MPI_Allreduce")
PYEOF

# waiting time, recomputed from trace.json: the k-th all-reduce of gradients on each DP communicator is one
# operation; a member waits from its entry until the last member entered (bounded by the call's duration: for the
# nonblocking start that is short, the completion being MPI_Wait). Compared with summary.json's row of the region
# where the MPI_Iallreduce starts.
cat > wait_check.py <<'PYEOF'
import json, sys, collections
ev = json.load(open(sys.argv[1]))["traceEvents"]
summ = json.load(open(sys.argv[2]))
nranks, region = int(sys.argv[3]), sys.argv[4]
per = collections.defaultdict(list)  # (comm_first, rank) -> [(ts, dur)] of gradient all-reduces in order
calls = collections.defaultdict(list)
for e in ev:
    if e["ph"] == "X" and e["name"] == "MPI_Iallreduce" and e["args"]["comm"] == "dp" and e["args"]["bytes"] > 1000:
        per[(e["args"]["comm_first"], e["pid"])].append((e["ts"], e["dur"]))
wait = collections.Counter()
firsts = {k[0] for k in per}
for f in firsts:
    members = sorted(r for (g, r) in per if g == f)
    n = min(len(per[(f, r)]) for r in members)
    for k in range(n):
        last = max(per[(f, r)][k][0] for r in members)
        for r in members:
            ts, dur = per[(f, r)][k]
            wait[r] += min(max(last - ts, 0.0), dur) * 1e-6
row = [m for m in summ["mpi"] if m["region"] == region and m["call"] == "MPI_Iallreduce" and m["comm"] == "dp"]
assert len(row) == 1, row
mine = sum(wait.values()) / nranks
assert abs(row[0]["wait_s_mean"] - mine) <= 1e-5 + 1e-3 * mine, (row[0]["wait_s_mean"], mine)
for m in summ["mpi"]:
    assert -1e-9 <= m["wait_s_mean"] <= m["s_mean"] + 1e-9 and m["s_min"] <= m["s_mean"] + 1e-12 <= m["s_max"] + 2e-12, m
print("wait in the gradient all-reduce's start (%s): %.9f s per rank (summary %.9f)" % (region, mine, row[0]["wait_s_mean"]))
PYEOF

losses() { $PY -c "import json,sys; print(' '.join(repr(json.loads(l)['loss']) for l in open(sys.argv[1]) if 'loss' in l))" "$1"; }
steptime() { $PY -c "
import json,sys,statistics; t=[json.loads(l)['step_time'] for l in open(sys.argv[1]) if 'step_time' in l]
print('%.4f' % statistics.median(t[1:] or t))" "$1"; }

run_case() { # NP GRID_COLS DP [OVERLAP (--overlap-grad-reduce; default: on when dp > 1)]
  local np=$1 gc=$2 dp=$3 ov=${4:-} tag=$1r${4:-}
  local overlap=$([ -n "$ov" ] && echo $ov || { [ $dp -gt 1 ] && echo 1 || echo 0; })
  local T="$TINY --grid-cols $gc --dp $dp ${ov:+--overlap-grad-reduce $ov}"
  $MPI -n $np "$P" train --data train.h5 --run-dir off$tag $T > off$tag.log 2>&1 ||
    { cat off$tag.log; fail=1; return; }
  $MPI -n $np "$P" train --data train.h5 --run-dir on$tag $T --trace tr$tag > on$tag.log 2>&1 ||
    { cat on$tag.log; fail=1; return; }
  check "[ \"\$(losses off$tag/metrics.jsonl)\" = \"\$(losses on$tag/metrics.jsonl)\" ]" "$np ranks: tracing changed the losses"
  check "otf2-print tr$tag/otf2/traces.otf2 > print$tag.txt" "$np ranks: otf2-print cannot read the archive"
  check "$PY walk.py print$tag.txt counts$tag.json" "$np ranks: the OTF2 events do not nest"
  check "$PY check.py counts$tag.json $np $dp $NL 4 $overlap" "$np ranks: region / MPI counts in the OTF2 archive"
  local want=0; [ $dp -gt 1 ] && want=$((4 * np))
  check "$PY json_check.py tr$tag/trace.json $np $want" "$np ranks: trace.json"
  local startreg=step/grad_reduce/bucket; [ $overlap = 1 ] && startreg=step/backward/bucket
  [ $dp -gt 1 ] && check "$PY wait_check.py tr$tag/trace.json tr$tag/summary.json $np $startreg" \
    "$np ranks: the summary's waiting time in the gradient all-reduce against trace.json"
  check "grep -q 'MPI_Allreduce' tr$tag/summary.txt && $PY -c 'import json; json.load(open(\"tr$tag/summary.json\"))'" \
    "$np ranks: summary"
  # a 4 KiB buffer (100 records) flushes many times inside each step: the same events (4 ranks only)
  if [ $np -eq 4 ]; then
    PREFOPT_TRACE_BUFFER_MB=0.004 $MPI -n $np "$P" train --data train.h5 --run-dir small$tag $T \
      --trace trs$tag > small$tag.log 2>&1 || { cat small$tag.log; fail=1; }
    otf2-print trs$tag/otf2/traces.otf2 > prints$tag.txt && $PY walk.py prints$tag.txt countss$tag.json
    check "$PY check.py countss$tag.json $np $dp $NL 4 $overlap" "$np ranks: counts with a 4 KiB buffer"
  fi
  echo "step time (median, s), $np ranks${ov:+, overlap $ov}: tracing off $(steptime off$tag/metrics.jsonl), on $(steptime on$tag/metrics.jsonl)"
}
run_case 2 2 1
run_case 4 2 2      # overlap on (the default): the bucket starts inside backward
run_case 4 2 2 0    # overlap off: it starts inside grad_reduce

# the distributed optimizer and bf16 gradients reduce with other nonblocking collectives (gradsync.c): their
# starts are traced as collectives on dp too, one per bucket per step in step/grad_reduce/bucket (overlap off, so
# the placement does not depend on when a poll in backward completes the first phase)
variant() { # TAG CHECK OPTIONS...
  local tag=$1 chk=$2; shift 2
  $MPI -n 4 "$P" train --data train.h5 --run-dir v$tag $TINY --grid-cols 2 --dp 2 --overlap-grad-reduce 0 "$@" \
    --trace trv$tag > v$tag.log 2>&1 || { cat v$tag.log; fail=1; return; }
  otf2-print trv$tag/otf2/traces.otf2 > printv$tag.txt && $PY walk.py printv$tag.txt countsv$tag.json
  check "$PY -c \"
import json; c={tuple(k):v for k,v in json.load(open('countsv$tag.json'))}
for r in range(4):
    g=lambda path, op: c.get((r,'coll',path,op,'dp'),0)
    $chk
\"" "$* (4 ranks): the gradient buckets' nonblocking collectives in the OTF2 archive"
}
# zero 1: the bucket is reduce-scattered, the updated weights all-gathered after the optimizer
variant z "assert g('step/grad_reduce/bucket','REDUCE_SCATTER')==4 and g('step/optimizer','ALLGATHERV')==4, (r, c)" \
  --zero-stage 1
# bf16: all-to-all of the bf16 copies, then an all-gather of the reduced shards, both inside the bucket
variant b "assert g('step/grad_reduce/bucket','ALLTOALLV')==4 and g('step/grad_reduce/bucket','ALLGATHERV')==4, (r, c)" \
  --grad-reduce-dtype bf16

# eval, generate and bench trace too: their steps are batches (eval, generate) and timed steps (bench)
$MPI -n 2 "$P" eval --model on2r/model.h5 --data train.h5 --out ev.jsonl --batch-size 16 --grid-cols 2 --trace tre \
  > ev.log 2>&1 || { cat ev.log; fail=1; }
otf2-print tre/otf2/traces.otf2 > printe.txt && $PY walk.py printe.txt countse.json
check "$PY -c \"
import json; c={tuple(k):v for k,v in json.load(open('countse.json'))}
assert c.get((0,'enter','step'))==4 and c.get((1,'enter','forward'))==4 and c.get((1,'enter','layer 1'))==4, c
\"" "eval --trace: 64 examples in batches of 16 = 4 steps, one forward each"
printf '{"prompt": "abcd:"}\n{"prompt": "bcda:"}\n{"prompt": "cdab:"}\n' > prompts.jsonl
$MPI -n 2 "$P" generate --model on2r/model.h5 --prompts prompts.jsonl --out gen.jsonl --max-new-tokens 3 \
  --batch-size 2 --grid-cols 2 --trace trg > gen.log 2>&1 || { cat gen.log; fail=1; }
otf2-print trg/otf2/traces.otf2 > printg.txt && $PY walk.py printg.txt countsg.json
check "$PY -c \"
import json; c={tuple(k):v for k,v in json.load(open('countsg.json'))}
assert c.get((0,'enter','step'))==2 and c.get((0,'enter','decode'),0) >= 2, c
\"" "generate --trace: 3 prompts in batches of 2 = 2 steps with decode steps"
$MPI -n 2 "$P" bench --shape tiny --prompt-len 8 --chosen-len 4 --rejected-len 4 --steps 2 --warmup 1 --table=0 \
  --grid-cols 2 --trace trbn > bn.log 2>&1 || { cat bn.log; fail=1; }
otf2-print trbn/otf2/traces.otf2 > printbn.txt && $PY walk.py printbn.txt countsbn.json
check "$PY -c \"
import json; c={tuple(k):v for k,v in json.load(open('countsbn.json'))}
assert c.get((0,'enter','step'))==3 and c.get((1,'enter','lm_head'))==9, c
\"" "bench --trace: 1 warm-up + 2 steps, the LM head in forward, reference and backward"

# the step window
$MPI -n 2 "$P" train --data train.h5 --run-dir win $TINY --grid-cols 2 --trace trw --trace-steps 2:3 > win.log 2>&1 ||
  { cat win.log; fail=1; }
otf2-print trw/otf2/traces.otf2 > printw.txt && $PY walk.py printw.txt countsw.json
check "$PY -c \"
import json; c={tuple(k):v for k,v in json.load(open('countsw.json'))}
assert c.get((0,'enter','step'))==2 and c.get((1,'enter','step'))==2, c.get((0,'enter','step'))
assert (0,'enter','checkpoint_write') not in c
\"" "--trace-steps 2:3 traces two steps and nothing after"
check "grep -q '^ *2 ' trw/summary.txt && grep -q '^ *3 ' trw/summary.txt && ! grep -q '^ *4 ' trw/summary.txt" \
  "--trace-steps 2:3: the per-step table lists steps 2 and 3"
# a bad window is a usage error on every rank
$MPI -n 2 "$P" train --data train.h5 --run-dir bad $TINY --grid-cols 2 --trace trb --trace-steps 3:1 > bad.log 2>&1
rc=$?
check "[ $rc -ne 0 ] && [ \$(grep -c 'trace-steps' bad.log) -eq 2 ]" "--trace-steps 3:1: one error line per rank"

# a killed run: steps slowed down, one rank SIGKILLed after the third step was logged
PREFOPT_TEST_STEP_DELAY_MS=400 $MPI -n 2 "$P" train --data train.h5 --run-dir kill $TINY --max-steps 40 --grid-cols 2 \
  --trace trk > kill.log 2>&1 &
mpipid=$!
for i in $(seq 1 300); do
  [ -f kill/metrics.jsonl ] && [ "$(wc -l < kill/metrics.jsonl)" -ge 3 ] && break
  sleep 0.1
done
victim=$(pgrep -P $mpipid | head -1)
[ -n "$victim" ] && kill -9 "$victim"
wait $mpipid
check "[ ! -e trk/otf2 ]" "a killed run does not leave a half-written archive"
check "'$P' trace-summary trk > ksum.txt 2>&1" "trace-summary of a killed run: $(tail -2 ksum.txt 2>/dev/null)"
check "otf2-print trk/otf2/traces.otf2 > printk.txt && $PY walk.py printk.txt countsk.json" \
  "trace of a killed run: otf2-print reads it and its regions nest"
check "$PY -c \"
import json; c={tuple(k):v for k,v in json.load(open('countsk.json'))}
n=c.get((0,'enter','step'),0); assert 2 <= n < 40, n
\"" "the killed run's trace holds the steps flushed before the kill"
check "[ -s trk/timeline.png ] && $PY -c 'import json; json.load(open(\"trk/trace.json\"))'" \
  "trace-summary draws timeline.png and writes valid JSON"
# a damaged spool: one error line naming the file and the byte, exit 1, no archive replaced by garbage
cp -r tr2r trd
$PY -c "
import sys; p='trd/spool/rank-1.bin'; b=bytearray(open(p,'rb').read()); b[400:440]=b'\xff'*40; open(p,'wb').write(bytes(b))"
"$P" trace-summary trd --png 0 > dmg.txt 2>&1
rc=$?
check "[ $rc -eq 1 ] && grep -q 'rank-1.bin: damaged record at byte' dmg.txt && [ \$(grep -c error dmg.txt) -eq 1 ]" \
  "a damaged spool is refused with one error line (rc $rc: $(head -2 dmg.txt))"
check "otf2-print trd/otf2/traces.otf2 > /dev/null" "the earlier archive stays readable after a refused export"
exit $fail
