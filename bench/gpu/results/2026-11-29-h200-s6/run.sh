#!/usr/bin/env bash
# session-6 device call: the four GPU test programs, e8cu_bench (gpu.json) with a same-run
# sweep of the session's levers (each off, both off, the default again; encode side only:
# the levers change only the quantize kernel), then, time permitting, ncu counters of one
# quantize launch (instructions, issue, pipes). Run from the repository root with the bundle
# (built binaries + libraries) at .devbundle-gpu/; BUDGET: seconds after which steps are skipped.
set -u
B=$PWD/.devbundle-gpu; export LD_LIBRARY_PATH=$B/lib
L=$OUT/log.txt
t0=$SECONDS
step() { # name limit cmd...
  local name=$1 lim=$2; shift 2
  if [ $((SECONDS - t0 + lim / 2)) -gt ${BUDGET:-70} ]; then echo "=== $name: SKIPPED (time)" >>$L; return; fi
  echo "=== $name ($(date -u +%T))" >>$L
  local s=$SECONDS
  timeout $lim "$@" >>$L 2>&1; local rc=$?
  echo "=== $name rc=$rc ($((SECONDS - s)) s)" >>$L
}
{ echo "checkout: $(git log -1 --format='%h %s' 2>/dev/null | cut -c1-80)"; cat $B/commit.txt 2>/dev/null
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader; } >>$L 2>&1
for t in test_e8cu_kernels test_e8cu_codec test_e8cu_groups test_e8cu_entropy; do
  step "$t" 40 $B/bin/$t
done
step "e8cu_bench --sweep-knobs" 60 $B/bin/e8cu_bench --out $OUT/gpu.json --sweep-enc-only \
  --sweep-knobs "${KNOBS:-E8CU_CREGS=0 default E8CU_CREGS=0 default}"
M=smsp__inst_executed.sum,smsp__thread_inst_executed.sum,smsp__issue_active.avg.pct_of_peak_sustained_active,sm__cycles_active.avg,gpu__time_duration.sum,smsp__inst_executed_pipe_alu.sum,smsp__inst_executed_pipe_fma.sum,smsp__inst_executed_pipe_fmaheavy.sum,smsp__inst_executed_pipe_lsu.sum,smsp__inst_executed_pipe_uniform.sum,smsp__inst_executed_pipe_xu.sum,sm__pipe_alu_cycles_active.avg.pct_of_peak_sustained_active,sm__pipe_fma_cycles_active.avg.pct_of_peak_sustained_active,sm__pipe_shared_cycles_active.avg.pct_of_peak_sustained_active,sm__warps_active.avg.pct_of_peak_sustained_active
step "ncu (launch 9, default)" 30 ncu --clock-control none -k regex:e8cu_quantize_kernel -s 8 -c 1 --metrics $M $B/bin/e8cu_bench --quant-only --reps 1 --out /tmp/n1.json
echo "=== total $((SECONDS - t0)) s" >>$L
grep -E "^===|^checkout|H200|identical|differ|DIFFER|MISMATCH|decided|quant|d2d|e2e|CPU path|E8CU_|default|PASSED|FAILED|sm__|smsp__|gpu__" $L | tail -80
