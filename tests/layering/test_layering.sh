#!/usr/bin/env bash
# The layering rule (README "Architecture", tests/layering/check_layers.py): the tree as it is must be clean, and
# planted violations must each be caught by name: an #include of MPI in the objectives (direct and through a
# header), a model file including the training layer's header, a call from the model up into the training layer,
# and two files of one folder calling each other.
set -euo pipefail
B=${1:?build dir}
SRC=${PREFOPT_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
CHECK="python3 $SRC/tests/layering/check_layers.py"
W=$(mktemp -d); trap 'rm -rf "$W"' EXIT
fail() { echo "FAIL: $*"; exit 1; }

# 1. the real tree, includes and symbols of the library as built
$CHECK "$SRC" --objects "$B" > "$W/real.txt" || { cat "$W/real.txt"; fail "the tree breaks its layering rule"; }
cat "$W/real.txt"

# 2. planted include violations in a copy of the tree
mkdir -p "$W/t"; cp -r "$SRC/src" "$SRC/io" "$W/t/"; mkdir -p "$W/t/include"; cp -r "$SRC/include/prefopt" "$W/t/include/"
expect() {  # expect LABEL PATTERN: the checker fails and prints PATTERN
  local out rc=0
  out=$($CHECK "$W/t" 2>&1) || rc=$?
  [ $rc = 1 ] || { echo "$out"; fail "$1: the checker exited $rc, not 1"; }
  grep -qF -- "$2" <<< "$out" || { echo "$out"; fail "$1: no line with '$2'"; }
  echo "caught ($1): $(grep -F -- "$2" <<< "$out" | head -1)"
}
sed -i '0,/^#include/s//#include <mpi.h>\n#include/' "$W/t/src/objectives/loss.c"
expect "MPI in an objective" "src/objectives/loss.c:"
expect "MPI in an objective (library)" "objectives includes <mpi.h> (MPI)"
cp "$SRC/src/objectives/loss.c" "$W/t/src/objectives/loss.c"
sed -i 's|#include "prefopt/common.h"|#include "prefopt/agree.h"|' "$W/t/include/prefopt/metrics.h"
expect "MPI through a header" "reaches <mpi.h> through include/prefopt/agree.h"
cp "$SRC/include/prefopt/metrics.h" "$W/t/include/prefopt/metrics.h"
sed -i '0,/^#include/s//#include "prefopt\/train.h"\n#include/' "$W/t/src/model/head.c"
expect "model includes train" "model includes prefopt/train.h of layer train"
cp "$SRC/src/model/head.c" "$W/t/src/model/head.c"
$CHECK "$W/t" > /dev/null || fail "the restored copy is not clean"

# 3. planted call violations: objects compiled from tiny sources laid out like the build's
O=$W/b/CMakeFiles/prefopt_lib.dir
mkdir -p "$O/src/model" "$O/src/train" "$W/t/src/model" "$W/t/src/train"
printf 'int plant_b(void);\nint plant_a(void) { return plant_b() + 1; }\n' > "$W/t/src/model/plant_a.c"
printf 'int plant_a(void);\nint plant_b(void) { return plant_a() - 1; }\n' > "$W/t/src/model/plant_b.c"
printf 'int plant_train(void);\nint plant_up(void) { return plant_train(); }\n' > "$W/t/src/model/plant_up.c"
printf 'int plant_train(void) { return 7; }\n' > "$W/t/src/train/plant_train.c"
for f in model/plant_a model/plant_b model/plant_up train/plant_train; do
  cc -c "$W/t/src/$f.c" -o "$O/src/$f.c.o"
done
out=$($CHECK "$W/t" --objects "$W/b" 2>&1) && { echo "$out"; fail "planted calls not caught"; }
grep -qF "circle of calls in src/model: plant_a.c -> plant_b.c -> plant_a.c" <<< "$out" || { echo "$out"; fail "circle not caught"; }
grep -qF "src/model/plant_up.c: calls plant_train of src/train/plant_train.c (layer train" <<< "$out" ||
  { echo "$out"; fail "upward call not caught"; }
echo "caught (calls): circle of calls in src/model; src/model/plant_up.c calls up into src/train"
echo "test_layering: passed"
