"""The robustness check of adversarial training: every evaluation, PGD accuracy on training images.

Catastrophic overfitting (Wong et al. 2020): with FGSM training, robust accuracy can fall to about 0 within
an epoch while clean accuracy keeps rising. The check attacks about `adversarial.check_images` images of the
training split (drawn with run.seed, through the evaluation preprocessing) with PGD-`check_steps` at the
training epsilon, so the trainer can keep the best-robust checkpoint (train.monitor=robust_top1) and stop
when robust accuracy collapses.
"""

from __future__ import annotations

import copy

import torch

from visiontrain.config import Config
from visiontrain.data.base import DataBundle
from visiontrain.infra.errors import UsageError
from visiontrain.parallel.batch_plan import BatchPlan
from visiontrain.parallel.runtime import Runtime
from visiontrain.robust.attacks import PixelSpace
from visiontrain.robust.evaluation import AttackSpec, robust_accuracy


class RobustCheck:
    def __init__(self, cfg: Config, runtime: Runtime, plan: BatchPlan, train_samples: int):
        from visiontrain.data import build_data

        a = cfg.adversarial
        check_cfg = copy.deepcopy(cfg)
        # A per-class draw of about check_images out of the whole training split (train_samples is the
        # data.train_fraction part of it).
        whole = train_samples / cfg.data.train_fraction
        check_cfg.data.train_fraction = min(1.0, a.check_images / max(whole, 1.0))
        check_cfg.data.subset_seed = cfg.run.seed
        self.data: DataBundle = build_data(check_cfg, runtime, BatchPlan.of_micro_batch(plan.micro_batch),
                                           train=False, eval_split="train")
        if self.data.val.num_samples == 0:
            raise UsageError(f"config key 'adversarial.check_images' = {a.check_images}: no training images to "
                             "check robustness on")
        self.spec = AttackSpec("pgd", a.eps, a.check_steps, seed=cfg.run.seed)
        self.space = PixelSpace(cfg.data.mean, cfg.data.std, runtime.device)
        self.runtime, self.collapse_drop, self.stop_on_collapse = runtime, a.collapse_drop, a.stop_on_collapse
        self.fp16 = cfg.train.precision == "fp16"

    def run(self, model: torch.nn.Module, autocast) -> dict:
        """{clean_top1, robust_top1, samples, seconds} of the check images, all ranks together."""
        r = self.runtime
        return robust_accuracy(model, self.data.val, self.space, self.spec, r.device, r.world_size, r.rank,
                               autocast, self.fp16)

    def collapsed(self, robust_top1: float, best: float) -> bool:
        return best >= 0 and robust_top1 < best - self.collapse_drop
