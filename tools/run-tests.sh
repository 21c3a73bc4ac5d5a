#!/usr/bin/env bash
# tools/run-tests.sh BUILD TEST_BIN... -- TEST_CMD...
#
# Runs every C test program and every test command (a shell line), then prints
# one closing line "N passed, N failed" counting test programs and commands.
# A command exiting 77 counts as failed too: nothing is skipped silently.
set -u
build=$1; shift
bins=(); cmds=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do bins+=("$1"); shift; done
[ $# -gt 0 ] && shift
while [ $# -gt 0 ]; do cmds+=("$1"); shift; done
# The tests' daemons listen on unix sockets under $TMPDIR (kvt, advlib, pytest's tmp_path):
# a socket path holds 107 bytes, and pytest's own tmp_path adds ~65 to TMPDIR. A long TMPDIR
# (a CI workspace) made every such test fail to start its daemon: use /tmp then, and say so.
tmpdir=${TMPDIR:-}
if [ "${#tmpdir}" -gt 24 ]; then
  echo "run-tests.sh: TMPDIR=$TMPDIR is too long for unix socket paths; using /tmp"
  export TMPDIR=/tmp
fi
pass=0; fail=0; failed=()
run() {
  local name=$1; shift
  echo "=== $name"
  local t0=$SECONDS
  if "$@"; then pass=$((pass+1)); echo "=== $name: ok ($((SECONDS-t0)) s)"
  else fail=$((fail+1)); failed+=("$name"); echo "=== $name: FAILED ($((SECONDS-t0)) s)"; fi
}
for b in "${bins[@]}"; do run "$b" "$b"; done
for c in "${cmds[@]}"; do run "$c" bash -c "$c"; done
echo
for f in "${failed[@]}"; do echo "failed: $f"; done
echo "tests: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
