#!/usr/bin/env bash
# Debian packages the build and the tests need, installed only when missing (the main job and the test suite
# both call this): util-linux (unshare, setpriv) and a system Python outside /root for the code sandbox;
# libgloo-dev, the gloo headers mimo-dist's c10d shim compiles against (the gloo code is inside libtorch).
set -euo pipefail
need=()
command -v unshare >/dev/null && command -v setpriv >/dev/null || need+=(util-linux)
[[ -x /usr/bin/python3 ]] || need+=(python3)
[[ -f /usr/include/gloo/context.h ]] || need+=(libgloo-dev)
if ((${#need[@]})); then
  echo "installing Debian packages: ${need[*]}" >&2
  sudo=()
  ((EUID == 0)) || sudo=(sudo)
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${need[@]}" >/dev/null
fi
