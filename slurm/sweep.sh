#!/usr/bin/env bash
# A hyperparameter sweep on a SLURM cluster: every array task is one worker of the study, running its
# trials one after another, each trial a resumable run directory in STUDY/trials (docs/sweep.md).
#
#   python -m visiontrain sweep create SPEC.yaml --study STUDY     (checks the spec; nothing trains)
#   sbatch --array=0-3 slurm/sweep.sh STUDY [TRAIN COMMAND ...]
#
# A trial trains with TRAIN COMMAND (default: srun --export=ALL python train.py, one task per GPU of
# this array task's allocation, as slurm/pretrain.sh). The #SBATCH lines are defaults for one GPU per
# trial; sbatch options on the command line override them. Environment: VISIONTRAIN_ROOT,
# VISIONTRAIN_VENV (see slurm/common.sh). Before the time limit this shell gets USR1 (B:) and passes it to
# the worker, which passes it to the trial's leading process (srun, torchrun or train.py: any train command
# works); `scancel --signal=USR1 JOBID` signals the srun tasks directly. Either way the trial checkpoints,
# the worker stops with exit code 3 and this task requeues itself; the requeued task (same array index, so
# the same worker id) resumes its trial. A task killed outright (node failure,
# `scontrol requeue`) resumes the same way; a worker that never comes back loses its trials to the
# others once its lease (the spec's lease_seconds) expires.
#SBATCH --job-name=vt-sweep
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=1
#SBATCH --cpus-per-task=8
#SBATCH --time=04:00:00
#SBATCH --signal=B:USR1@180
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%A_%a.out
# shellcheck source=slurm/common.sh
source "${VISIONTRAIN_ROOT:-${SLURM_SUBMIT_DIR:-$PWD}}/slurm/common.sh"
[[ $# -ge 1 ]] || { echo "usage: sbatch --array=0-N slurm/sweep.sh STUDY [TRAIN COMMAND ...]" >&2; exit 2; }
study="$1"
shift
train_command="${*:-srun --export=ALL python train.py}"
echo "$(date +%T) sweep worker ${SLURM_ARRAY_JOB_ID:-$SLURM_JOB_ID}_${SLURM_ARRAY_TASK_ID:-0}" \
     "(restart ${SLURM_RESTART_COUNT:-0}) on $(hostname), study $study"
# In the background, so that this shell can pass signals on at once (a trap waits for a foreground command).
worker=""
trap 'echo "$(date +%T) USR1 received: passed to the sweep worker"; [[ -z "$worker" ]] || kill -USR1 "$worker" || true' USR1
trap '[[ -z "$worker" ]] || kill -TERM "$worker" || true' TERM
python -m visiontrain sweep worker --study "$study" --train-command "$train_command" &
worker=$!
while :; do
    rc=0
    wait "$worker" || rc=$?
    if ((rc > 128)) && kill -0 "$worker" 2>/dev/null; then
        continue  # a signal interrupted wait; the worker runs on
    fi
    if ((rc > 128)); then  # interrupted just as the worker ended: its own status is still to be collected
        again=0
        wait "$worker" || again=$?
        ((again != 127)) && rc=$again
    fi
    break
done
if [[ $rc -eq 3 ]]; then
    echo "$(date +%T) the trial stopped with a checkpoint: requeueing job $SLURM_JOB_ID; it resumes the trial"
    scontrol requeue "$SLURM_JOB_ID"
    exit 0
fi
echo "$(date +%T) sweep worker exit code $rc"
exit "$rc"
