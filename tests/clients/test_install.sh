#!/usr/bin/env bash
# tests/clients/test_install.sh BUILD [SAN_FLAGS]: `make install-libe8kv` into a temporary
# PREFIX, then build a program outside the tree with only
# `pkg-config --cflags --libs e8kv` and run it (it opens a client, calls a
# daemon that is not there, and must get UNAVAILABLE with the address named).
# SAN_FLAGS: the sanitizer flags BUILD was compiled with (make asan), used to link too.
set -euo pipefail
build=$1
san=${2:-}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
make -s BUILD="$build" SAN="$san" PREFIX="$tmp/usr" install-libe8kv >/dev/null
cat > "$tmp/prog.c" <<'C'
#include <stdio.h>
#include <string.h>
#include <e8kv.h>
int main(void) {
  e8kv_options o;
  e8kv_options_init(&o);
  o.address = "unix:/nonexistent/e8kvd.sock";
  e8kv_client *c = NULL;
  e8kv_error err;
  if (e8kv_client_open(&o, &c, &err)) { printf("open: %s\n", err.message); return 1; }
  E8kv__V1__GetStatsResponse *r = NULL;
  e8kv_status s = e8kv_get_stats(c, &r, &err);
  printf("%s %s\n", e8kv_status_name(s), e8c_version());
  e8kv_client_close(c);
  return s == E8KV_UNAVAILABLE && strstr(err.message, o.address) ? 0 : 1;
}
C
export PKG_CONFIG_PATH="$tmp/usr/lib/pkgconfig"
pkg-config --exists e8kv
cc -std=c11 $san -o "$tmp/prog" "$tmp/prog.c" $(pkg-config --cflags --libs e8kv)
out=$(LD_LIBRARY_PATH="$tmp/usr/lib" "$tmp/prog")   # linked against libe8kv.so
echo "installed libe8kv works from pkg-config: $out"
# a shared link names libe8kv and protobuf-c only (a new user's trial: ~80 gRPC/abseil libraries
# were listed, all of them already inside libe8kv.so)
shared=$(pkg-config --libs e8kv)
echo "pkg-config --libs e8kv: $shared"
if echo "$shared" | grep -Eq -- '-l(grpc|absl|gpr|e8codec|zstd|isal)'; then
  echo "FAIL: pkg-config --libs e8kv lists libraries private to libe8kv.so" >&2; exit 1
fi
# the static archives too (pkg-config --static: Libs.private and Requires.private; libe8kv.a and
# libe8codec.a named)
libs=$(pkg-config --static --libs e8kv | sed -e "s|-le8kv|$tmp/usr/lib/libe8kv.a|" -e "s|-le8codec|$tmp/usr/lib/libe8codec.a|")
cc -std=c11 $san -o "$tmp/prog-static" "$tmp/prog.c" $(pkg-config --cflags e8kv) $libs
"$tmp/prog-static" >/dev/null
# C++ engines include the same header (extern "C" throughout)
cp "$tmp/prog.c" "$tmp/prog.cc"
c++ -std=c++17 $san -o "$tmp/prog-cxx" "$tmp/prog.cc" $(pkg-config --cflags --libs e8kv)
LD_LIBRARY_PATH="$tmp/usr/lib" "$tmp/prog-cxx" >/dev/null
! ldd "$tmp/prog-static" | grep -q libe8kv
echo "1 passed, 0 failed"
