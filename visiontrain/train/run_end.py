"""The run's end: the evaluation report of the final weights, the exported weights, summary.json
and the curves PNG. Every rank calls `finish_run` (it holds collectives); rank 0 writes.
"""

from __future__ import annotations

import hashlib
import logging
from typing import TYPE_CHECKING, Any

import torch

from visiontrain.checkpoint.weights import export_weights, plain_state_dict
from visiontrain.evaluate.metrics import predict
from visiontrain.evaluate.report import plot_curves, write_report
from visiontrain.infra.environment import environment
from visiontrain.infra.fileio import write_json
from visiontrain.parallel.dist import all_gather_objects, average_buffers

if TYPE_CHECKING:  # the trainer calls this module at the end of fit()
    from visiontrain.train.trainer import Trainer

log = logging.getLogger(__name__)


def digest(state_dict: dict[str, torch.Tensor]) -> str:
    """sha256 of the parameter names and bytes: equal on every rank when their weights are equal."""
    sha = hashlib.sha256()
    for name, tensor in state_dict.items():
        sha.update(name.encode())
        sha.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return sha.hexdigest()


def write_final_report(trainer: Trainer) -> None:
    """The evaluation report of the final weights, in RUN_DIR/eval/ (python -m visiontrain evaluate's)."""
    predictions = predict(trainer.train_model, trainer.data.val, trainer.backend.autocast, trainer.runtime.world_size,
                          trainer.backend.prepare_inputs, tta=trainer.cfg.train.tta)
    if trainer.runtime.is_main:
        out = trainer.run_dir / "eval"
        write_report(out, predictions, trainer.data.class_names,
                     {"weights": str(trainer.run_dir), "data": trainer.cfg.data.path, "split": "val",
                      "tta": trainer.cfg.train.tta})
        log.info("evaluation report: %s", out / "report.md")


def finish_run(trainer: Trainer, seconds: float) -> dict[str, Any]:
    """Report, export and summarize a finished run; returns summary.json's contents on rank 0 ({} elsewhere)."""
    cfg, runtime, run_dir = trainer.cfg, trainer.runtime, trainer.run_dir
    average_buffers(trainer.model, runtime.world_size)
    if cfg.log.report:
        write_final_report(trainer)
    weights = trainer.backend.full_state_dict()  # a collective under ZeRO-3
    samples_per_epoch = trainer.steps_per_epoch * trainer.plan.accum_steps * trainer.plan.micro_batch
    ranks = all_gather_objects({"rank": runtime.rank, "host": runtime.host, "node_address": runtime.node_address,
                                "socket_interface": runtime.socket_interface, "params_sha256": digest(weights),
                                "train_samples_per_epoch": samples_per_epoch}, runtime.world_size)
    summary: dict[str, Any] = {}
    if runtime.is_main:
        about = {"model": cfg.model.name, "num_classes": str(cfg.model.num_classes), "width": str(cfg.model.width)}
        export_weights(weights, run_dir / "weights.safetensors", about)
        if trainer.ema is not None:
            export_weights(plain_state_dict(trainer.ema.module), run_dir / "weights_ema.safetensors", about)
        summary = _summary(trainer, seconds, ranks)
        write_json(run_dir / "summary.json", summary)
        if cfg.log.plots:
            plot_curves(run_dir / "metrics.jsonl", run_dir / "curves.png")
    trainer.tb.close()
    runtime.barrier()
    return summary


def _summary(trainer: Trainer, seconds: float, ranks: list[dict[str, Any]]) -> dict[str, Any]:
    cfg, runtime, best = trainer.cfg, trainer.runtime, trainer.best.state
    train_ips = trainer.train_images / trainer.train_seconds if trainer.train_seconds else None
    return {
        "status": "completed",
        "run_dir": str(trainer.run_dir),
        "model": cfg.model.name,
        "epochs": trainer.state.epoch,
        "steps": trainer.state.step,
        "world_size": runtime.world_size,
        "launcher": runtime.launcher,
        "strategy": trainer.backend.name,
        "zero_stage": getattr(trainer.backend, "stage", None),
        "global_batch_size": trainer.plan.global_batch,
        "train_samples": trainer.data.train_samples,
        "class_names": list(trainer.data.class_names),  # the model's outputs, in order (export, predict)
        "precision": cfg.train.precision,
        "init": trainer.init or None,
        "final": _metrics_only(trainer.last_val),
        "final_ema": _metrics_only(trainer.last_val_ema) or None,
        "best_top1": best.best_top1,
        "best_epoch": best.best_epoch,
        "monitor": cfg.train.monitor,
        "best_value": best.best_value,
        "stopped_early": trainer.state.stopped_early,
        "restored_best": bool(cfg.train.restore_best or cfg.train.early_stop_patience),
        "wall_time_s": seconds,
        "train_time_s": trainer.train_seconds,
        "train_img_per_s": train_ips,
        "train_img_per_s_per_device": train_ips / runtime.world_size if train_ips else None,
        "ranks": ranks,
        "environment": environment(trainer.device),
    }


def _metrics_only(record: dict[str, Any]) -> dict[str, Any]:
    return {k: record[k] for k in ("epoch", "step", "loss", "top1", "top5", "samples") if k in record}
