"""One throughput point, measured inside the training processes.

Started by `visiontrain.bench.runner` as `python -m visiontrain.bench.throughput SPEC OUT`
(under torchrun for several processes). The training step is train.py's own:
`Trainer.train_one_epoch` with the configured backend (DDP or DeepSpeed ZeRO), precision,
memory format and compile setting. Only the loader is wrapped, to count what happens
between two batch hand-offs:

- step mode: a few batches of random tensors already on the device, cycled (no input
  pipeline: the compute ceiling);
- e2e mode: the configured loader (FFCV, torchvision, device or random tensors), kept running across
  the timed repeats so that they see its steady state, epoch boundaries included.

Per repeat, throughput is images over synchronized wall-clock time. Step times are the
intervals between batch hand-offs (CUDA events on a GPU, so they follow the device's
timeline). Data wait is host time blocked in the loader over wall time; on a GPU, kernels
still queued may hide part of it, so it bounds the device's starvation from above.
"""

from __future__ import annotations

import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from visiontrain.bench.timing import timed

# Settings that keep the measurement to training steps alone: no checkpoints, no
# progress bar, a flat learning rate (its value does not change the speed).
BENCH_OVERRIDES = ["log.progress_bar=false", "checkpoint.every_steps=0", "checkpoint.every_epochs=0",
                   "schedule.name=constant", "schedule.warmup_epochs=0", "train.epochs=1000"]
STEP_POOL_BATCHES = 2  # step mode: distinct device batches cycled through


class TimedLoader:
    """Wraps a training loader: yields a planned number of batches, recording hand-offs."""

    def __init__(self, inner, device: torch.device):
        self.inner, self.device = inner, device
        self.steps_per_epoch, self.micro_batch = inner.steps_per_epoch, inner.micro_batch
        self.batches_per_epoch = inner.batches_per_epoch
        self._planned = 0
        self._source = None  # one endless iteration, alive across repeats
        self.wait_s = 0.0
        self.marks: list[Any] = []

    def plan(self, batches: int) -> None:
        self._planned, self.wait_s, self.marks = batches, 0.0, []

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """The benchmark, not the trainer, decides how many batches a call of train_one_epoch gets."""

    def epoch_indices(self) -> list[int]:
        return []

    def _endless(self):
        epoch = 0
        while True:
            self.inner.set_epoch(epoch)
            yield from self.inner
            epoch += 1

    def _mark(self):
        if self.device.type == "cuda":
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def __iter__(self):
        if self._source is None:
            self._source = self._endless()
        for _ in range(self._planned):
            start = time.perf_counter()
            batch = next(self._source)
            self.wait_s += time.perf_counter() - start
            self.marks.append(self._mark())
            yield batch
        self.marks.append(self._mark())  # the last step has been issued

    def step_seconds(self) -> list[float]:
        """Intervals between consecutive hand-offs (call after synchronizing)."""
        if self.device.type == "cuda":
            return [a.elapsed_time(b) / 1000 for a, b in zip(self.marks, self.marks[1:])]
        return [b - a for a, b in zip(self.marks, self.marks[1:])]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _peak_memory_mib(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "host_peak_rss"


def point_config(spec: dict[str, Any], world_size: int):
    """The config of a point. train.batch_size is the global batch, as in train.py; `batch_per_device=N`
    sets N images per device instead (the global batch then grows with the process count)."""
    from visiontrain.config import load_config

    overrides, per_device = split_batch_per_device(spec["overrides"])
    cfg = load_config(spec.get("config"), overrides + BENCH_OVERRIDES)
    if per_device:
        cfg.train.batch_size = per_device * world_size
    if spec["mode"] == "step":
        cfg.data.loader = "random"
        cfg.data.random_train_samples = STEP_POOL_BATCHES * cfg.train.batch_size
        cfg.data.random_val_samples = cfg.train.batch_size
    return cfg


def split_batch_per_device(overrides: list[str]) -> tuple[list[str], int | None]:
    """(config overrides, the `batch_per_device=N` value or None)."""
    from visiontrain.infra.errors import UsageError

    rest, per_device = [], None
    for item in overrides:
        key, _, value = item.partition("=")
        if key != "batch_per_device":
            rest.append(item)
        elif value.isdigit() and int(value) >= 1:
            per_device = int(value)
        else:
            raise UsageError(f"batch_per_device={value!r} is invalid: a whole number >= 1")
    if per_device and any(item.startswith("train.batch_size=") for item in rest):
        raise UsageError("train.batch_size (global) and batch_per_device both given: give one of them")
    return rest, per_device


def _bare_reference(cfg, runtime, autocast, pool, steps: int, label_smoothing: float):
    """A hand-written loop over the same device batches: the trainer's overhead reference."""
    from visiontrain.models import build_model, spec_of
    from visiontrain.train.optim import build_optimizer, build_scheduler
    from visiontrain.train.step import reference_loop

    fmt = torch.channels_last if cfg.model.channels_last else torch.contiguous_format
    model = build_model(cfg.model).to(runtime.device, memory_format=fmt)
    optimizer = build_optimizer(model, cfg.optim, spec_of(cfg.model.name))
    scheduler = build_scheduler(optimizer, cfg.schedule, steps, cfg.train.epochs)
    train_model = model
    if runtime.world_size > 1:
        device_ids = [runtime.device.index] if runtime.device.type == "cuda" else None
        train_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    if cfg.model.compile:
        train_model = torch.compile(train_model)
    batches = [pool[i % len(pool)] for i in range(steps)]
    return lambda: reference_loop(train_model, optimizer, scheduler, batches, autocast, label_smoothing)


def measure(spec: dict[str, Any]) -> dict[str, Any] | None:
    """Run one point in this process (one rank of it); rank 0 returns the record."""
    from visiontrain.bench.flops import mfu, peak_tflops, train_flops_per_image
    from visiontrain.models import build_model
    from visiontrain.parallel.launchers import detect_launch
    from visiontrain.parallel.runtime import all_gather_objects
    from visiontrain.train.run import build_run

    cfg = point_config(spec, detect_launch().world_size)
    steps, repeats, warmup = spec["steps"], spec["repeats"], spec["warmup_steps"]
    flops_per_image = train_flops_per_image(build_model(cfg.model), cfg.data.image_size, torch.device("cpu"))

    with tempfile.TemporaryDirectory() as run_dir:
        cfg.run.dir = run_dir
        run = build_run(cfg)
        runtime, trainer, device, accum = run.runtime, run.trainer, run.runtime.device, run.plan.accum_steps
        if device.type == "cuda":  # the peak from here on: model and optimizer state, then the steps
            torch.cuda.reset_peak_memory_stats(device)
        stage = getattr(trainer.backend, "stage", None)
        strategy = "ddp" if stage is None else f"zero{stage}"
        images_per_step = run.plan.global_batch
        loader = TimedLoader(run.data.train, device)
        trainer.data.train = loader

        def trainer_run(batches: int, epoch: int) -> float:
            loader.plan(batches)
            trainer.state.batch_in_epoch = 0
            return timed(device, lambda: trainer.train_one_epoch(epoch))

        warmup_s = trainer_run(max(1, warmup) * accum, 0)  # includes compilation when model.compile=true
        peak_mib, memory_kind = _peak_memory_mib(device)
        bare = None
        if spec.get("bare") and spec["mode"] == "step":
            bare = _bare_reference(cfg, runtime, trainer.backend.autocast, loader.inner.pool, steps,
                                   cfg.train.label_smoothing)
            timed(device, bare)  # warm-up (and compilation) of the reference

        trainer_ips, bare_ips, step_s, wait_fraction = [], [], [], []
        for repeat in range(repeats):
            order = ("trainer", "bare") if repeat % 2 == 0 else ("bare", "trainer")
            for side in order:
                if side == "trainer":
                    seconds = trainer_run(steps * accum, repeat + 1)
                    trainer_ips.append(steps * images_per_step / seconds)
                    step_s += _per_step(loader.step_seconds(), accum)
                    wait_fraction.append(loader.wait_s / seconds)
                elif bare is not None:
                    bare_ips.append(steps * images_per_step / timed(device, bare))
        if trainer.tb is not None:
            trainer.tb.close()

    peaks = all_gather_objects({"peak_mib": peak_mib, "wait": statistics.mean(wait_fraction)},
                                    runtime.world_size)
    if not runtime.is_main:
        return None
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    peak = spec.get("peak_tflops") or peak_tflops(device_name, cfg.train.precision)
    ips = statistics.median(trainer_ips)
    per_device = ips / runtime.world_size
    record = {
        "label": spec["label"], "mode": spec["mode"], "overrides": list(spec["overrides"]),
        "world_size": runtime.world_size, "device": device_name or "cpu",
        "model": cfg.model.name, "image_size": cfg.data.image_size, "batch_per_device": run.plan.micro_batch * accum,
        "global_batch": images_per_step, "precision": cfg.train.precision,
        "channels_last": cfg.model.channels_last, "compile": cfg.model.compile, "strategy": strategy,
        "data_loader": cfg.data.loader, "adversarial": cfg.adversarial.method,
        "attack_steps": cfg.adversarial.attack_steps if cfg.adversarial.on else 0,
        "steps": steps, "repeats": repeats, "warmup_steps": max(1, warmup),
        "warmup_s": warmup_s,
        "images_per_s": ips, "images_per_s_min": min(trainer_ips), "images_per_s_max": max(trainer_ips),
        "images_per_s_per_device": per_device, "repeat_images_per_s": trainer_ips,
        "step_ms_p50": 1000 * _percentile(step_s, 0.5), "step_ms_p90": 1000 * _percentile(step_s, 0.9),
        "data_wait_fraction": statistics.mean(p["wait"] for p in peaks),
        "peak_memory_mib": max(p["peak_mib"] for p in peaks), "memory_kind": memory_kind,
        "train_gflops_per_image": flops_per_image / 1e9,
        "achieved_tflops_per_device": per_device * flops_per_image / 1e12,
        "peak_tflops_per_device": peak, "mfu": mfu(per_device, flops_per_image, peak),
        "bare_images_per_s": statistics.median(bare_ips) if bare_ips else None,
        "trainer_vs_bare": ips / statistics.median(bare_ips) if bare_ips else None,
    }
    return record


def _per_step(micro_seconds: list[float], accum: int) -> list[float]:
    """Hand-off intervals are per micro-batch; an optimizer step spans `accum` of them."""
    return [sum(micro_seconds[i:i + accum]) for i in range(0, len(micro_seconds) - accum + 1, accum)]


def main(argv: list[str]) -> int:
    spec_path, out_path = Path(argv[0]), Path(argv[1])
    record = measure(json.loads(spec_path.read_text()))
    if record is not None:
        out_path.write_text(json.dumps(record))
    return 0


if __name__ == "__main__":
    from visiontrain.infra.errors import run_cli

    sys.exit(run_cli(main))
