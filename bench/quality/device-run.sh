#!/usr/bin/env bash
# bench/quality/device-run.sh GGUF OUT [fastrun options]
#
# The full quality run of issue 3 (W=128 windows x P in {512, 1024, 2048}, C=256, 16 retrieval
# probes per P, 18 codec configurations) on the GPU machine, in one device call, run from the
# repository root there. GGUF is the SmolLM2 GGUF: a file, or the folder bench/e2e/split-model.sh
# fills (.e2e-model: 1/a + 2/b are joined and checked against 2/gguf.sha256). OUT gets
# quality.json (rewritten every minute while running, "complete": false until the end),
# quality_rd.png and quality_log.txt. Default deadline: 470 s after this script starts (the
# model load included), so that the whole call stays under 9 minutes; change it with
# --deadline SECONDS (a later option wins).
#
# What it needs besides the tree (first found wins):
#   libe8codec.so + libzstd/libisal: build/quality/bundle/lib (make BUILD=build/quality
#       quality-bundle), else the e2e bundle (build/e2e-dev/bundle, or .e2e-model/{1,2}/
#       bundle.tar.xz unpacked here into build/quality-dev);
#   the gguf Python package: already importable, else a gguf wheel from either bundle's whl/;
#   WikiText-2: build/quality/bundle/wikitext-2-raw-test.txt.gz, else data/ (checked), else the
#       e2e's first 256 KiB (.e2e-model/2; then fewer windows fit, and the JSON's notes say so).
set -uo pipefail
t0=$(date +%s.%N)
[ $# -ge 2 ] || { echo "usage: $0 GGUF OUT [fastrun options]" >&2; exit 2; }
gguf=$1; out=$2; shift 2
cd "$(dirname "$0")/../.."
mkdir -p "$out" build/quality-dev
root=$PWD

main() {
echo "device-run: $(date -u +%FT%TZ) $(nvidia-smi -L 2>/dev/null | head -n 1)"
py=${PYTHON:-python3}
work=$(mktemp -d "$root/build/quality-dev/run.XXXXXX")
# -- the model ----------------------------------------------------------------------------
if [ -d "$gguf" ]; then
  gguf=$(cd "$gguf" && pwd)
  parts=()
  for p in 1/a 2/b a b; do [ -f "$gguf/$p" ] && parts+=("$gguf/$p"); done
  [ ${#parts[@]} -eq 2 ] || { echo "device-run: $gguf holds no 1/a + 2/b (or a + b)"; return 1; }
  sum=$(ls "$gguf"/2/gguf.sha256 "$gguf"/gguf.sha256 2>/dev/null | head -n 1 || true)
  name=$( [ -n "$sum" ] && awk '{print $2}' "$sum" || echo model.gguf)
  cat "${parts[@]}" > "$work/$name"
  if [ -n "$sum" ]; then
    (cd "$work" && sha256sum -c --quiet "$sum") ||
      { echo "device-run: the joined GGUF's sha256 differs from $sum"; return 1; }
    echo "device-run: GGUF joined from ${parts[*]}, sha256 checked"
  fi
  gguf=$work/$name
fi
[ -f "$gguf" ] || { echo "device-run: no GGUF at $gguf"; return 1; }
# -- libraries and packages ---------------------------------------------------------------
bundle=""
for b in build/quality/bundle build/e2e-dev/bundle build/quality-dev/bundle; do
  [ -f "$b/lib/libe8codec.so" ] && { bundle=$b; break; }
done
for t in .e2e-model/1/bundle.tar.xz .e2e-model/2/bundle.tar.xz; do
  if [ -z "$bundle" ] && [ -f "$t" ]; then
    "$py" -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' \
      "$t" build/quality-dev && [ -f build/quality-dev/bundle/lib/libe8codec.so ] &&
      bundle=build/quality-dev/bundle
  fi
done
[ -n "$bundle" ] || { echo "device-run: no libe8codec.so (make BUILD=build/quality quality-bundle, carry build/quality/bundle)"; return 1; }
echo "device-run: codec library from $bundle"
mkdir -p "$work/lib" "$work/site"
# only the codec's own libraries: the bundle's libcrypto/libstdc++ must not shadow the machine's
for l in libzstd.so.1 libisal.so.2; do
  [ -f "$bundle/lib/$l" ] && ln -s "$root/$bundle/lib/$l" "$work/lib/$l"
done
if ! "$py" -c 'import gguf' 2>/dev/null; then
  w=$(ls build/quality/bundle/whl/gguf-*.whl "$bundle"/whl/gguf-*.whl 2>/dev/null | head -n 1)
  [ -n "$w" ] || { echo "device-run: the gguf package is missing and no bundle has its wheel"; return 1; }
  "$py" -m zipfile -e "$w" "$work/site" || return 1
  echo "device-run: gguf from $w"
fi
# e8kv.codec alone (the package's __init__ needs generated gRPC stubs, which are not here)
mkdir -p "$work/pkg/e8kv"
cp clients/python/e8kv/*.py "$work/pkg/e8kv/"
: > "$work/pkg/e8kv/__init__.py"
text=""
if [ -f build/quality/bundle/wikitext-2-raw-test.txt.gz ]; then
  gzip -dc build/quality/bundle/wikitext-2-raw-test.txt.gz > "$work/wikitext-2-raw-test.txt"
  text=$work/wikitext-2-raw-test.txt
elif python3 data/wikitext.py > "$work/wikitext-2-raw-test.txt"; then   # checked, from data/
  text=$work/wikitext-2-raw-test.txt
elif [ -f .e2e-model/2/wikitext-2-raw-test.txt ]; then
  text=$root/.e2e-model/2/wikitext-2-raw-test.txt
  echo "device-run: WARNING: only e2e's truncated WikiText-2 is here: fewer windows (see notes)"
fi
[ -n "$text" ] || { echo "device-run: no WikiText-2 (carry build/quality/bundle)"; return 1; }
export LD_LIBRARY_PATH="$work/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PYTHONPATH="$work/pkg:$work/site:$root"
export E8KV_LIB="$root/$bundle/lib/libe8codec.so" E8KV_GGUF="$gguf" E8KV_WIKITEXT="$text"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false \
  TQDM_DISABLE=1
"$py" -m bench.quality.fastrun --t0 "$t0" --deadline 470 --out "$out/quality.json" \
  --plot "$out/quality_rd.png" "$@"
rc=$?
echo "device-run: exit status $rc at $(date -u +%FT%TZ), $(( $(date +%s) - ${t0%.*} )) s"
rm -rf "$work"
return $rc
}

main "$@" 2>&1 | tee -a "$out/quality_log.txt"
exit "${PIPESTATUS[0]}"
