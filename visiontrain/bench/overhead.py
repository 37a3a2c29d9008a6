"""Trainer overhead: train.py's training loop against a bare PyTorch loop.

Both run the same model, batches (random tensors already on the device), optimizer,
schedule, precision and memory format, in one process, alternating round by round and
swapping which goes first each round, so that machine noise and drift hit both alike.
The trainer side is `Trainer.train_one_epoch` exactly as train.py runs it, built by
`run.build_run` (device-side metrics, non-finite tracking, periodic log reads,
metrics.jsonl and TensorBoard writes). Reported: median seconds per step of
each, and the median over rounds of the paired throughput ratio trainer / bare
(1.0 = no overhead; pairing cancels the slow drift of a shared machine).

Then each piece of the trainer's per-step bookkeeping is timed alone, many calls between
two device syncs: on a GPU that is the host time it costs the step when the step is too
short to hide it (kernel launches), on a CPU its whole cost. The optimizer update is
timed fused and per-tensor (foreach).
"""

from __future__ import annotations

import statistics
import tempfile
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from visiontrain.bench.timing import timed
from visiontrain.config import load_config
from visiontrain.models import build_model, spec_of
from visiontrain.parallel.runtime import Runtime
from visiontrain.train.optim import build_optimizer, build_scheduler
from visiontrain.train.run import build_run, seed_everything
from visiontrain.train.step import reference_loop

DEFAULTS = ["data.loader=random", "data.image_size=32", "model.name=resnet9", "model.width=32",
            "train.batch_size=128", "train.precision=fp32", "train.epochs=1000", "schedule.warmup_epochs=0",
            "log.progress_bar=false"]


@dataclass
class OverheadResult:
    trainer_s_per_step: float
    bare_s_per_step: float
    trainer_spread: tuple[float, float]
    bare_spread: tuple[float, float]
    ratio: float  # median of per-round bare/trainer time ratios
    ratio_spread: tuple[float, float]
    parts_s_per_step: dict[str, float]  # each bookkeeping piece alone, seconds per step
    batch: int
    steps: int
    rounds: int


def bookkeeping_parts(trainer, batch: tuple[torch.Tensor, torch.Tensor], repeats: int) -> dict[str, float]:
    """Seconds per call of each per-step piece of the trainer besides forward and backward, timed alone.
    It changes the trainer's state (optimizer, schedule, sums): call it after the timed rounds."""
    images, labels = batch
    with torch.no_grad(), trainer.backend.autocast():
        logits = trainer.model(images).float()
    losses = F.cross_entropy(logits, labels, reduction="none")
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.zeros_like(p)
    groups = [{k: v for k, v in g.items() if k != "params"} | {"params": g["params"]}
              for g in trainer.optimizer.param_groups]
    optim = trainer.cfg.optim
    foreach = (torch.optim.SGD(groups, lr=optim.lr, momentum=optim.momentum, foreach=True) if optim.name == "sgd"
               else torch.optim.AdamW(groups, lr=optim.lr, foreach=True))
    fused = (torch.optim.SGD(groups, lr=optim.lr, momentum=optim.momentum, fused=True) if optim.name == "sgd"
             else torch.optim.AdamW(groups, lr=optim.lr, fused=True))
    parts = {
        "metric sums (RunningStats.update)": lambda: trainer.window.update(losses, logits, labels),
        "loss record (non-finite check)": lambda: trainer._unchecked_losses[0].copy_(losses.mean()),
        "schedule (LambdaLR.step)": trainer.scheduler.step,
        "optimizer, fused": fused.step,
        "optimizer, foreach": foreach.step,
    }
    if trainer.ema is not None:
        parts["EMA update"] = lambda: trainer.ema.update_parameters(trainer.model)
    seconds = {}
    for name, work in parts.items():
        work()  # first call: lazy state
        seconds[name] = timed(trainer.device, lambda work=work: [work() for _ in range(repeats)]) / repeats
    trainer.window.reset()
    return seconds


def measure(overrides: list[str], steps: int, rounds: int, runtime: Runtime | None = None) -> OverheadResult:
    cfg = load_config(None, DEFAULTS + list(overrides))
    cfg.data.random_train_samples = cfg.train.batch_size * steps
    with tempfile.TemporaryDirectory() as run_dir:
        cfg.run.dir = run_dir
        run = build_run(cfg, runtime=runtime)
        trainer, device = run.trainer, run.runtime.device

        seed_everything(cfg.run.seed)
        fmt = torch.channels_last if cfg.model.channels_last else torch.contiguous_format
        bare_model = build_model(cfg.model).to(device, memory_format=fmt)
        bare_opt = build_optimizer(bare_model, cfg.optim, spec_of(cfg.model.name))
        bare_sched = build_scheduler(bare_opt, cfg.schedule, steps, cfg.train.epochs)
        batches = list(run.data.train)

        def run_trainer(round_index: int) -> float:
            trainer.state.batch_in_epoch = 0  # what fit() does between epochs
            return timed(device, lambda: trainer.train_one_epoch(round_index))

        def run_bare() -> float:
            return timed(device, lambda: reference_loop(bare_model, bare_opt, bare_sched, batches,
                                                        trainer.backend.autocast, cfg.train.label_smoothing))

        trainer_times, bare_times = [], []
        for round_index in range(rounds + 1):  # round 0 warms both up and is discarded
            if round_index % 2:
                trainer_s, bare_s = run_trainer(round_index), run_bare()
            else:
                bare_s, trainer_s = run_bare(), run_trainer(round_index)
            if round_index:
                trainer_times.append(trainer_s / steps)
                bare_times.append(bare_s / steps)
        parts = bookkeeping_parts(trainer, batches[0], repeats=max(20, steps))
        trainer.tb.close()
    ratios = [b / e for e, b in zip(trainer_times, bare_times)]
    return OverheadResult(
        trainer_s_per_step=statistics.median(trainer_times), bare_s_per_step=statistics.median(bare_times),
        trainer_spread=(min(trainer_times), max(trainer_times)), bare_spread=(min(bare_times), max(bare_times)),
        ratio=statistics.median(ratios), ratio_spread=(min(ratios), max(ratios)), parts_s_per_step=parts,
        batch=cfg.train.batch_size, steps=steps, rounds=rounds,
    )


def report(result: OverheadResult) -> str:
    ips = result.batch / result.trainer_s_per_step, result.batch / result.bare_s_per_step
    return "\n".join([
        f"trainer overhead: {result.rounds} alternating rounds of {result.steps} steps, batch {result.batch}",
        f"  trainer {1000 * result.trainer_s_per_step:8.1f} ms/step  {ips[0]:8.1f} img/s  "
        f"(range {1000 * result.trainer_spread[0]:.1f}-{1000 * result.trainer_spread[1]:.1f} ms)",
        f"  bare    {1000 * result.bare_s_per_step:8.1f} ms/step  {ips[1]:8.1f} img/s  "
        f"(range {1000 * result.bare_spread[0]:.1f}-{1000 * result.bare_spread[1]:.1f} ms)",
        f"  ratio trainer/bare throughput (median of paired rounds): {result.ratio:.3f} "
        f"(range {result.ratio_spread[0]:.3f}-{result.ratio_spread[1]:.3f})",
        "  per-step bookkeeping, each piece alone:",
        *(f"    {name:36s} {1e6 * seconds:9.1f} us/step  ({100 * seconds / result.trainer_s_per_step:5.2f} % of a step)"
          for name, seconds in result.parts_s_per_step.items()),
    ])
