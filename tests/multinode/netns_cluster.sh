#!/usr/bin/env bash
# Emulated nodes on one machine (issue 17): N Linux network namespaces, each with its own address on a private
# bridge (veth pairs), and an rsh agent for Open MPI that "logs in" to a node by entering its namespace.
#   netns_cluster.sh up TAG N      creates namespaces pf<TAG>n0..n<N-1> (10.<B>.0.1..N), bridge pf<TAG>br; prints
#                                  the node addresses, one a line
#   netns_cluster.sh down TAG N    removes them (idempotent)
#   netns_cluster.sh agent ...     the plm_rsh_agent: [ssh-style options] HOST COMMAND... -> runs COMMAND in
#                                  HOST's namespace (HOST is a node address, as in the hostfile)
# TAG keeps concurrent clusters apart (interface names are at most 15 characters: TAG up to 6 characters). Needs
# root (CAP_NET_ADMIN, CAP_SYS_ADMIN) and iproute2.
set -uo pipefail
cmd=${1:-}
shift || true

net_of() { echo "10.$((200 + $(printf '%d' "0x$(echo -n "$1" | md5sum | cut -c1-2)") % 50)).0"; }

case $cmd in
up)
  tag=$1 n=$2 net=$(net_of "$1")
  br=pf${tag}br
  ip link add "$br" type bridge || exit 1
  ip addr add "$net.254/24" dev "$br" && ip link set "$br" up || exit 1
  for i in $(seq 0 $((n - 1))); do
    ns=pf${tag}n$i
    ip netns add "$ns" || exit 1
    ip link add "pf${tag}v$i" type veth peer name eth0 netns "$ns" || exit 1
    ip link set "pf${tag}v$i" master "$br" up || exit 1
    ip -n "$ns" addr add "$net.$((i + 1))/24" dev eth0 || exit 1
    ip -n "$ns" link set eth0 up && ip -n "$ns" link set lo up || exit 1
    echo "$net.$((i + 1))"
  done
  ;;
down)
  tag=$1 n=$2
  for i in $(seq 0 $((n - 1))); do
    ip netns del "pf${tag}n$i" 2> /dev/null
    ip link del "pf${tag}v$i" 2> /dev/null
  done
  ip link del "pf${tag}br" 2> /dev/null
  true
  ;;
agent)
  # Open MPI calls the agent like ssh: options first (e.g. -x), then the host, then the remote command's words,
  # which a remote shell would join and interpret: so do we.
  while [ $# -gt 0 ] && [ "${1:0:1}" = - ]; do shift; done
  host=$1
  shift
  ns=$(cat "${PREFOPT_NETNS_MAP:?PREFOPT_NETNS_MAP: file of 'address namespace' lines}" | awk -v h="$host" '$1 == h {print $2}')
  [ -n "$ns" ] || { echo "netns agent: no namespace for host $host" >&2; exit 255; }
  # its own UTS namespace too: the node's hostname is the namespace's name, so Open MPI's per-node session
  # directories and shared-memory segments (named after the host) do not collide between nodes
  exec ip netns exec "$ns" unshare --uts /bin/sh -c "hostname $ns && $*"
  ;;
*)
  echo "usage: netns_cluster.sh up|down TAG N | agent HOST COMMAND..." >&2
  exit 2
  ;;
esac
