#!/usr/bin/env bash
# Training across emulated nodes (issue 17): two Linux network namespaces with their own addresses on a bridge
# (tests/multinode/netns_cluster.sh), Open MPI launching one orted per "node" through an rsh agent that enters the
# node's namespace, ranks talking TCP between the nodes (shared memory inside a node). Two runs of 4 ranks (2 per
# node) -- a 1x2 grid inside each node with dp 2 across the nodes, and a 2x2 grid spanning both nodes -- give the
# losses and gradient norms of one rank within 1e-5 relative; the nodes' interfaces must have carried the
# traffic (veth byte counters); test_ckpt_hints counts 2 nodes in the cb_nodes hint. Skips (77) with the reason where namespaces cannot be made (not root, no
# CAP_NET_ADMIN, a container without them).
# usage: test_multinode.sh BUILD_DIR   (PREFOPT: the prefopt executable; default BUILD_DIR/prefopt)
set -uo pipefail
source "$(dirname "$0")/lib.sh"
build=${1:?usage: test_multinode.sh BUILD_DIR}
P=$(prefopt_bin "$build")
HINTS=$(cd "$build" && pwd)/tests/test_ckpt_hints
here=$(cd "$(dirname "$0")" && pwd)
CL=$here/multinode/netns_cluster.sh
requires_mpiexec
command -v ip > /dev/null || { echo "skip: no ip (iproute2; tests/deps.sh)"; exit 77; }
[ "$(id -u)" = 0 ] || { echo "skip: network namespaces need root (CAP_NET_ADMIN, CAP_SYS_ADMIN)"; exit 77; }
tag=t$(( $$ % 100000 ))
NODES=2
at_exit 'bash "$CL" down "$tag" "$NODES"'
make_workdir w "${TMPDIR:-/tmp}/prefopt_multinode.XXXXXX"
if ! bash "$CL" up "$tag" "$NODES" > nodes.txt 2> up.err; then
  echo "skip: network namespaces are not permitted here: $(head -1 up.err)"
  exit 77
fi
if ! ip netns exec "pf${tag}n0" unshare --uts true 2> up.err; then
  echo "skip: cannot enter a node's namespaces (ip netns exec + unshare --uts): $(head -1 up.err)"
  exit 77
fi
mapfile -t nodes < nodes.txt
for i in "${!nodes[@]}"; do echo "${nodes[$i]} pf${tag}n$i"; done > netns.map
for n in "${nodes[@]}"; do echo "$n slots=2"; done > hostfile
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 BLIS_NUM_THREADS=1 OMP_NUM_THREADS=1
export PREFOPT_NETNS_MAP=$w/netns.map
net=${nodes[0]%.*}.0/24
MPI=(mpiexec --hostfile hostfile -n 4 --map-by slot --bind-to none
     --mca plm_rsh_agent "$CL agent" --mca plm_rsh_no_tree_spawn 1
     --mca oob_tcp_if_include "$net" --mca btl_tcp_if_include "$net" --mca btl self,vader,tcp
     -x PREFOPT_NETNS_MAP -x BLIS_NUM_THREADS -x OMP_NUM_THREADS)

$PY - <<'EOF'
import json, random
r = random.Random(5)
L = "abcdefgh"
with open("train.jsonl", "w") as f:
    for i in range(128):
        p = "".join(r.choice(L) for _ in range(4))
        c, rej = p[0] * 3, r.choice([x for x in L if x != p[0]]) * 3
        f.write(json.dumps({"prompt": p + ":", "chosen": c, "rejected": rej}) + "\n")
EOF
"$P" pack --input train.jsonl --output train.h5 --quiet || { echo "FAIL: pack"; exit 1; }
"$P" train --data train.h5 --run-dir init --n-layer 2 --n-embd 32 --n-head 4 --max-position 16 --seed 3 \
  --epochs 0 > init.log 2>&1 || { cat init.log; echo "FAIL: the initial model"; exit 1; }
COMMON=(--data train.h5 --init init/model.h5 --loss dpo --lr 1e-3 --lr-scheduler constant --batch-size 16
        --max-steps 3 --log-interval 1000 --peak-gflops 1 --resume never)
"$P" train "${COMMON[@]}" --run-dir r1 > r1.log 2>&1 || { cat r1.log; echo "FAIL: one rank"; exit 1; }

rx() { ip netns exec "pf${tag}n$1" cat /sys/class/net/eth0/statistics/rx_bytes; }
fails=0
for cfg in "1 2 2" "2 2 1"; do
  set -- $cfg
  run=nodes_${1}x${2}_dp$3
  b0=$(rx 0) b1=$(rx 1)
  # `cd` on the node: the orted starts in the user's home; ranks must see the run's relative paths
  timeout -k 5 180 "${MPI[@]}" -wdir "$w" "$P" train "${COMMON[@]}" --run-dir "$run" --grid-rows "$1" --grid-cols "$2" \
    --dp "$3" < /dev/null > "$run.log" 2>&1
  rc=$?
  d0=$(( $(rx 0) - b0 )) d1=$(( $(rx 1) - b1 ))
  if [ "$rc" != 0 ]; then
    echo "FAIL: $run: exit $rc"
    tail -15 "$run.log" | sed 's/^/    /'
    fails=$((fails + 1))
    continue
  fi
  if ! msg=$($PY - "$run" <<'EOF'
import json, sys
def rows(p):
    return [json.loads(l) for l in open(p) if '"loss"' in l]
a, b = rows("r1/metrics.jsonl"), rows(sys.argv[1] + "/metrics.jsonl")
bad = [] if len(a) == len(b) == 3 else [f"{len(b)} steps"]
for x, y in zip(a, b):
    for k in ("loss", "grad_norm", "rewards/margins"):
        if abs(x[k] - y[k]) > 1e-5 * max(abs(x[k]), 1e-3):
            bad.append(f"step {x['step']} {k}: {y[k]!r} vs {x[k]!r}")
print("; ".join(bad[:4]))
sys.exit(1 if bad else 0)
EOF
  ); then
    echo "FAIL: $run differs from one rank: $msg"
    fails=$((fails + 1))
  elif [ "$d0" -lt 20000 ] || [ "$d1" -lt 20000 ]; then
    echo "FAIL: $run: the node interfaces carried only $d0 and $d1 bytes: the ranks did not talk over the network"
    fails=$((fails + 1))
  else
    echo "ok: $run: 4 ranks on 2 namespaces (${nodes[*]}) equal one rank; node interfaces received $d0 and $d1 bytes"
  fi
done
# bounded aggregators (issue 17): across the 2 nodes, a checkpoint file's cb_nodes hint counts 2 nodes
if [ -x "$HINTS" ]; then
  timeout -k 5 120 "${MPI[@]}" -wdir "$w" "$HINTS" < /dev/null > hints.log 2>&1
  if grep -q "test_ckpt_hints: 2 nodes, passed" hints.log; then
    echo "ok: test_ckpt_hints on 2 namespaces: cb_nodes 2"
  else
    echo "FAIL: test_ckpt_hints on 2 namespaces"
    tail -15 hints.log | sed 's/^/    /'
    fails=$((fails + 1))
  fi
fi
[ "$fails" = 0 ] || { echo "test_multinode: $fails run(s) failed"; exit 1; }
echo "test_multinode: all runs passed"
