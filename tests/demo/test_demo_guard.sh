#!/bin/sh
# tests/demo/test_demo_guard.sh PYTHON: `make demo` measures the E8-compressed path only.
#  1. `make demo` builds everything the demo loads (e8kvd, libe8codec.so, libe8kv.so), and
#     e8kvctl, which the README uses next: a dry run into an empty build directory links them.
#  2. Without libe8kv.so the demo exits 1 with a message saying it will not fall back to
#     raw KV transfers (it used to warn and send raw KV), before loading any model.
# Needs torch (the demo imports it): about 30 s on a loaded machine.
set -u
PY=${1:?usage: test_demo_guard.sh PYTHON}
fail=0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

make -n demo BUILD="$tmp/b" > "$tmp/dry" 2>&1
for f in "$tmp/b/lib/libe8kv.so" "$tmp/b/lib/libe8codec.so" "$tmp/b/bin/e8kvd" \
         "$tmp/b/bin/e8kvctl"; do
  if ! grep -q -- "-o $f\b" "$tmp/dry"; then
    echo "FAIL: make demo does not build $f"; fail=1
  fi
done

E8KV_CLIENT_LIB="$tmp/missing/libe8kv.so" E8KVD=/bin/true HF_HUB_OFFLINE=1 \
  PYTHONPATH=clients/python "$PY" demo/e8kv_demo.py --build "$tmp/b" > "$tmp/out" 2>&1
rc=$?
if [ "$rc" -ne 1 ]; then echo "FAIL: demo without libe8kv.so exited $rc, not 1"; fail=1; fi
for want in "E8KV_CLIENT_LIB=$tmp/missing/libe8kv.so does not exist" \
            "will not fall back to raw KV"; do
  if ! grep -qF "$want" "$tmp/out"; then echo "FAIL: demo output lacks: $want"; fail=1; fi
done
[ "$fail" -eq 0 ] || { echo "--- demo output:"; cat "$tmp/out"; }
if [ "$fail" -eq 0 ]; then echo "test_demo_guard: 2 passed, 0 failed"; else echo "test_demo_guard: failed"; fi
exit "$fail"
