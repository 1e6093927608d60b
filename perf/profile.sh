#!/usr/bin/env bash
# Sample the ranks of an MPI job with `perf record`, then fold, merge and summarise:
#
#   perf/profile.sh [-n NP] [-F HZ] [-o DIR] [-l mpiexec|srun] [-g dwarf|fp|lbr] [-s BYTES] [-w A:B] [-r RANKS]
#                   [-x VAR=VALUE ...] -- COMMAND [ARGS...]
#   e.g. BLIS_NUM_THREADS=1 perf/profile.sh -n 2 -w 3:5 -o prof -- build/prefopt bench --steps 5 --grid-cols 2
#
# -g dwarf (default) unwinds with DWARF from a stack copy of -s BYTES per sample (default 65528, perf's maximum):
#   BLIS's kernels have no frame pointers, and with perf's own default of 8 KiB only a few BLIS samples reach the
#   prefopt function that called them (measured: README "Profiling"); fp = frame pointers (prefopt is built with
#   them, BLIS is not), lbr = Intel's last-branch records.
# -w A:B samples only steps A..B of a prefopt subcommand (train, eval, generate, bench): perf starts with its
#   events off and prefopt switches them on and off at the step boundaries (perf --control fifos;
#   PREFOPT_PERF_CTL and PREFOPT_TRACE_STEPS are set for it).
# -r RANKS samples only these ranks (comma-separated, e.g. 0,3); the others run without perf.
# Writes DIR/perf.RANK.data (raw: perf report -i, hotspot), DIR/rankRANK.folded (per rank), DIR/merged.folded
# (summed over ranks), DIR/ranks.folded (rankN as the root frame), DIR/hotspots.txt (self/inclusive shares),
# DIR/attribution.txt (share of BLIS samples traced back to prefopt) and DIR/flame.svg.
# Under SLURM use -l srun (the job's allocation; srun --mpi=pmix); the rank comes from OMPI_COMM_WORLD_RANK,
# SLURM_PROCID or PMI_RANK. Needs linux-perf (apt-get install linux-perf) and kernel.perf_event_paranoid <= 2 for
# user-space sampling of your own processes.
set -euo pipefail
NP=1 HZ=499 DIR=prof LAUNCHER=mpiexec STACK=65528 CG=dwarf WIN="" RANKS=all
XS=()
usage() { sed -n '2,25p' "$0"; exit 2; }
while getopts "n:F:o:l:x:s:g:w:r:h" o; do
  case $o in
    n) NP=$OPTARG ;; F) HZ=$OPTARG ;; o) DIR=$OPTARG ;; l) LAUNCHER=$OPTARG ;; s) STACK=$OPTARG ;;
    g) CG=$OPTARG ;; w) WIN=$OPTARG ;; r) RANKS=$OPTARG ;; x) XS+=("$OPTARG") ;;
    *) usage ;;
  esac
done
shift $((OPTIND - 1))
[ "${1:-}" = "--" ] && shift
[ $# -ge 1 ] || usage
case $CG in dwarf) CGA="dwarf,$STACK" ;; fp|lbr) CGA=$CG ;; *) echo "profile.sh: -g dwarf, fp or lbr" >&2; exit 2 ;; esac
command -v perf >/dev/null || { echo "profile.sh: perf not found (apt-get install linux-perf)" >&2; exit 1; }
HERE=$(cd "$(dirname "$0")" && pwd)
PY=/usr/bin/python3; [ -x $PY ] || PY=python3
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
rm -f "$DIR"/perf.*.data "$DIR"/rank*.folded "$DIR"/ctl.* "$DIR"/ack.*

# one perf per selected rank, each writing its own file; exec keeps the rank's pid (and MPI's view of it)
REC='r=${OMPI_COMM_WORLD_RANK:-${SLURM_PROCID:-${PMI_RANK:-0}}}
case ",'"$RANKS"'," in ,all,|*,$r,*) ;; *) exec "$@" ;; esac
ctl=()
if [ -n "'"$WIN"'" ]; then
  mkfifo "'"$DIR"'/ctl.$r" "'"$DIR"'/ack.$r"
  ctl=(-D -1 --control "fifo:'"$DIR"'/ctl.$r,'"$DIR"'/ack.$r")
  export PREFOPT_PERF_CTL="'"$DIR"'/ctl.$r:'"$DIR"'/ack.$r" PREFOPT_TRACE_STEPS="'"$WIN"'"
fi
exec perf record -q -F '"$HZ"' --call-graph '"$CGA"' "${ctl[@]}" -o "'"$DIR"'/perf.$r.data" -- "$@"'
case $LAUNCHER in
  mpiexec)
    xargs_=(); for x in "${XS[@]}"; do xargs_+=(-x "$x"); done
    mpiexec -n "$NP" --oversubscribe --bind-to none "${xargs_[@]}" bash -c "$REC" profile "$@" ;;
  srun)
    env_=ALL; for x in "${XS[@]}"; do env_+=",$x"; done
    srun --mpi=pmix -n "$NP" --export="$env_" bash -c "$REC" profile "$@" ;;
  *) echo "profile.sh: -l mpiexec or srun" >&2; exit 2 ;;
esac
rm -f "$DIR"/ctl.* "$DIR"/ack.*

folded=() texts=()
for ((r = 0; r < NP; r++)); do
  [ -f "$DIR/perf.$r.data" ] || continue
  perf script -i "$DIR/perf.$r.data" 2>/dev/null > "$DIR/perf.$r.txt"
  $PY "$HERE/fold_merge.py" collapse "$DIR/perf.$r.txt" -o "$DIR/rank$r.folded"
  folded+=("$DIR/rank$r.folded") texts+=("$DIR/perf.$r.txt")
done
[ ${#folded[@]} -gt 0 ] || { echo "profile.sh: no perf.RANK.data written in $DIR" >&2; exit 1; }
$PY "$HERE/fold_merge.py" attribution "${texts[@]}" > "$DIR/attribution.txt"
rm -f "${texts[@]}"
$PY "$HERE/fold_merge.py" merge "${folded[@]}" -o "$DIR/merged.folded"
$PY "$HERE/fold_merge.py" merge --rank-prefix "${folded[@]}" -o "$DIR/ranks.folded"
$PY "$HERE/fold_merge.py" hotspots "$DIR/merged.folded" --top 30 > "$DIR/hotspots.txt"
$PY "$HERE/fold_merge.py" svg "$DIR/ranks.folded" -o "$DIR/flame.svg" --title "$* ($NP ranks)"
echo "profile.sh: $DIR/{merged,ranks}.folded, $DIR/hotspots.txt, $DIR/flame.svg (hotspot: hotspot $DIR/perf.0.data)"
cat "$DIR/attribution.txt"
head -40 "$DIR/hotspots.txt"
