#!/usr/bin/env bash
# Fine-tuning on a SLURM cluster: one task per GPU on every node, resumable. The starting
# weights come from finetune.init_from (a pretraining run directory or a weights file).
#
#   sbatch slurm/finetune.sh CONFIG [section.key=value ...]
#   sbatch slurm/finetune.sh configs/cifar10/transfer_finetune.yaml finetune.init_from=runs/r50
#
# The #SBATCH lines are defaults; sbatch options on the command line override them.
# Add --partition / --account for your cluster (none is assumed). Environment:
# RUN_DIR, VISIONTRAIN_ROOT, VISIONTRAIN_VENV (see slurm/common.sh).
# Before the time limit (and on `scancel --signal=USR1 JOBID`) every rank checkpoints at
# its next step boundary and the job requeues itself; the requeued job resumes exactly.
#SBATCH --job-name=vt-finetune
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --time=04:00:00
#SBATCH --signal=USR1@180
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out
# shellcheck source=slurm/common.sh
source "${VISIONTRAIN_ROOT:-${SLURM_SUBMIT_DIR:-$PWD}}/slurm/common.sh"
[[ $# -ge 1 ]] || { echo "usage: sbatch slurm/finetune.sh CONFIG [key=value ...]" >&2; exit 2; }
run_train "$@"
