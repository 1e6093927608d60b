#!/usr/bin/env bash
# A private single-node SLURM on this machine (Debian slurm-wlm 22.05 + munge), after hpc-stack.md 3.5.
# Source this file, then: slurm_start DIR  (exports SLURM_CONF; everything lives under DIR) ... slurm_stop.
# Nothing outside DIR is touched: munged gets its own socket, key copy, pid and log files; slurmctld and
# slurmd listen on free ports picked at start. Needs root (SlurmUser=root, munged started with runuser).
#
# slurm_can_run prints why it cannot and returns 1 when this machine cannot run the daemons.
# Requeue delay: a requeued job is held PD (BeginTime) for AuthInfo cred_expire seconds (default 120, see
# slurm.conf(5) "cred_expire ... also controls how long a requeued job must wait before starting again");
# this configuration sets cred_expire=${SLURM_TEST_CRED_EXPIRE:-10} and schedules every 2 s.
# slurm_write_conf writes such a cluster's slurm.conf, also that of a cluster of emulated nodes (test_slurm_multinode.sh).

slurm_can_run() {
  if [ "$(id -u)" != 0 ]; then echo "not root (slurmd and munged need root here)"; return 1; fi
  local p
  for p in munged slurmctld slurmd sbatch srun runuser; do
    command -v "$p" >/dev/null 2>&1 || [ -x "/usr/sbin/$p" ] || { echo "$p not installed"; return 1; }
  done
  id munge >/dev/null 2>&1 || { echo "no munge user"; return 1; }
  [ -r /etc/munge/munge.key ] || { echo "no /etc/munge/munge.key (reinstall munge)"; return 1; }
  return 0
}

_slurm_free_port() {  # two consecutive free TCP ports, prints the first
  python3 - <<'PY'
import socket, random
for _ in range(200):
    p = random.randint(20000, 60000)
    ok = True
    for q in (p, p + 1):
        s = socket.socket()
        try: s.bind(("127.0.0.1", q))
        except OSError: ok = False
        finally: s.close()
    if ok: print(p); break
PY
}

# slurm_write_conf DIR CLUSTER CTLD_HOST PORT TASK_PLUGIN NODE...: DIR/slurm.conf for a private cluster whose
# state, spool, logs and munge socket are under DIR; slurmctld on CTLD_HOST (SlurmctldHost syntax) at PORT, the
# slurmds at PORT+1. Each NODE is NAME:ADDR:CPUS:MEMORY_MB (one socket, one thread per core), all in partition
# debug. With more than one node the slurmds share DIR, so each gets its own spool directory, pid and log file
# (%n: DIR/spool/NAME, DIR/slurmd.NAME.pid, DIR/log/slurmd.NAME.log); one node uses DIR/spool, DIR/slurmd.pid and
# DIR/log/slurmd.log.
slurm_write_conf() {
  local d=$1 cluster=$2 ctld=$3 port=$4 task=$5 spool pidf logf names="" node name addr cpus mem
  shift 5
  if [ $# -gt 1 ]; then
    spool=$d/spool/%n pidf=$d/slurmd.%n.pid logf=$d/log/slurmd.%n.log
  else
    spool=$d/spool pidf=$d/slurmd.pid logf=$d/log/slurmd.log
  fi
  {
    cat <<CONF
ClusterName=$cluster
SlurmctldHost=$ctld
SlurmctldPort=$port
SlurmdPort=$((port + 1))
AuthType=auth/munge
CryptoType=crypto/munge
AuthInfo=socket=$d/munge/munge.sock,cred_expire=${SLURM_TEST_CRED_EXPIRE:-10}
SlurmUser=root
StateSaveLocation=$d/state
SlurmdSpoolDir=$spool
SlurmctldPidFile=$d/slurmctld.pid
SlurmdPidFile=$pidf
SlurmctldLogFile=$d/log/slurmctld.log
SlurmdLogFile=$logf
TmpFS=$d/tmp
ProctrackType=proctrack/linuxproc
TaskPlugin=$task
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=pmix
ReturnToService=2
JobRequeue=1
KillWait=5
MinJobAge=300
CONF
    for node in "$@"; do
      IFS=: read -r name addr cpus mem <<< "$node"
      echo "NodeName=$name NodeAddr=$addr CPUs=$cpus Boards=1 SocketsPerBoard=1 CoresPerSocket=$cpus ThreadsPerCore=1 RealMemory=$mem State=UNKNOWN"
      names=${names:+$names,}$name
    done
    echo "PartitionName=debug Nodes=$names Default=YES MaxTime=INFINITE State=UP"
  } > "$d/slurm.conf"
}

slurm_start() {
  SLURM_TEST_DIR=${1:?slurm_start DIR}
  local d=$SLURM_TEST_DIR host ncpu port mem
  mkdir -p "$d"/{state,spool,log,munge,tmp}
  chmod 755 "$d"                       # munged runs as the munge user and must reach its socket dir
  chown munge:munge "$d/munge"; chmod 700 "$d/munge"
  install -o munge -g munge -m 400 /etc/munge/munge.key "$d/munge/munge.key"
  runuser -u munge -- test -w "$d/munge" ||
    { echo "slurm_start: the munge user cannot reach $d/munge (make every parent directory o+x)"; return 1; }
  host=$(hostname -s); ncpu=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc); port=$(_slurm_free_port)
  mem=$(awk '/MemTotal/ {print int($2/1024/2)}' /proc/meminfo)
  runuser -u munge -- /usr/sbin/munged --force --socket="$d/munge/munge.sock" --key-file="$d/munge/munge.key" \
    --pid-file="$d/munge/munged.pid" --log-file="$d/munge/munged.log" --seed-file="$d/munge/munged.seed" \
    || { echo "slurm_start: munged failed: $(tail -3 "$d/munge/munged.log" 2>/dev/null)"; return 1; }
  slurm_write_conf "$d" prefopttest localhost "$port" task/affinity "$host:127.0.0.1:$ncpu:$mem"
  export SLURM_CONF=$d/slurm.conf
  slurmctld -f "$SLURM_CONF" -i || { echo "slurm_start: slurmctld failed"; tail -5 "$d/log/slurmctld.log"; return 1; }
  slurmd -f "$SLURM_CONF" || { echo "slurm_start: slurmd failed"; tail -5 "$d/log/slurmd.log"; return 1; }
  local i
  for i in $(seq 1 60); do
    if sinfo -h -o %T 2>/dev/null | grep -qx idle; then return 0; fi
    sleep 0.5
  done
  echo "slurm_start: node not idle after 30 s: $(sinfo 2>&1 | tail -2)"
  tail -5 "$d/log/slurmctld.log" "$d/log/slurmd.log"
  return 1
}

_slurm_kill_pidfile() {  # pidfile: TERM, wait up to 10 s, then KILL
  local f=$1 pid i
  [ -f "$f" ] || return 0
  pid=$(cat "$f" 2>/dev/null) || return 0
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
  kill "$pid" 2>/dev/null || true
  for i in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.5; done
  kill -9 "$pid" 2>/dev/null || true
}

slurm_stop() {
  local d=${SLURM_TEST_DIR:-}
  [ -n "$d" ] || return 0
  if [ -f "$d/slurmctld.pid" ] && [ -n "${SLURM_CONF:-}" ]; then
    scancel --quiet --user=root >/dev/null 2>&1 || true   # only this cluster's jobs (SLURM_CONF is private)
  fi
  _slurm_kill_pidfile "$d/slurmd.pid"
  _slurm_kill_pidfile "$d/slurmctld.pid"
  _slurm_kill_pidfile "$d/munge/munged.pid"
}

# slurm_wait_state JOBID TIMEOUT_S STATE...: waits until the job's state is one of STATEs (squeue while it is
# known to the controller). Prints the final state; returns 1 on timeout.
slurm_job_state() { scontrol show job "$1" 2>/dev/null | sed -n 's/.*JobState=\([A-Z_]*\).*/\1/p'; }
slurm_wait_state() {
  local id=$1 t=$2 s end; shift 2
  end=$((SECONDS + t))
  while [ $SECONDS -lt $end ]; do
    s=$(slurm_job_state "$id")
    for want in "$@"; do [ "$s" = "$want" ] && { echo "$s"; return 0; }; done
    sleep 1
  done
  echo "${s:-unknown}"; return 1
}
