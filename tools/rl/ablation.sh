#!/usr/bin/env bash
# Code-reward ablation (issue: binary vs strict vs soft, same budget and seed): GRPO on the synthetic code
# tasks from one starting model, then held-out pass@1 (all tests pass) and mean soft test pass rate.
#
#   tools/rl/ablation.sh RUN_DIR [STEPS] [GROUPS]   # RUN_DIR: a finished `mimo pipeline` run (uses sft/model, data/)
#
# Needs a `mimo` built with the trainer: cargo build --release -p mimo-cli --features train
set -euo pipefail
run="${1:?usage: ablation.sh RUN_DIR [STEPS] [GROUPS]}"
steps="${2:-15}"
groups="${3:-8}"
mimo="${MIMO_BIN:-target/release/mimo}"
out="$run/ablation"
mkdir -p "$out"
python3 - "$run/data/synth/heldout.jsonl" "$out/heldout-code.jsonl" <<'PY'
import json, sys
with open(sys.argv[2], "w") as f:
    for line in open(sys.argv[1]):
        d = json.loads(line)
        if d["kind"] == "code":
            f.write(json.dumps({"id": d["hash"], "prompt": d["prompt"], "tests": d["tests"]}) + "\n")
PY
cat > "$out/rl.toml" <<TOML
steps = $steps
kinds = ["code"]
max_num_seqs = 64
rollout = { groups = $groups, group_size = 8, max_tokens = 128, reward_workers = 2 }
grpo = { lr = 2e-5, mini_batches = 2, micro_batch = 32 }
TOML
echo "| reward | held-out pass@1 (all tests) | RL wall s |" > "$out/table.md"
echo "|---|---|---|" >> "$out/table.md"
base=$("$mimo" eval --model "$run/sft/model" --data "$out/heldout-code.jsonl" --k 4 --instruction "" --max-tokens 128 | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["pass_at_1"],3))')
echo "| (SFT start) | $base | – |" >> "$out/table.md"
for reward in binary strict soft; do
  t0=$(date +%s)
  "$mimo" rl --config "$out/rl.toml" --model "$run/sft/model" --data "$run/data/synth/train.jsonl" \
    --out "$out/$reward" --code-reward "$reward" > "$out/$reward.json"
  t1=$(date +%s)
  p=$("$mimo" eval --model "$out/$reward/model" --data "$out/heldout-code.jsonl" --k 4 --instruction "" --max-tokens 128 | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["pass_at_1"],3))')
  echo "| $reward | $p | $((t1 - t0)) |" >> "$out/table.md"
done
cat "$out/table.md"
