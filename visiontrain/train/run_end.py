"""The run's end: the evaluation report of the final weights, the exported weights, summary.json
and the curves PNG. Every rank calls `finish_run` (it holds collectives); rank 0 writes. It reads
only the `RunEnd` the trainer hands it.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ContextManager

import torch
from torch import nn

from visiontrain.checkpoint.weights import export_weights, plain_state_dict
from visiontrain.config import Config
from visiontrain.evaluate.metrics import collect_predictions
from visiontrain.evaluate.report import plot_curves, write_report
from visiontrain.infra.environment import environment
from visiontrain.infra.fileio import write_json
from visiontrain.parallel.runtime import Runtime, all_gather_objects, average_buffers, raise_if_any_rank_failed
from visiontrain.train.best import BestState

log = logging.getLogger(__name__)


@dataclass
class RunEnd:
    """What the end of a run reads: built by `Trainer.run_end`, one field per value."""

    cfg: Config
    runtime: Runtime
    run_dir: Path
    model: nn.Module  # the plain module: exported weights, BatchNorm buffers
    eval_model: nn.Module  # the module evaluation runs (wrapped: a collective under ZeRO-3)
    ema_model: nn.Module | None
    autocast: Callable[[], ContextManager]
    prepare_inputs: Callable[[torch.Tensor], torch.Tensor]
    full_state_dict: Callable[[], dict[str, torch.Tensor]]  # consolidated weights (a collective under ZeRO-3)
    strategy: str
    zero_stage: int | None
    val_loader: Any
    class_names: list[str]
    train_samples: int
    samples_per_epoch: int  # what one epoch trains on, on this rank
    global_batch: int
    epochs: int  # completed
    steps: int  # completed
    stopped_early: bool
    pruned: bool  # stopped by a sweep's pruner
    best: BestState
    init: dict[str, Any]  # where the starting weights came from
    last_val: dict[str, Any]
    last_val_ema: dict[str, Any]
    train_seconds: float
    train_images: int
    wall_seconds: float


def digest(state_dict: dict[str, torch.Tensor]) -> str:
    """sha256 of the parameter names and bytes: equal on every rank when their weights are equal."""
    sha = hashlib.sha256()
    for name, tensor in state_dict.items():
        sha.update(name.encode())
        sha.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return sha.hexdigest()


def write_final_report(end: RunEnd) -> None:
    """The evaluation report of the final weights, in RUN_DIR/eval/ (python -m visiontrain evaluate's)."""
    predictions = collect_predictions(end.eval_model, end.val_loader, end.autocast, end.runtime.world_size,
                                      end.prepare_inputs, tta=end.cfg.train.tta)
    error = None
    if end.runtime.is_main:
        out = end.run_dir / "eval"
        try:
            write_report(out, predictions, end.class_names,
                         {"weights": str(end.run_dir), "data": end.cfg.data.path, "split": "val",
                          "tta": end.cfg.train.tta})
            log.info("evaluation report: %s", out / "report.md")
        except Exception as err:  # the others are about to enter a collective: they learn it there, not later
            error = err
    raise_if_any_rank_failed(error, end.runtime, "writing the evaluation report")


def finish_run(end: RunEnd) -> dict[str, Any]:
    """Report, export and summarize a finished run; returns summary.json's contents on rank 0 ({} elsewhere)."""
    cfg, runtime, run_dir = end.cfg, end.runtime, end.run_dir
    average_buffers(end.model, runtime.world_size)
    if cfg.log.report:
        write_final_report(end)
    weights = end.full_state_dict()
    ranks = all_gather_objects({"rank": runtime.rank, "host": runtime.host, "node_address": runtime.node_address,
                                "socket_interface": runtime.socket_interface, "params_sha256": digest(weights),
                                "train_samples_per_epoch": end.samples_per_epoch}, runtime.world_size)
    summary: dict[str, Any] = {}
    error = None
    if runtime.is_main:
        try:
            about = {"model": cfg.model.name, "num_classes": str(cfg.model.num_classes),
                     "width": str(cfg.model.width)}
            export_weights(weights, run_dir / "weights.safetensors", about)
            if end.ema_model is not None:
                export_weights(plain_state_dict(end.ema_model), run_dir / "weights_ema.safetensors", about)
            summary = _summary(end, ranks)
            write_json(run_dir / "summary.json", summary)
            if cfg.log.plots:
                plot_curves(run_dir / "metrics.jsonl", run_dir / "curves.png")
        except Exception as err:  # a full disk: every rank ends with it (this all-reduce is the final barrier)
            error = err
    raise_if_any_rank_failed(error, runtime, "writing the final weights and summary")
    return summary


def _summary(end: RunEnd, ranks: list[dict[str, Any]]) -> dict[str, Any]:
    cfg, runtime, best = end.cfg, end.runtime, end.best
    train_ips = end.train_images / end.train_seconds if end.train_seconds else None
    return {
        "status": "completed",
        "run_dir": str(end.run_dir),
        "model": cfg.model.name,
        "parameters": sum(p.numel() for p in end.model.parameters()),
        "epochs": end.epochs,
        "steps": end.steps,
        "world_size": runtime.world_size,
        "launcher": runtime.launcher,
        "strategy": end.strategy,
        "zero_stage": end.zero_stage,
        "global_batch_size": end.global_batch,
        "train_samples": end.train_samples,
        "class_names": list(end.class_names),  # the model's outputs, in order (export, predict)
        "precision": cfg.train.precision,
        "init": end.init or None,
        "final": _metrics_only(end.last_val),
        "final_ema": _metrics_only(end.last_val_ema) or None,
        "best_top1": best.best_top1,
        "best_epoch": best.best_epoch,
        "monitor": cfg.train.monitor,
        "best_value": best.best_value,
        "stopped_early": end.stopped_early,
        "pruned": end.pruned,
        "restored_best": bool(cfg.train.restore_best or cfg.train.early_stop_patience),
        "wall_time_s": end.wall_seconds,
        "train_time_s": end.train_seconds,
        "train_img_per_s": train_ips,
        "train_img_per_s_per_device": train_ips / runtime.world_size if train_ips else None,
        "ranks": ranks,
        "environment": environment(runtime.device),
    }


def _metrics_only(record: dict[str, Any]) -> dict[str, Any]:
    return {k: record[k] for k in ("epoch", "step", "loss", "top1", "top5", "robust_top1", "samples") if k in record}
