#!/usr/bin/env bash
# SLURM across emulated nodes (issue 17): two network namespaces (tests/multinode/netns_cluster.sh), one slurmd per
# namespace (NodeName = the namespace, NodeAddr = its address; own UTS and mount namespaces, so each node has its
# own hostname and its own TmpFS), slurmctld and munged on the host side of the bridge. Then, with the real trainer
# and the real job script:
#   1. sbatch --nodes=2 --ntasks-per-node=2 jobs/dpo.sbatch: the per-node grid derivation (1x2 per node, dp 2
#      across the nodes) and 6 steps whose losses equal one rank's within 1e-5 (gradient norms 1e-4);
#   2. the same under --time=2 --signal=USR1@50 (SLURM may send it up to 60 s early, so a 1-minute limit could signal before step 1): the time-limit signal -> checkpoint -> exit 99 -> requeue; the
#      requeued job is cancelled and the run is resumed on ONE node (2 ranks) from the checkpoint written on two,
#      and its steps equal one rank's (the same bounds) up to the end.
# Skips (77) with the reason where namespaces or the SLURM daemons cannot run.
# usage: test_slurm_multinode.sh BUILD_DIR
set -uo pipefail
B=$(cd "${1:?build dir}" && pwd)
SRC=${PREFOPT_SOURCE_DIR:-$(cd "$(dirname "$0")/.." && pwd)}
P=${PREFOPT:-$B/prefopt}
CL=$SRC/tests/multinode/netns_cluster.sh
J=$SRC/jobs
# shellcheck source=slurm/slurm_env.sh
source "$SRC/tests/slurm/slurm_env.sh"
why=$(slurm_can_run) || { echo "skip: this machine cannot run the SLURM daemons: $why"; exit 77; }
command -v nsenter > /dev/null && command -v ip > /dev/null || { echo "skip: needs iproute2 and util-linux"; exit 77; }
tag=s$(( $$ % 100000 ))
W=$(mktemp -d /tmp/prefopt-slurm-nodes.XXXXXX)
chmod 755 "$W"
d=$W/slurm
stop_all() {
  [ -n "${SLURM_CONF:-}" ] && scancel --quiet --user=root > /dev/null 2>&1
  for i in 0 1; do _slurm_kill_pidfile "$d/slurmd.pf${tag}n$i.pid"; done
  _slurm_kill_pidfile "$d/slurmctld.pid"
  _slurm_kill_pidfile "$d/munge/munged.pid"
  bash "$CL" down "$tag" 2
  rm -rf "$W"
}
trap stop_all EXIT
fail() { echo "FAIL: $*"; for f in "$W"/logs/*.out; do [ -f "$f" ] && { echo "--- $f"; tail -15 "$f"; }; done; exit 1; }
if ! bash "$CL" up "$tag" 2 > "$W/nodes.txt" 2> "$W/up.err" ||
   ! nsenter --net="/run/netns/pf${tag}n0" unshare --uts --mount true 2>> "$W/up.err"; then
  echo "skip: network namespaces are not permitted here: $(head -1 "$W/up.err")"
  exit 77
fi
mapfile -t nodes < "$W/nodes.txt"
net=${nodes[0]%.*}

# ---- the cluster -----------------------------------------------------------------------------------------------
mkdir -p "$d"/{state,spool,log,munge,tmp,tmp_n0,tmp_n1,spool/pf${tag}n0,spool/pf${tag}n1} "$W/logs"
chown munge:munge "$d/munge"; chmod 700 "$d/munge"
install -o munge -g munge -m 400 /etc/munge/munge.key "$d/munge/munge.key"
runuser -u munge -- /usr/sbin/munged --force --socket="$d/munge/munge.sock" --key-file="$d/munge/munge.key" \
  --pid-file="$d/munge/munged.pid" --log-file="$d/munge/munged.log" --seed-file="$d/munge/munged.seed" ||
  fail "munged: $(tail -2 "$d/munge/munged.log")"
port=$(_slurm_free_port)
mem=$(awk '/MemTotal/ {print int($2/1024/4)}' /proc/meminfo)
slurm_write_conf "$d" prefoptnodes "$(hostname -s)($net.254)" "$port" task/none \
  "pf${tag}n0:$net.1:2:$mem" "pf${tag}n1:$net.2:2:$mem"
export SLURM_CONF=$d/slurm.conf
slurmctld -f "$SLURM_CONF" -i || fail "slurmctld: $(tail -3 "$d/log/slurmctld.log")"
# nsenter --net (not `ip netns exec`, which remounts /sys and hides the cgroup tree slurmd needs); a private mount
# namespace gives each node its own TmpFS (PMIx puts per-step directories there)
for i in 0 1; do
  n=pf${tag}n$i
  nsenter --net="/run/netns/$n" unshare --uts --mount --propagation private /bin/sh -c \
    "hostname $n && mount --bind $d/tmp_n$i $d/tmp && exec slurmd -N $n -f $SLURM_CONF" ||
    fail "slurmd on $n: $(tail -3 "$d/log/slurmd.$n.log")"
done
for i in $(seq 1 60); do
  [ "$(sinfo -h -o %T 2>/dev/null | sort -u)" = idle ] && break
  sleep 0.5
done
[ "$(sinfo -h -o %T 2>/dev/null | sort -u)" = idle ] || fail "nodes not idle: $(sinfo 2>&1 | tail -2)"
echo "cluster: slurmctld on $net.254, slurmd pf${tag}n0 on ${nodes[0]}, pf${tag}n1 on ${nodes[1]}"

# ---- data, model, the one-rank reference -----------------------------------------------------------------------
cd "$W"
python3 - <<'EOF'
import json, random
r = random.Random(9)
L = "abcdefgh"
with open("pairs.jsonl", "w") as f:
    for i in range(256):
        p = "".join(r.choice(L) for _ in range(4))
        c, rej = p[0] * 3, r.choice([x for x in L if x != p[0]]) * 3
        f.write(json.dumps({"prompt": p + ":", "chosen": c, "rejected": rej}) + "\n")
EOF
"$P" pack --input pairs.jsonl --output pairs.h5 --quiet || fail "pack"
"$P" train --data pairs.h5 --run-dir init --n-layer 2 --n-embd 32 --n-head 4 --max-position 16 --seed 5 \
  --epochs 0 > init.log 2>&1 || fail "initial model: $(tail -2 init.log)"
cat > dpo.ini <<INI
[train]
data = $W/pairs.h5
loss = dpo
lr = 1e-3
lr-scheduler = constant
warmup-steps = 0
batch-size = 16
save-interval = 5
log-interval = 1000
peak-gflops = 1
INI
"$P" train --config dpo.ini --init init/model.h5 --run-dir ref --max-steps 1000 > ref.log 2>&1 || fail "reference: $(tail -2 ref.log)"
same_as_ref() { # RUN_DIR: every logged step equals the one-rank reference (loss 1e-5, grad norm 1e-4 relative)
  python3 - "$1" <<'EOF'
import json, sys
ref = {r["step"]: r for r in map(json.loads, open("ref/metrics.jsonl")) if "loss" in r}
got = {}
for r in map(json.loads, open(sys.argv[1] + "/metrics.jsonl")):
    if "loss" in r:
        got[r["step"]] = r   # a resumed run logs again from the checkpoint's step: the last row wins
# the loss within 1e-5; the gradient norm within 1e-4, the project's bound across grids and DP degrees: over tens of
# fp32 AdamW steps a grid's different summation order moves it by up to 3e-5 (measured: 2.6e-5 at step 40, dp 2)
tol = {"loss": 1e-5, "grad_norm": 1e-4}
bad = [s for s, r in got.items() if s not in ref or any(abs(r[k] - ref[s][k]) > t * max(abs(ref[s][k]), 1e-3)
       for k, t in tol.items())]
print(f"{len(got)} steps (1..{max(got) if got else 0})" + (f", differing: {bad[:5]}" if bad else ""))
sys.exit(1 if bad or not got else 0)
EOF
}
export PREFOPT=$P PREFOPT_JOBS_DIR=$J PREFOPT_INIT=$W/init/model.h5 PREFOPT_CPU_BIND=none
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 BLIS_NUM_THREADS=1 OMP_NUM_THREADS=1
export OMPI_MCA_btl_tcp_if_include=$net.0/24

# ---- 1. two nodes, dp across them -------------------------------------------------------------------------------
id=$(sbatch --parsable --nodes=2 --ntasks-per-node=2 --output="$W/logs/two-%j.out" "$J/dpo.sbatch" dpo.ini "$W/two" \
       --max-steps 6) || fail "sbatch"
st=$(slurm_wait_state "$id" 240 COMPLETED FAILED CANCELLED TIMEOUT) || fail "two-node job still $st after 240 s"
[ "$st" = COMPLETED ] || fail "two-node job ended $st"
grep -q "grid: 1x2 x dp 2 over 4 ranks on 2 node(s)" "$W/logs/two-$id.out" || fail "grid line: $(grep grid: "$W/logs/two-$id.out")"
msg=$(same_as_ref two) || fail "two nodes differ from one rank: $msg"
echo "ok: sbatch --nodes=2 --ntasks-per-node=2 jobs/dpo.sbatch: grid 1x2 per node x dp 2 across nodes; $msg equal one rank"

# ---- 2. time-limit signal on two nodes, requeue, resume on one node ---------------------------------------------
id=$(sbatch --parsable --nodes=2 --ntasks-per-node=2 \
  --time=2 --signal=USR1@50 --export=ALL,PREFOPT_TEST_STEP_DELAY_MS=100 --output="$W/logs/int-%j.out" \
  "$J/dpo.sbatch" dpo.ini "$W/int" --max-steps 1000) || fail "sbatch"
end=$((SECONDS + 210))
while [ "$(scontrol show job "$id" | sed -n 's/.*Restarts=\([0-9]*\).*/\1/p')" = 0 ]; do
  st=$(slurm_job_state "$id")
  case $st in COMPLETED|FAILED|CANCELLED|TIMEOUT) fail "interrupted job ended $st instead of being requeued";; esac
  [ $SECONDS -lt $end ] || fail "no requeue within 210 s"
  sleep 0.5
done
scancel "$id"
grep -q "checkpointed (exit 99): scontrol requeue $id" "$W/logs/int-$id.out" || fail "no checkpoint/requeue in the log"
K=$(sed -n 's/^stop signal: checkpointing at step \([0-9]*\).*/\1/p' "$W/logs/int-$id.out" | tail -1)
[ -n "$K" ] || fail "no 'stop signal: checkpointing at step' line"
N=$((K + 8))
id2=$(sbatch --parsable --nodes=1 --ntasks-per-node=2 --output="$W/logs/one-%j.out" "$J/dpo.sbatch" dpo.ini "$W/int" \
        --max-steps "$N") || fail "sbatch"
st=$(slurm_wait_state "$id2" 240 COMPLETED FAILED CANCELLED TIMEOUT) || fail "one-node resume still $st after 240 s"
[ "$st" = COMPLETED ] || fail "one-node resume ended $st"
grep -q "resumed from $W/int/checkpoints/step-$(printf %08d "$K").h5 at step $K" "$W/logs/one-$id2.out" ||
  fail "did not resume from step $K: $(grep -m1 resumed "$W/logs/one-$id2.out")"
msg=$(same_as_ref int) || fail "interrupted + resumed run differs from one rank: $msg"
echo "ok: USR1 at the time limit on 2 nodes -> checkpoint at step $K -> requeue; resumed on 1 node (grid 1x2) to step $N: $msg equal one rank"
echo "test_slurm_multinode: all checks passed"
