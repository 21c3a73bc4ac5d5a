#!/bin/sh
# e8c_ab_build.sh TREE OUT.so: libe8codec of the source tree TREE (e.g. an
# older commit's, from `git archive COMMIT codec | tar -x -C TREE`) as one
# -Bsymbolic shared object for e8c_ab, with the library's own flags
# (codec/codec.mk: -O3, no FMA contraction, AVX2 files with -mavx2 -mf16c).
set -e
tree=$1; out=$2
[ -d "$tree/codec" ] && [ -n "$out" ] || { echo "usage: $0 TREE OUT.so" >&2; exit 2; }
cf="-std=c11 -O3 -g -fPIC -D_GNU_SOURCE -I$tree -ffp-contract=off -fno-fast-math $(pkg-config --cflags libzstd libisal libcrypto)"
objs=""
tmp=$(mktemp -d)
for f in "$tree"/codec/*.c; do
    b=$(basename "$f" .c); x=""
    case $b in e8c_fast_avx2) x="-mavx2 -mf16c -falign-loops=32";; e8c_rans32_avx2) x="-mavx2";; esac
    cc $cf $x -c "$f" -o "$tmp/$b.o"
    objs="$objs $tmp/$b.o"
done
cc -shared -Wl,-Bsymbolic -o "$out" $objs $(pkg-config --libs libzstd libisal libcrypto) -lm -pthread
rm -rf "$tmp"
