#!/usr/bin/env bash
# session-3 device run: 3x test_e8cu_codec (GPU entropy), groups, entropy, bench, sanitizers (quick)
set -u
B=$PWD/.devbundle-gpu; export LD_LIBRARY_PATH=$B/lib
L=$OUT/tests_log.txt
t0=$SECONDS
step() { # name limit cmd...
  local name=$1 lim=$2; shift 2
  if [ $((SECONDS - t0)) -gt ${BUDGET:-280} ]; then echo "=== $name: SKIPPED (time)" >>$L; return; fi
  echo "=== $name ($(date -u +%T))" >>$L
  local s=$SECONDS
  timeout $lim "$@" >>$L 2>&1; local rc=$?
  echo "=== $name rc=$rc ($((SECONDS - s)) s)" >>$L
}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader >>$L
for k in 1 2 3; do step "test_e8cu_codec run $k (E8CU_GPU_ENTROPY=1)" 45 env E8CU_GPU_ENTROPY=1 $B/bin/test_e8cu_codec; done
step "test_e8cu_groups" 45 $B/bin/test_e8cu_groups
step "test_e8cu_entropy" 30 $B/bin/test_e8cu_entropy
step "e8cu_bench (defaults: GPU entropy, groups of 2^26)" 60 $B/bin/e8cu_bench --out $OUT/gpu.json
for tool in racecheck synccheck memcheck; do
  step "GPU_QUICK=1 compute-sanitizer --tool $tool test_e8cu_codec" 30 env GPU_QUICK=1 compute-sanitizer --tool $tool --error-exitcode 99 $B/bin/test_e8cu_codec
done
echo "=== total $((SECONDS - t0)) s" >>$L
grep "^===" $L | tail -30
