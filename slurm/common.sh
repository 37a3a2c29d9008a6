# shellcheck shell=bash
# Sourced by the slurm/*.sh batch scripts. One SLURM task per GPU runs train.py (srun
# starts them; visiontrain/parallel/launchers.py turns SLURM's variables into the torch rendezvous on
# the first node of `scontrol show hostnames`), so SLURM's signals reach every rank.
#
# Environment (defaults):
#   VISIONTRAIN_ROOT  the project checkout   ($SLURM_SUBMIT_DIR: run sbatch from the checkout)
#   VISIONTRAIN_VENV  virtualenv to activate ($VISIONTRAIN_ROOT/.venv; "none" to skip)
#   RUN_DIR           run directory          (the config's run.dir)
# The job's output is appended to RUN_DIR/slurm-JOBID.log.
set -euo pipefail

ROOT="${VISIONTRAIN_ROOT:-${SLURM_SUBMIT_DIR:-$PWD}}"
cd "$ROOT"
VENV="${VISIONTRAIN_VENV:-$ROOT/.venv}"
if [[ "$VENV" != none && -f "$VENV/bin/activate" ]]; then
    # shellcheck disable=SC1091
    source "$VENV/bin/activate"
fi
# `scancel --signal=USR1 JOBID` also signals this shell: keep it alive; the training
# tasks checkpoint at their next step boundary, exit with code 3, and we requeue.
trap 'echo "$(date +%T) USR1 received: the training tasks checkpoint and stop"' USR1

# resolve_run_dir CONFIG [key=value ...]: validates the config (exit 2 on a bad one)
# and prints its run directory, before any compute node does work.
resolve_run_dir() {
    python - "$@" <<'PY'
import sys
from visiontrain.config import load_config
from visiontrain.infra.errors import run_cli

def main(argv):
    print(load_config(argv[0], argv[1:]).run.dir)

sys.exit(run_cli(main))
PY
}

# run_train CONFIG [key=value ...]: train (or resume) with one task per GPU; requeue the
# job when the tasks stopped on a signal (exit code 3).
run_train() {
    local config="$1"
    shift
    if [[ ! -f "$config" ]]; then
        echo "error: config $config does not exist (paths are relative to $ROOT)" >&2
        exit 2
    fi
    local overrides=("$@")
    if [[ -n "${RUN_DIR:-}" ]]; then
        overrides+=("run.dir=$RUN_DIR")
    fi
    local run_dir
    run_dir="$(resolve_run_dir "$config" ${overrides[@]+"${overrides[@]}"})"
    mkdir -p "$run_dir"
    exec > >(tee -a "$run_dir/slurm-${SLURM_JOB_ID}.log") 2>&1
    local tasks_per_node="${SLURM_NTASKS_PER_NODE:-1}"
    if [[ -n "${SLURM_GPUS_ON_NODE:-}" && "$SLURM_GPUS_ON_NODE" != "$tasks_per_node" ]]; then
        echo "error: $SLURM_GPUS_ON_NODE GPUs per node but --ntasks-per-node=$tasks_per_node: use one task per GPU" >&2
        exit 2
    fi
    echo "$(date +%T) job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}): ${SLURM_NNODES:-1} node(s) x" \
         "$tasks_per_node task(s), head node $(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)," \
         "run dir $run_dir"
    local rc=0
    # The resolved directory last: it overrides any run.dir= among the arguments, as RUN_DIR did above,
    # so the training writes where this job's log is.
    srun --export=ALL python train.py -c "$config" "$@" run.dir="$run_dir" || rc=$?
    if [[ $rc -eq 3 ]]; then
        echo "$(date +%T) stopped with a checkpoint: requeueing job $SLURM_JOB_ID; it resumes from $run_dir"
        scontrol requeue "$SLURM_JOB_ID"
        exit 0
    fi
    echo "$(date +%T) train.py exit code $rc"
    exit "$rc"
}
