#!/usr/bin/env bash
# Sample every rank of an MPI job with `perf record --call-graph dwarf`, then fold, merge and summarise:
#
#   perf/profile.sh [-n NP] [-F HZ] [-o DIR] [-l mpiexec|srun] [-x VAR=VALUE ...] -- COMMAND [ARGS...]
#   e.g. BLIS_NUM_THREADS=1 perf/profile.sh -n 2 -o prof -- build/prefopt bench --steps 3 --grid-cols 2
#
# Writes DIR/perf.RANK.data (raw), DIR/rankRANK.folded (per rank), DIR/merged.folded (summed over ranks),
# DIR/ranks.folded (rankN as the root frame), DIR/hotspots.txt (self/inclusive shares) and DIR/flame.svg.
# Under SLURM use -l srun (the job's allocation; srun --mpi=pmix); the rank comes from OMPI_COMM_WORLD_RANK,
# SLURM_PROCID or PMI_RANK. BLIS kernels have no frame pointers: --call-graph dwarf unwinds them (8 KiB of stack
# per sample by default, -s to change). Needs linux-perf (apt-get install linux-perf) and
# kernel.perf_event_paranoid <= 2 for user-space sampling of your own processes.
set -euo pipefail
NP=1 HZ=499 DIR=prof LAUNCHER=mpiexec STACK=8192
XS=()
while getopts "n:F:o:l:x:s:h" o; do
  case $o in
    n) NP=$OPTARG ;; F) HZ=$OPTARG ;; o) DIR=$OPTARG ;; l) LAUNCHER=$OPTARG ;; s) STACK=$OPTARG ;;
    x) XS+=("$OPTARG") ;;
    *) sed -n '2,14p' "$0"; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
[ "${1:-}" = "--" ] && shift
[ $# -ge 1 ] || { sed -n '2,14p' "$0"; exit 2; }
command -v perf >/dev/null || { echo "profile.sh: perf not found (apt-get install linux-perf)" >&2; exit 1; }
HERE=$(cd "$(dirname "$0")" && pwd)
PY=/usr/bin/python3; [ -x $PY ] || PY=python3
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
rm -f "$DIR"/perf.*.data "$DIR"/rank*.folded

# one perf per rank, each writing its own file; exec keeps the rank's pid (and MPI's view of it)
REC='r=${OMPI_COMM_WORLD_RANK:-${SLURM_PROCID:-${PMI_RANK:-0}}}; exec perf record -q -F '"$HZ"' --call-graph dwarf,'"$STACK"' -o '"$DIR"'/perf.$r.data -- "$@"'
case $LAUNCHER in
  mpiexec)
    xargs_=(); for x in "${XS[@]}"; do xargs_+=(-x "$x"); done
    mpiexec -n "$NP" --oversubscribe --bind-to none "${xargs_[@]}" bash -c "$REC" profile "$@" ;;
  srun)
    env_=ALL; for x in "${XS[@]}"; do env_+=",$x"; done
    srun --mpi=pmix -n "$NP" --export="$env_" bash -c "$REC" profile "$@" ;;
  *) echo "profile.sh: -l mpiexec or srun" >&2; exit 2 ;;
esac

folded=()
for ((r = 0; r < NP; r++)); do
  [ -f "$DIR/perf.$r.data" ] || { echo "profile.sh: no $DIR/perf.$r.data" >&2; continue; }
  perf script -i "$DIR/perf.$r.data" 2>/dev/null | $PY "$HERE/fold_merge.py" collapse - -o "$DIR/rank$r.folded"
  folded+=("$DIR/rank$r.folded")
done
$PY "$HERE/fold_merge.py" merge "${folded[@]}" -o "$DIR/merged.folded"
$PY "$HERE/fold_merge.py" merge --rank-prefix "${folded[@]}" -o "$DIR/ranks.folded"
$PY "$HERE/fold_merge.py" hotspots "$DIR/merged.folded" --top 30 > "$DIR/hotspots.txt"
$PY "$HERE/fold_merge.py" svg "$DIR/ranks.folded" -o "$DIR/flame.svg" --title "$* ($NP ranks)"
echo "profile.sh: $DIR/{merged,ranks}.folded, $DIR/hotspots.txt, $DIR/flame.svg (hotspot: hotspot $DIR/perf.0.data)"
head -40 "$DIR/hotspots.txt"
