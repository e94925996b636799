#!/usr/bin/env bash
# GRPO sweep from a finished `mimo pipeline` run's SFT model: one `mimo rl` per override set, each evaluated
# like the pipeline (the same 400 held-out math problems × 8, T 0.6, top-p 0.95, seed 0) and compared with the
# run's own SFT samples, paired per problem (issue 23 item 2). Prints one JSON line per setting.
#
#   tools/rl/sweep.sh RUN_DIR NAME 'key=value key=value' [NAME 'overrides' ...]
#   e.g. tools/rl/sweep.sh runs/t0-s0 g16 'rollout.groups=16' g16-lr5e-5 'rollout.groups=16 grpo.lr=5e-5'
#
# Needs a `mimo` built with the trainer (cargo build --release -p mimo-cli --features train) and python3.
set -euo pipefail
run="${1:?usage: sweep.sh RUN_DIR NAME OVERRIDES [NAME OVERRIDES ...]}"
shift
mimo="${MIMO_BIN:-target/release/mimo}"
out="$run/sweeps"
mkdir -p "$out"
heldout="$out/heldout-math.jsonl"
problems=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["eval_problems"])' "$run/report.json")
python3 - "$run/data/synth/heldout.jsonl" "$heldout" "$problems" <<'PY'
import json, sys
n = 0
with open(sys.argv[2], "w") as f:
    for line in open(sys.argv[1]):
        d = json.loads(line)
        if d["kind"] in ("arithmetic", "word") and n < int(sys.argv[3]):
            f.write(line); n += 1
PY
while [ $# -ge 2 ]; do
  name="$1"; sets="$2"; shift 2
  args=()
  for s in $sets; do args+=(--set "$s"); done
  t0=$(date +%s)
  "$mimo" rl --config "$run/rl.toml" "${args[@]}" --out "$out/$name" > /dev/null 2> "$out/$name.log"
  t1=$(date +%s)
  "$mimo" eval --model "$out/$name/model" --data "$heldout" --k 8 --max-tokens 224 --seed 0 --instruction "" \
    --max-num-seqs 64 > "$out/$name-eval.json" 2> /dev/null
  python3 - "$run/eval-sft.jsonl" "$out/$name-eval.json" "$out/$name/metrics.jsonl" "$name" "$sets" $((t1 - t0)) <<'PY'
import collections, json, math, sys
sft = collections.defaultdict(list)
for line in open(sys.argv[1]):
    d = json.loads(line); sft[d["problem"]].append(d["correct"])
r = json.load(open(sys.argv[2]))
diffs = [p["correct"] / p["n"] - sum(sft[p["id"]]) / len(sft[p["id"]]) for p in r["per_problem"]]
m = sum(diffs) / len(diffs)
se = math.sqrt(sum((x - m) ** 2 for x in diffs) / (len(diffs) - 1) / len(diffs))
steps = [json.loads(l) for l in open(sys.argv[3])]
reward = lambda xs: round(sum(x["rollout"]["mean_reward"] for x in xs) / len(xs), 3)
print(json.dumps({"name": sys.argv[4], "overrides": sys.argv[5], "pass_at_1": round(r["pass_at_1"], 4),
                  "rl_minus_sft_pts": round(100 * m, 2), "paired_se_pts": round(100 * se, 2),
                  "reward_first5": reward(steps[:5]), "reward_last5": reward(steps[-5:]),
                  "rl_wall_s": int(sys.argv[6])}), flush=True)
PY
done
