#!/usr/bin/env bash
# session-5 final run: GPU tests, full bench + sweep, ncu metrics of one quantize launch, sanitizers
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
M=sm__cycles_active.avg,sm__cycles_elapsed.avg,smsp__thread_inst_executed.sum,smsp__inst_executed.sum,sm__warps_active.avg.pct_of_peak_sustained_active,smsp__issue_active.avg.pct_of_peak_sustained_active,gpu__time_duration.sum,launch__grid_size,dram__throughput.avg.pct_of_peak_sustained_elapsed
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader >>$L
for t in test_e8cu_kernels test_e8cu_codec test_e8cu_groups test_e8cu_entropy; do
  step "$t" 90 $B/bin/$t
done
step "e8cu_bench --sweep" 200 $B/bin/e8cu_bench --sweep --out $OUT/gpu.json
step "ncu metrics (launch 9)" 60 ncu --clock-control none -k regex:e8cu_quantize_kernel -s 8 -c 1 --metrics $M $B/bin/e8cu_bench --quant-only --reps 1 --out /tmp/n1.json
for tool in memcheck racecheck synccheck; do
  for t in test_e8cu_kernels test_e8cu_codec; do
    step "GPU_QUICK=1 compute-sanitizer --tool $tool $t" 60 env GPU_QUICK=1 compute-sanitizer --tool $tool --error-exitcode 99 $B/bin/$t
  done
done
echo "=== total $((SECONDS - t0)) s" >>$L
grep -E "^===|identical|differ|DIFFER|MISMATCH|decided|quant|d2d|e2e|cpu|E8CU_|SUMMARY|PASSED|FAILED|sm__|smsp__|gpu__|launch__|dram__" $L | tail -100
