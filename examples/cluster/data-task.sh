#!/usr/bin/env bash
# One task of a `mimo data` stage on a cluster: `data-task.sh VERB ARGS…` runs `mimo data VERB ARGS…
# --task-index I --num-tasks N`, with I and N from the scheduler:
#   Slurm job array:       SLURM_ARRAY_TASK_ID (minus SLURM_ARRAY_TASK_MIN), SLURM_ARRAY_TASK_COUNT
#   Kubernetes Indexed Job: JOB_COMPLETION_INDEX, and NUM_TASKS set to the Job's `completions`
#   anything else:          TASK_INDEX, NUM_TASKS
# Every stage writes completion markers per shard, so a re-queued or relaunched task redoes only unfinished
# shards. An `--input` value with a glob (`'/shared/work/text/*.jsonl'`, quoted at submission) is expanded
# here, when the task runs, into one `--input` per file, so a stage can name the files the previous stage
# writes. MIMO_BIN picks the binary (default: `mimo` on PATH).
set -euo pipefail
mimo="${MIMO_BIN:-mimo}"
usage() { echo "data-task.sh: $*" >&2; exit 2; }
if [[ -n "${SLURM_ARRAY_TASK_ID:-}" ]]; then
  idx=$((SLURM_ARRAY_TASK_ID - ${SLURM_ARRAY_TASK_MIN:-0}))
  n="${SLURM_ARRAY_TASK_COUNT:-}"
  [[ -n $n ]] || usage "SLURM_ARRAY_TASK_COUNT is unset (Slurm 18.08 or newer sets it)"
elif [[ -n "${JOB_COMPLETION_INDEX:-}" ]]; then
  idx="$JOB_COMPLETION_INDEX"
  n="${NUM_TASKS:-}"
  [[ -n $n ]] || usage "set NUM_TASKS to the Indexed Job's completions"
else
  idx="${TASK_INDEX:-}"
  n="${NUM_TASKS:-}"
  [[ -n $idx && -n $n ]] || usage "no task index: run under a Slurm array or a k8s Indexed Job, or set TASK_INDEX and NUM_TASKS"
fi
args=()
while (($#)); do
  if [[ $1 == --input && $# -ge 2 && $2 == *[*?]* ]]; then
    mapfile -t files < <(compgen -G "$2" | LC_ALL=C sort)
    ((${#files[@]})) || usage "no file matches --input $2"
    for f in "${files[@]}"; do args+=(--input "$f"); done
    shift 2
  else
    args+=("$1")
    shift
  fi
done
exec "$mimo" data "${args[@]}" --task-index "$idx" --num-tasks "$n" --quiet
