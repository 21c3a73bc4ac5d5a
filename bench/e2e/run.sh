#!/usr/bin/env bash
# bench/e2e/run.sh BASE OUT_DIR [e2e_bench.py options]
#
# Runs bench/e2e/e2e_bench.py (or, with --fetch-bench, bench/e2e/fetch_bench.py) with e8kvd and the codec libraries of BASE, which is either a
# build directory (BASE/bin/e8kvd, BASE/lib/libe8codec*.so; the e8kv package in-tree) or a
# bundle made by `make e2e-bundle` (the same, plus BASE/lib holding the shared libraries the
# machine lacks, BASE/py the generated gRPC stubs and BASE/whl wheels to install first).
set -euo pipefail
base=$(cd "$1" && pwd); out=$2; shift 2
here=$(cd "$(dirname "$0")/../.." && pwd)
py=${PYTHON:-}
if [ -z "$py" ]; then
  if [ -x "${E8KV_VENV:-$HOME/.cache/e8kv-venv}/bin/python" ] && [ ! -d "$base/py" ]; then
    py=${E8KV_VENV:-$HOME/.cache/e8kv-venv}/bin/python
  else
    py=python3
  fi
fi
# e8kvd gets every library of BASE/lib (E2E_KVD_LIBS); the Python process only those the
# codec libraries and libe8kv.so (the C fetch, fingerprints) need beyond the machine's own:
# gRPC core, absl, upb, re2, c-ares, protobuf-c, zstd, isa-l (never the bundle's older
# libstdc++/libssl/libffi, which would shadow the machine's own under torch).
export E2E_KVD_LIBS="$base/lib"
export E8KV_LIB="$base/lib/libe8codec.so"
if [ -f "$base/lib/libe8codec_cuda.so" ]; then export E8KV_CUDA_LIB="$base/lib/libe8codec_cuda.so"; fi
tmp=$(mktemp -d /tmp/e8kv-e2e.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/lib"
for l in "$base"/lib/*.so*; do
  [ -f "$l" ] || continue
  case "${l##*/}" in
    libabsl_*|libgrpc.so*|libgpr.so*|libupb.so*|libaddress_sorting.so*|libre2.so*|\
    libcares.so*|libprotobuf-c.so*|libzstd.so*|libisal.so*) ln -s "$l" "$tmp/lib/${l##*/}" ;;
  esac
done
if [ -f "$base/lib/libe8kv.so" ]; then export E8KV_CLIENT_LIB="$base/lib/libe8kv.so"; fi
export LD_LIBRARY_PATH="$tmp/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export HF_HUB_DISABLE_PROGRESS_BARS=1 TQDM_DISABLE=1   # no progress bars in a log read by its tail
if [ -d "$base/py" ]; then
  # bundle: the package with its stubs inside (no grpcio-tools needed), wheels first
  mkdir -p "$tmp/pkg/e8kv"
  cp "$here"/clients/python/e8kv/*.py "$tmp/pkg/e8kv/"
  cp -r "$base/py/e8kv/v1" "$tmp/pkg/e8kv/v1"
  pp="$tmp/pkg"
  if [ -d "$base/whl" ]; then
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$tmp/site" "$base"/whl/*.whl
    pp="$tmp/site:$pp"
  fi
  export PYTHONPATH="$pp:$here${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$here/clients/python:$here${PYTHONPATH:+:$PYTHONPATH}"
  export E8KV_PY_GEN="$base/python/gen" E8KV_BUILD="$base"
fi
script=e2e_bench.py
for x in "$@"; do [ "$x" = --fetch-bench ] && script=fetch_bench.py; done
"$py" "$here/bench/e2e/$script" --e8kvd "$base/bin/e8kvd" --out "$out" "$@"
