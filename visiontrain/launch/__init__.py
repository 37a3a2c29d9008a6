"""python -m visiontrain launch: train.py jobs through submitit (SLURM, or this machine)."""

import os

# submitit warns jobs with SIGUSR2 by default. The trainer checkpoints at a step boundary
# on SIGUSR1 (SLURM's customary warning, and `scancel --signal=USR1 JOBID`), so submitit
# is told to use it: for its sbatch --signal option and its handler, in the jobs too (they
# inherit this environment).
os.environ["SUBMITIT_PREEMPT_SIGNAL"] = "USR1"
