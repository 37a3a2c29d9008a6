#!/usr/bin/env bash
# Throughput benchmarks on a cluster node: python -m visiontrain bench MODE [options].
#
#   sbatch slurm/benchmark.sh overhead train.precision=bf16
#   sbatch slurm/benchmark.sh loader --workers 16
#
# The benchmarks start their own processes where they compare several (memory --nproc),
# so this job is one task on one node with its GPUs. Results are printed to the job's
# output (slurm-vt-benchmark-JOBID.out). Environment: VISIONTRAIN_ROOT, VISIONTRAIN_VENV.
#SBATCH --job-name=vt-benchmark
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --time=01:00:00
#SBATCH --output=slurm-%x-%j.out
# shellcheck source=slurm/common.sh
source "${VISIONTRAIN_ROOT:-${SLURM_SUBMIT_DIR:-$PWD}}/slurm/common.sh"
[[ $# -ge 1 ]] || { echo "usage: sbatch slurm/benchmark.sh MODE [options]  (python -m visiontrain bench --help)" >&2; exit 2; }
echo "$(date +%T) job $SLURM_JOB_ID: python -m visiontrain bench $* on $(hostname)"
srun --ntasks=1 python -m visiontrain bench "$@"
