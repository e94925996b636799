#!/usr/bin/env bash
# The whole test suite: installs what the tests need (Debian packages for the code sandbox, the Python
# reference environment), then runs every crate's tests. This is the README's test command and what CI runs.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

bash tools/setup-debian.sh
bash tools/setup-python.sh
venv="${MIMO_VENV:-$root/.venv}"
export MIMO_PYTHON="$venv/bin/python"
# The trainer (tch) links libtorch from the venv's torch==2.11.0 wheel.
export LIBTORCH_USE_PYTORCH=1
export PATH="$venv/bin:$PATH"
# Under CI a sandbox or reference test that cannot run must fail, not skip.
if [[ -n "${CI:-}" ]]; then export MIMO_REQUIRE_SANDBOX=1; fi

cargo test --workspace "$@"
