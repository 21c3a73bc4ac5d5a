#!/usr/bin/env bash
# tests/daemon/check_readme.sh E8KVD: README.md's "e8kvd configuration" table must be exactly
# what `e8kvd --help-markdown` prints (both come from daemon/kvd_config.c's table).
set -euo pipefail
bin=$1
want=$("$bin" --help-markdown)
have=$(sed -n '/<!-- e8kvd-config:begin -->/,/<!-- e8kvd-config:end -->/p' README.md | sed '1d;$d')
if [ "$want" != "$have" ]; then
  echo "README.md e8kvd configuration table is stale; regenerate with: $bin --help-markdown" >&2
  diff <(echo "$want") <(echo "$have") >&2 || true
  exit 1
fi
echo "README e8kvd configuration table is current"
