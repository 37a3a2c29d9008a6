"""Train an image classifier: `python train.py --help` (the same as `visiontrain train`).

    python train.py [-c CONFIG.yaml] [section.key=value ...]
    torchrun --nproc_per_node N train.py -c CONFIG.yaml ...
    accelerate launch train.py -c CONFIG.yaml ...
    srun python train.py -c CONFIG.yaml ...     (one SLURM task per GPU; see slurm/)

A file, not a module, because launchers take a script path. The work: visiontrain/train/.
"""

import sys

from visiontrain.infra.errors import run_cli
from visiontrain.train.cli import main

if __name__ == "__main__":
    sys.exit(run_cli(main))
