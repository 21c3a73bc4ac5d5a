#!/usr/bin/env bash
# session-4 quant-encode run 2: kernel tests, quant sweep (incl. grid waves), GPU tests, ncu metrics, memcheck
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
M=sm__cycles_active.avg,sm__cycles_active.min,sm__cycles_active.max,sm__cycles_elapsed.avg,smsp__thread_inst_executed.sum,smsp__inst_executed.sum,sm__warps_active.avg.pct_of_peak_sustained_active,smsp__issue_active.avg.pct_of_peak_sustained_active,gpu__time_duration.sum,launch__grid_size,launch__registers_per_thread,dram__throughput.avg.pct_of_peak_sustained_elapsed
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader >>$L
step "test_e8cu_kernels" 90 $B/bin/test_e8cu_kernels
step "e8cu_bench --quant-only --sweep" 150 $B/bin/e8cu_bench --quant-only --sweep --out $OUT/quant.json
step "test_e8cu_codec" 60 $B/bin/test_e8cu_codec
step "test_e8cu_groups" 45 $B/bin/test_e8cu_groups
step "test_e8cu_entropy" 30 $B/bin/test_e8cu_entropy
step "ncu metrics (launch 9, default grid)" 90 ncu --clock-control none -k regex:e8cu_quantize_kernel -s 8 -c 1 --metrics $M $B/bin/e8cu_bench --quant-only --reps 1 --out /tmp/n1.json
step "ncu metrics (launch 9, E8CU_Q_GRID=1)" 90 env E8CU_Q_GRID=1 ncu --clock-control none -k regex:e8cu_quantize_kernel -s 8 -c 1 --metrics $M $B/bin/e8cu_bench --quant-only --reps 1 --out /tmp/n2.json
step "GPU_QUICK=1 compute-sanitizer --tool memcheck test_e8cu_codec" 60 env GPU_QUICK=1 compute-sanitizer --tool memcheck --error-exitcode 99 $B/bin/test_e8cu_codec
step "GPU_QUICK=1 compute-sanitizer --tool memcheck test_e8cu_kernels" 60 env GPU_QUICK=1 compute-sanitizer --tool memcheck --error-exitcode 99 $B/bin/test_e8cu_kernels
echo "=== total $((SECONDS - t0)) s" >>$L
grep -vE "^==PROF|^\s*$|WARNING|Warning|Section|----|Metric Name" $L | tail -75
