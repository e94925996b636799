#!/usr/bin/env bash
# Code-reward ablation (design §7.6; issue 23 item 6): binary vs strict vs soft test-difficulty rewards at the
# same budget, on code tasks whose tests have graded difficulty (`mimo data synth --kinds code_cases`: one to
# three ordered rules and a default, eight tests, two per rule). From a finished `mimo pipeline` run's SFT model,
# a short SFT on the tasks gives a start where all-tests pass is rare; then GRPO with each reward and seed, and
# held-out all-tests pass@1 plus the partial (per-test) pass rate of every model. Prints one JSON line per run
# and writes RUN_DIR/ablation/table.md (mean ± std over seeds).
#
#   tools/rl/ablation.sh RUN_DIR [SEEDS] [STEPS]      # defaults: "0 1 2", 15
#
# Needs a `mimo` built with the trainer (cargo build --release -p mimo-cli --features train) and python3.
set -euo pipefail
run="${1:?usage: ablation.sh RUN_DIR [SEEDS] [STEPS]}"
seeds="${2-0 1 2}"
steps="${3:-15}"
mimo="${MIMO_BIN:-target/release/mimo}"
out="$run/ablation"
sft_steps="${SFT_STEPS:-150}"
mkdir -p "$out"

"$mimo" data synth --kinds code_cases --train 3000 --heldout 200 --seed 7 --out "$out/data" --force > /dev/null
cat > "$out/sft.toml" <<TOML
mode = "sft"
out = "$out/sft"
seed = 0
force = true
[data]
path = "$out/data/train.jsonl"
tokenizer = "$run/data/tokenizer/tokenizer.json"
[model]
init = "$run/sft/model"
[mtp]
lambda = 0.1
lambda_late = 0.1
[optim]
lr = 0.0007
min_lr = 0.00003
warmup_steps = 5
decay_fraction = 0.6
[train]
batch_size = 8
seq_len = 256
steps = $sft_steps
progress = false
TOML
[ -f "$out/sft/model/config.json" ] || "$mimo" train sft --config "$out/sft.toml" > "$out/sft.json"

cat > "$out/rl.toml" <<TOML
steps = $steps
kinds = ["code_cases"]
instruction = ""
max_num_seqs = 64
rollout = { groups = 8, group_size = 8, max_tokens = 224, temperature = 0.8, reward_workers = 1 }
grpo = { lr = 2.5e-5, mini_batches = 2, micro_batch = 32 }
TOML

# held-out all-tests pass@1 and partial pass rate of a model, 200 problems × 4 samples (T 0.6, top-p 0.95)
evaluate() {
  "$mimo" eval --model "$1" --data "$out/data/heldout.jsonl" --k 4 --max-tokens 224 --seed 0 --instruction "" \
    --max-num-seqs 64 2> /dev/null | python3 -c '
import json, sys
r = json.load(sys.stdin)
print(json.dumps({"pass_at_1": round(r["pass_at_1"], 4), "test_pass_rate": round(r["test_pass_rate"], 4)}))'
}

rows="$out/runs.jsonl"
: > "$rows"
echo "{\"reward\": \"(SFT start)\", \"seed\": null, \"eval\": $(evaluate "$out/sft/model")}" | tee -a "$rows"
for seed in $seeds; do
  for reward in binary strict soft; do
    t0=$(date +%s)
    "$mimo" rl --config "$out/rl.toml" --model "$out/sft/model" --data "$out/data/train.jsonl" \
      --out "$out/$reward-s$seed" --code-reward "$reward" --set seed="$seed" --set force=true \
      > /dev/null 2> "$out/$reward-s$seed.log"
    t1=$(date +%s)
    echo "{\"reward\": \"$reward\", \"seed\": $seed, \"rl_wall_s\": $((t1 - t0)), \"eval\": $(evaluate "$out/$reward-s$seed/model")}" | tee -a "$rows"
  done
done

python3 - "$rows" "$out/table.md" "$steps" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
out = ["| reward | seeds | held-out pass@1 (all tests) | partial test pass rate | RL wall s |", "|---|---|---|---|---|"]
def fmt(xs):
    m = statistics.mean(xs)
    return f"{m:.3f} ± {statistics.stdev(xs):.3f}" if len(xs) > 1 else f"{m:.3f}"
for reward in ["(SFT start)", "binary", "strict", "soft"]:
    rs = [r for r in rows if r["reward"] == reward]
    if not rs:
        continue
    wall = fmt([r["rl_wall_s"] for r in rs]) if "rl_wall_s" in rs[0] else "–"
    out.append(f"| {reward} | {len(rs) if rs[0]['seed'] is not None else '–'} | {fmt([r['eval']['pass_at_1'] for r in rs])} "
               f"| {fmt([r['eval']['test_pass_rate'] for r in rs])} | {wall} |")
open(sys.argv[2], "w").write(f"GRPO, {sys.argv[3]} steps × 8 groups × 8 rollouts per reward and seed; 200 held-out tasks × 4 samples.\n\n" + "\n".join(out) + "\n")
print("\n".join(out))
PY
