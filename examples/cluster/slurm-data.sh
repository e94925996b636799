#!/usr/bin/env bash
# The pretraining data pipeline on Slurm: one job array per stage, each stage starting when the previous one
# succeeded (afterok), N tasks per array. Submit from a login node with the data on a shared filesystem:
#   examples/cluster/slurm-data.sh /shared/raw-html /shared/work 64
# Stage outputs: WORK/text (extract), WORK/dedup (MinHash dedup: signatures → buckets → cluster → filter).
set -euo pipefail
raw="${1:?usage: slurm-data.sh RAW_DIR WORK_DIR [TASKS]}"
work="${2:?usage: slurm-data.sh RAW_DIR WORK_DIR [TASKS]}"
n="${3:-16}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
task="$here/data-task.sh"
mkdir -p "$work/logs"
submit() { # submit DEPENDENCY NAME VERB ARGS… → job id
  local dep="$1" name="$2"
  shift 2
  sbatch --parsable --job-name="mimo-$name" --array="0-$((n - 1))" --cpus-per-task=4 --mem=8G \
    --output="$work/logs/$name-%A_%a.log" ${dep:+--dependency=afterok:$dep} \
    --wrap="$(printf '%q ' "$task" "$@")"
}
shopt -s nullglob
inputs=()
for f in "$raw"/*; do inputs+=(--input "$f"); done
job=$(submit "" extract extract "${inputs[@]}" --output "$work/text")
texts=(--input "$work/text/*.jsonl")
for stage in signatures buckets cluster filter; do
  # data-task.sh expands the glob when the task runs, after the previous stage has written its shards.
  job=$(submit "$job" "dedup-$stage" dedup "${texts[@]}" --work-dir "$work/dedup-work" \
    --output "$work/dedup" --stage "$stage")
done
echo "submitted; last job $job (squeue -u \$USER)"
