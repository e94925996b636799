#!/usr/bin/env bash
# The whole test suite: installs what the tests need (Debian packages for the code sandbox, the Python
# reference environment), then runs every crate's tests. This is the README's test command and what CI runs.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

# The code sandbox needs util-linux (unshare, setpriv) and a system Python outside /root.
need=()
command -v unshare >/dev/null && command -v setpriv >/dev/null || need+=(util-linux)
[[ -x /usr/bin/python3 ]] || need+=(python3)
if ((${#need[@]})); then
  echo "installing Debian packages: ${need[*]}" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

bash tools/setup-python.sh
venv="${MIMO_VENV:-$root/.venv}"
export MIMO_PYTHON="$venv/bin/python"
# The trainer (tch) links libtorch from the venv's torch==2.11.0 wheel.
export LIBTORCH_USE_PYTORCH=1
export PATH="$venv/bin:$PATH"
# Under CI a sandbox or reference test that cannot run must fail, not skip.
if [[ -n "${CI:-}" ]]; then export MIMO_REQUIRE_SANDBOX=1; fi

cargo test --workspace "$@"
