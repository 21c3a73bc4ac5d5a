#!/usr/bin/env bash
# codec/cuda/gpu-run.sh test|bench BINDIR BUILD
#
# Runs the GPU codec's tests or benchmark on a machine with an NVIDIA GPU. BINDIR holds the
# programs (build/<x>/bin, or .devbundle/bin when they were built elsewhere and bundled with
# ../shared/tools/device-bundle; then its ../lib is put on LD_LIBRARY_PATH).
#   test:  every test_* program, then the same programs' GPU_QUICK=1 mode under compute-sanitizer
#          memcheck and racecheck; closing line "tests: N passed, N failed".
#   bench: e8cu_bench, writing BUILD/bench/gpu.json.
set -u
mode=$1 bindir=$2 build=$3
[ -d "$bindir/../lib" ] && export LD_LIBRARY_PATH="$bindir/../lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
case $mode in
test)
  pass=0 fail=0 failed=()
  run() {
    local name=$1; shift
    echo "=== $name"
    if "$@"; then pass=$((pass+1)); echo "=== $name: ok"
    else fail=$((fail+1)); failed+=("$name"); echo "=== $name: FAILED"; fi
  }
  sanitize() {  # compute-sanitizer TOOL PROGRAM: fails on any reported error
    local tool=$1 prog=$2
    GPU_QUICK=1 compute-sanitizer --tool "$tool" --error-exitcode 99 "$prog"
  }
  progs=("$bindir"/test_*)
  [ -e "${progs[0]}" ] || { echo "gpu-run: no test programs in $bindir" >&2; exit 1; }
  for p in "${progs[@]}"; do run "$(basename "$p")" "$p"; done
  if command -v compute-sanitizer >/dev/null; then
    for p in "${progs[@]}"; do
      run "memcheck $(basename "$p")" sanitize memcheck "$p"
      run "racecheck $(basename "$p")" sanitize racecheck "$p"
      run "synccheck $(basename "$p")" sanitize synccheck "$p"
    done
  else
    fail=$((fail+1)); failed+=("compute-sanitizer not found")
  fi
  echo
  for f in "${failed[@]}"; do echo "failed: $f"; done
  echo "tests: $pass passed, $fail failed"
  [ "$fail" -eq 0 ]
  ;;
bench)
  mkdir -p "$build/bench"
  "$bindir/e8cu_bench" --out "$build/bench/gpu.json"
  ;;
*) echo "usage: gpu-run.sh test|bench BINDIR BUILD" >&2; exit 2 ;;
esac
