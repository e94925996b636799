#!/usr/bin/env bash
# Creates the project's Python environment for reference tests (default: .venv at the repository root) and
# installs tools/requirements.txt into it. Idempotent: a venv whose requirements are unchanged is reused.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${MIMO_VENV:-$root/.venv}"
req="$root/tools/requirements.txt"
stamp="$venv/.requirements.sha256"
want="$(sha256sum "$req" | cut -d' ' -f1)"
if [[ -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  echo "python env $venv is up to date" >&2
  exit 0
fi
python3 -m venv "$venv"
"$venv/bin/pip" install -q --upgrade pip
"$venv/bin/pip" install -q -r "$req"
echo "$want" > "$stamp"
echo "python env $venv ready" >&2
