#!/usr/bin/env bash
# Extraction benchmark on real HTML nobody here wrote: the Debian python3-doc pages.
# Prints JSON: mimo-data (one core) vs Python trafilatura (one process) on the same pages, plus MinHash words/s.
# Needs: apt package python3-doc (installed here if missing, as root), tools/setup-python.sh (trafilatura).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
dir="${1:-/usr/share/doc/python3/html}"
if [[ ! -d "$dir" ]] || [[ -z "$(find -L "$dir" -name '*.html' -print -quit)" ]]; then
  apt-get update -qq && apt-get install -y -qq python3-doc >/dev/null
fi
bash "$root/tools/setup-python.sh"
work="$(mktemp -d)"
cd "$root"
CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/work/target-data}" cargo run -q --release -p mimo-data --example bench -- \
  "$dir" --jsonl "$work/pages.jsonl" > "$work/rust.json"
"$root/.venv/bin/python" "$root/tools/data/bench_trafilatura.py" "$work/pages.jsonl" "$work/trafilatura.jsonl" > "$work/py.json"
python3 - "$work/rust.json" "$work/py.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); p = json.load(open(sys.argv[2]))
print(json.dumps({
    "pages": r["pages"], "html_mb": round(r["html_mb"], 1),
    "mimo_extract_docs_per_s_per_core": round(r["extract"]["docs_per_s_per_core"], 1),
    "trafilatura_docs_per_s_per_core": round(p["docs_per_s_per_core"], 1),
    "speedup": round(r["extract"]["docs_per_s_per_core"] / p["docs_per_s_per_core"], 1),
    "minhash_words_per_s_per_core": round(r["minhash"]["words_per_s_per_core"]),
    "mimo": r, "trafilatura": p,
}, indent=2))
PY
echo "outputs in $work" >&2
