#!/usr/bin/env bash
# The README's main job: the whole MiMo recipe at tiny scale on embedded defaults (configs/tiny.toml), no
# downloads of weights or data. Installs what the trainer needs (Debian packages, the venv with the torch==2.11.0 wheel whose
# libtorch tch links), builds `mimo` with the trainer, and runs `mimo pipeline "$@"` (e.g. --out DIR, --seed N,
# --config more.toml). Results: DIR/report.md, DIR/report.json, DIR/plots/*.png, DIR/rl/model.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash tools/setup-debian.sh
bash tools/setup-python.sh
venv="${MIMO_VENV:-$root/.venv}"
export LIBTORCH_USE_PYTORCH=1
export PATH="$venv/bin:$PATH"
exec cargo run --release -p mimo-cli --features train -- pipeline "$@"
