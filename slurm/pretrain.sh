#!/usr/bin/env bash
# Pretraining on a SLURM cluster: one task per GPU on every node, resumable.
#
#   sbatch slurm/pretrain.sh CONFIG [section.key=value ...]
#   sbatch --nodes 4 --time 48:00:00 slurm/pretrain.sh configs/imagenet/resnet50.yaml run.dir=runs/r50
#
# The #SBATCH lines are defaults; sbatch options on the command line override them.
# Add --partition / --account for your cluster (none is assumed). Environment:
# RUN_DIR, VISIONTRAIN_ROOT, VISIONTRAIN_VENV (see slurm/common.sh).
# Before the time limit (and on `scancel --signal=USR1 JOBID`) every rank checkpoints at
# its next step boundary and the job requeues itself; the requeued job resumes exactly.
#SBATCH --job-name=vt-pretrain
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --signal=USR1@180
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out
# shellcheck source=slurm/common.sh
source "${VISIONTRAIN_ROOT:-${SLURM_SUBMIT_DIR:-$PWD}}/slurm/common.sh"
[[ $# -ge 1 ]] || { echo "usage: sbatch slurm/pretrain.sh CONFIG [key=value ...]" >&2; exit 2; }
run_train "$@"
