#!/usr/bin/env bash
# Pretrain, then fine-tune from its weights: two jobs, the second held until the first
# succeeds (afterok; if pretraining fails, SLURM cancels the fine-tuning job).
#
#   slurm/pipeline.sh PRETRAIN_CONFIG FINETUNE_CONFIG          (from a login node)
#   sbatch slurm/pipeline.sh PRETRAIN_CONFIG FINETUNE_CONFIG   (the same, as a tiny job)
#
# Environment (defaults):
#   PIPELINE_DIR         runs/pipeline-DATE: holds pretrain/ and finetune/ run directories
#   PRETRAIN_OVERRIDES   key=value settings for pretraining, space-separated
#   FINETUNE_OVERRIDES   key=value settings for fine-tuning (finetune.init_from is set here)
#   SBATCH_ARGS          sbatch options for both jobs, e.g. "--nodes 4 --partition gpu"
# Prints both job ids and run directories.
#SBATCH --job-name=vt-pipeline
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=1
#SBATCH --time=00:10:00
#SBATCH --output=slurm-%x-%j.out
set -euo pipefail
cd "${VISIONTRAIN_ROOT:-${SLURM_SUBMIT_DIR:-$PWD}}"
if [[ $# -ne 2 ]]; then
    echo "usage: slurm/pipeline.sh PRETRAIN_CONFIG FINETUNE_CONFIG" >&2
    exit 2
fi
for config in "$1" "$2"; do
    [[ -f "$config" ]] || { echo "error: config $config does not exist (paths are relative to $PWD)" >&2; exit 2; }
done
dir="${PIPELINE_DIR:-runs/pipeline-$(date +%Y%m%d-%H%M%S)}"
read -r -a sbatch_args <<< "${SBATCH_ARGS:-}"
read -r -a pretrain_overrides <<< "${PRETRAIN_OVERRIDES:-}"
read -r -a finetune_overrides <<< "${FINETUNE_OVERRIDES:-}"

pretrain_job="$(RUN_DIR="$dir/pretrain" sbatch --parsable ${sbatch_args[@]+"${sbatch_args[@]}"} slurm/pretrain.sh "$1" \
    ${pretrain_overrides[@]+"${pretrain_overrides[@]}"})"
pretrain_job="${pretrain_job%%;*}"
finetune_job="$(RUN_DIR="$dir/finetune" sbatch --parsable --dependency="afterok:$pretrain_job" \
    --kill-on-invalid-dep=yes ${sbatch_args[@]+"${sbatch_args[@]}"} slurm/finetune.sh "$2" finetune.init_from="$dir/pretrain" \
    ${finetune_overrides[@]+"${finetune_overrides[@]}"})"
finetune_job="${finetune_job%%;*}"
echo "pretrain: job $pretrain_job, run dir $dir/pretrain"
echo "finetune: job $finetune_job (starts when job $pretrain_job succeeds), run dir $dir/finetune"
