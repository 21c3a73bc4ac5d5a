#!/usr/bin/env bash
# bench/e2e/device-run.sh OUT [e2e_bench.py options]
#
# The GPU machine's side of the e2e bench, for one device call (bench/e2e/README.md, "On the
# device"). Run from the repository root there.
#   * the bundle: .e2e-model/1/bundle.tar.xz (bench/e2e/split-model.sh; carried by call 1,
#     still there in call 2 on the same warm machine) unpacked into build/e2e-dev/, else
#     build/e2e/bundle as carried;
#   * the real-weights check: when .e2e-model/1/a and .e2e-model/2/b are both there (call 2),
#     they are joined into build/e2e-dev/<name>.gguf and checked against
#     .e2e-model/2/gguf.sha256; only then --real-check --gguf ... --text ... is added
#     (otherwise it says why, and the timing runs of the plan go on without it);
#   * e8kvd's data directory and the converted model under build/ (the machine's disk), the
#     results straight into OUT (written after every step, so a run stopped by the call's
#     time limit still brings back what it measured), its log in OUT/e2e_log.txt.
set -uo pipefail
out=$1; shift
cd "$(dirname "$0")/../.."
mkdir -p "$out" build/e2e-dev

main() {
echo "device-run: $(date -u +%FT%TZ) $(nvidia-smi -L 2>/dev/null | head -n 1)"
py=${PYTHON:-python3}
bundle=build/e2e/bundle
if [ -f .e2e-model/1/bundle.tar.xz ]; then
  rm -rf build/e2e-dev/bundle
  "$py" -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' \
    .e2e-model/1/bundle.tar.xz build/e2e-dev || { echo "device-run: bundle.tar.xz unreadable"; return 1; }
  bundle=build/e2e-dev/bundle
fi
[ -x "$bundle/bin/e8kvd" ] || { echo "device-run: no bundle ($bundle/bin/e8kvd)"; return 1; }
real=()
if [ -f .e2e-model/1/a ] && [ -f .e2e-model/2/b ] && [ -f .e2e-model/2/gguf.sha256 ]; then
  name=$(awk '{print $2}' .e2e-model/2/gguf.sha256)
  cat .e2e-model/1/a .e2e-model/2/b > "build/e2e-dev/$name"
  if (cd build/e2e-dev && sha256sum -c --quiet ../../.e2e-model/2/gguf.sha256); then
    real=(--real-check --gguf "build/e2e-dev/$name" --text .e2e-model/2/wikitext-2-raw-test.txt)
  else
    echo "device-run: the joined GGUF's sha256 differs: real-weights check not run"
  fi
else
  echo "device-run: .e2e-model/1/a, 2/b or 2/gguf.sha256 missing (call 1 of 2 carries 1/," \
       "call 2 carries 2/): no real-weights check in this call"
fi
bench/e2e/run.sh "$bundle" "$out" --work-dir build "${real[@]}" "$@"
rc=$?
echo "device-run: bench exit status $rc at $(date -u +%FT%TZ)"
return $rc
}

main "$@" 2>&1 | tee -a "$out/e2e_log.txt"
exit "${PIPESTATUS[0]}"
