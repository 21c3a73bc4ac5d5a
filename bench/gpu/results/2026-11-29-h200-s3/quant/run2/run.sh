#!/usr/bin/env bash
# session-3 quant-speed run 2: kernel tests, GPU tests, bench (+ sweep) and the old bench (same run), sanitizers, ncu
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
step "e8cu_bench_old (main at cdf35b3, before the change; full, same machine)" 60 $B/bin/e8cu_bench_old --out $OUT/gpu_old.json
step "e8cu_bench --quant-only (new, again)" 40 $B/bin/e8cu_bench --quant-only
for tool in memcheck synccheck; do
  step "GPU_QUICK=1 compute-sanitizer --tool $tool test_e8cu_codec" 60 env GPU_QUICK=1 compute-sanitizer --tool $tool --error-exitcode 99 $B/bin/test_e8cu_codec
done
step "GPU_QUICK=1 compute-sanitizer --tool memcheck test_e8cu_kernels" 40 env GPU_QUICK=1 compute-sanitizer --tool memcheck --error-exitcode 99 $B/bin/test_e8cu_kernels
if command -v ncu >/dev/null; then
  S="--section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats --section SchedulerStats"
  step "ncu quantize kernel (one launch)" 45 ncu --clock-control none -k regex:e8cu_quantize_kernel -c 1 $S $B/bin/e8cu_bench --quant-only --reps 1
  step "ncu dequantize kernel (one launch)" 45 ncu --clock-control none --kernel-id ::regex:e8cu_dequantize_kernel:1 $S $B/bin/e8cu_bench --quant-only --reps 1
else echo "=== ncu: not on this machine" >>$L; fi
echo "=== total $((SECONDS - t0)) s" >>$L
grep -E "^===|identical|DIFFER|MISMATCH|quant only|quant (en|de)code|e2e|d2d|sweep|E8CU_|ERROR SUMMARY|PASSED|FAILED" $L | tail -70
