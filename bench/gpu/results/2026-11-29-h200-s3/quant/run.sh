#!/usr/bin/env bash
# session-3 quant-speed run: new kernel tests, GPU tests, bench (+ sweep) vs the old bench, sanitizers
set -u
B=$PWD/.devbundle-gpu; export LD_LIBRARY_PATH=$B/lib
L=$OUT/tests_log.txt
t0=$SECONDS
step() { # name limit cmd...
  local name=$1 lim=$2; shift 2
  if [ $((SECONDS - t0)) -gt ${BUDGET:-200} ]; then echo "=== $name: SKIPPED (time)" >>$L; return; fi
  echo "=== $name ($(date -u +%T))" >>$L
  local s=$SECONDS
  timeout $lim "$@" >>$L 2>&1; local rc=$?
  echo "=== $name rc=$rc ($((SECONDS - s)) s)" >>$L
}
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader >>$L
step "test_e8cu_kernels" 60 $B/bin/test_e8cu_kernels
step "test_e8cu_codec" 60 $B/bin/test_e8cu_codec
step "test_e8cu_groups" 45 $B/bin/test_e8cu_groups
step "test_e8cu_entropy" 30 $B/bin/test_e8cu_entropy
step "e8cu_bench --sweep (new kernels)" 90 $B/bin/e8cu_bench --sweep --out $OUT/gpu.json
step "e8cu_bench_old --quant-only (main before this change, same machine)" 40 $B/bin/e8cu_bench_old --quant-only
step "e8cu_bench --quant-only (new, again)" 40 $B/bin/e8cu_bench --quant-only
for tool in memcheck synccheck; do
  step "GPU_QUICK=1 compute-sanitizer --tool $tool test_e8cu_codec" 60 env GPU_QUICK=1 compute-sanitizer --tool $tool --error-exitcode 99 $B/bin/test_e8cu_codec
done
step "GPU_QUICK=1 compute-sanitizer --tool racecheck test_e8cu_kernels" 40 env GPU_QUICK=1 compute-sanitizer --tool racecheck --error-exitcode 99 $B/bin/test_e8cu_kernels
echo "=== total $((SECONDS - t0)) s" >>$L
grep -E "^===|identical|DIFFER|MISMATCH|quant only|quant (en|de)code|d2d|sweep|E8CU_|ERROR SUMMARY|passed|failed|FAILED" $L | tail -60
