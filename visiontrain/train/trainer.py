"""The training loop: epochs, the hot step, evaluation, checkpoints and resume.

Hot-loop rules: no host-device sync per step, and few kernels per step (on a short step
each small kernel is host time). Loss and accuracy accumulate on the device and are read
every `log.every_steps` steps (and before any checkpoint, so a checkpoint is never written
after a non-finite loss). Each micro-batch's loss is copied into a device buffer, so when
a read finds a non-finite loss the error can name the step where it first appeared.
The run's end (report, exported weights, summary.json) is `run_end.finish_run`.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from visiontrain.checkpoint import CheckpointStore
from visiontrain.config import Config, to_yaml
from visiontrain.data.base import DataBundle
from visiontrain.evaluate.metrics import RunningStats, evaluate, gather_sums, restore_sums
from visiontrain.infra.errors import Preempted, TrainingFailed
from visiontrain.models import spec_of
from visiontrain.parallel.batch_plan import BatchPlan
from visiontrain.parallel.runtime import (
    Runtime,
    all_gather_objects,
    all_ranks_agree,
    average_buffers,
    raise_if_any_rank_failed,
)
from visiontrain.sweep.report import TrialReporter
from visiontrain.train import logs, run_lock
from visiontrain.train.best import BestTracker
from visiontrain.train.finetune import keep_frozen_bn_in_eval
from visiontrain.train.lookahead import Lookahead
from visiontrain.train.mixing import targets_for
from visiontrain.train.optim import build_optimizer, build_scheduler
from visiontrain.train.preemption import PreemptionWatch
from visiontrain.train.run_end import RunEnd, finish_run
from visiontrain.train.step import Step, StepOutput

log = logging.getLogger(__name__)


@dataclass
class Progress:
    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps completed
    batch_in_epoch: int = 0  # micro-batches of the current epoch already trained on
    stopped_early: bool = False
    best_robust: float = -1.0  # adversarial training: the robustness check's best robust top-1 so far
    collapsed: bool = False  # ... and it collapsed (robust/check.py)
    pruned: bool = False  # a sweep's pruner stopped this trial (sweep/report.py)


class Trainer:
    """Built by `run.build_run`, which every entry point calls; `fit()` trains to the end."""

    def __init__(self, cfg: Config, runtime: Runtime, plan: BatchPlan, data: DataBundle, model: nn.Module,
                 backend, run_dir: Path, init: dict[str, Any] | None = None, robust_check=None):
        self.cfg, self.runtime, self.plan, self.data, self.run_dir = cfg, runtime, plan, data, Path(run_dir)
        self.init = init or {}  # where the starting weights came from (fine-tuning)
        self.device = runtime.device
        self.backend = backend
        self.model = model.to(self.device, memory_format=self.backend.param_memory_format)
        # EMA before wrapping: it averages the plain module's parameters and BN buffers.
        self.ema = self._new_ema() if cfg.train.ema else None
        self.optimizer = build_optimizer(self.model, cfg.optim, spec_of(cfg.model.name),
                                         deepspeed=cfg.parallel.strategy == "deepspeed")
        self.steps_per_epoch = data.train.steps_per_epoch
        self.scheduler = build_scheduler(self.optimizer, cfg.schedule, self.steps_per_epoch, cfg.train.epochs)
        self.train_model, self.optimizer = self.backend.prepare(self.model, self.optimizer)
        # After the wrapper has given every rank rank 0's weights (a data-dependent init differs per rank).
        self.lookahead = self._new_lookahead() if cfg.train.lookahead_every_steps else None
        self.step = Step(self.train_model, self.optimizer, self.scheduler, self.backend, cfg.train.label_smoothing,
                         self.model, self.ema, cfg.train.loss)
        self.targets = targets_for(cfg, runtime.rank, plan.micro_batch)  # Mixup / CutMix, soft targets
        self.adversary = self._new_adversary() if cfg.adversarial.on else None
        self.robust_check = robust_check  # robust/check.py, with adversarial training
        self.trial = TrialReporter.for_run_dir(self.run_dir, runtime)  # a sweep's trial: report, maybe prune
        self.state = Progress()
        self.best = BestTracker(cfg.train)
        self.window = RunningStats(self.device)  # since the last train log event
        self.epoch_stats = RunningStats(self.device)
        # The losses of the micro-batches since the last finiteness check: checks come at least
        # every log.every_steps steps (log reads at multiples of it, also in the benchmarks'
        # epochs longer than the dataset), and more often at epoch ends and checkpoints.
        self._unchecked_losses = torch.zeros(cfg.log.every_steps * plan.accum_steps, device=self.device)
        self._unchecked = 0  # micro-batches recorded there
        self._checked_step = 0  # optimizer steps completed at the last check
        self.store = CheckpointStore(self.run_dir, cfg.checkpoint.keep_last)
        self.last_checkpoint: Path | None = None
        self._saved_step = -1  # step of the last checkpoint this process wrote
        self.preemption = PreemptionWatch(runtime.world_size, self.device, cfg.checkpoint.signal_check_steps).install()
        self.metrics = logs.MetricsLog(self.run_dir / "metrics.jsonl", runtime.world_size, runtime.is_main)
        self.tb: logs.TensorBoard | None = None
        self.last_val: dict[str, Any] = {}
        self.last_val_ema: dict[str, Any] = {}
        self.train_seconds = 0.0
        self.train_images = 0

    # ----------------------------------------------------------------- resume
    def resume_if_possible(self) -> bool:
        found = self.store.load_latest(self.backend.load, self._all_ranks_agree)
        if found is None:
            self._open_logs(purge_step=0)
            return False
        state, path = found
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None:
            if state.get("ema") is None:
                log.warning("checkpoint %s has no EMA weights; the EMA restarts from the current model", path)
                self.ema = self.step.ema = self._new_ema()
            else:
                self.ema.load_state_dict(state["ema"])
        if self.lookahead is not None:
            if state.get("lookahead") is None:
                log.warning("checkpoint %s has no lookahead average; it restarts from the current model", path)
                self.lookahead = self._new_lookahead()
            else:
                self.lookahead.load_state_dict(state["lookahead"])
        self.state = Progress(**{key: state["trainer"][key] for key in asdict(Progress()) if key in state["trainer"]})
        self.best.load_state_dict(state["trainer"])
        restore_sums(self._running_stats(), state["stats"], self.runtime.rank, self.runtime.world_size)
        self._restore_buffers(state.get("rank_buffers"))
        self._checked_step = self.state.step
        torch.set_rng_state(state["rng"]["torch"])
        if self.device.type == "cuda" and state["rng"]["cuda"] is not None:
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)
        self.last_checkpoint = path
        self._open_logs(purge_step=self.state.step + 1)
        if self.metrics.failure is None:
            try:
                self.metrics.truncate_after(self.state.step)
            except OSError as err:  # rank 0 alone: raised where every rank agrees (rundir.save_config)
                self.metrics.failure = err
        log.info("resuming from %s (epoch %d, step %d, %d micro-batches into the epoch)",
                 path, self.state.epoch, self.state.step, self.state.batch_in_epoch)
        self.metrics.write("resume", epoch=self.state.epoch, step=self.state.step, checkpoint=str(path))
        return True

    def _gather_buffers(self) -> list[dict[str, torch.Tensor]] | None:
        """Every rank's BatchNorm statistics. Ranks update them from their own batches after DDP's broadcast of
        rank 0's; the next forward broadcasts again, but an evaluation before it (a checkpoint at an epoch's last
        step) averages all ranks' (average_buffers): a resumed rank needs its own back, not rank 0's."""
        if self.runtime.world_size == 1:
            return None
        own = {name: b.detach().cpu().clone() for name, b in self.model.named_buffers() if b.is_floating_point()}
        return all_gather_objects(own, self.runtime.world_size)

    def _restore_buffers(self, saved: list[dict[str, torch.Tensor]] | None) -> None:
        """This rank's buffers from the checkpoint, at the same process count (at another, rank 0's stay)."""
        if not saved or len(saved) != self.runtime.world_size:
            return
        with torch.no_grad():
            for name, buffer in self.model.named_buffers():
                if name in saved[self.runtime.rank]:
                    buffer.copy_(saved[self.runtime.rank][name])

    def _new_adversary(self):
        from visiontrain.robust.training import AdversarialBatches

        c = self.cfg
        return AdversarialBatches(c.adversarial, self.model, c.data.mean, c.data.std, self.device, c.run.seed,
                                  self.runtime.rank, self.backend.autocast, c.train.precision == "fp16", c.train.loss)

    def _new_ema(self) -> AveragedModel:
        return AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(self.cfg.train.ema_decay), use_buffers=True)

    def _new_lookahead(self) -> Lookahead:
        t = self.cfg.train
        return Lookahead(self.model, t.lookahead_every_steps, t.lookahead_decay, t.lookahead_power,
                         self.steps_per_epoch * t.epochs)

    def _running_stats(self) -> dict[str, RunningStats]:
        return {"window": self.window, "epoch": self.epoch_stats}

    def _all_ranks_agree(self, ok: bool) -> bool:
        return all_ranks_agree(ok, self.runtime.world_size, self.device)

    def _open_logs(self, purge_step: int) -> None:
        if self.runtime.is_main:
            try:
                if purge_step == 0:
                    self.metrics.truncate_after(0)  # a run killed before its first checkpoint starts over
                self.tb = logs.TensorBoard(self.run_dir / "tb", self.cfg.log.tensorboard, purge_step)
            except OSError as err:  # rank 0 alone: raised where every rank agrees (rundir.save_config)
                self.metrics.failure = self.metrics.failure or err
                self.tb = logs.TensorBoard(self.run_dir / "tb", False, None)
        else:
            self.tb = logs.TensorBoard(self.run_dir / "tb", False, None)

    # -------------------------------------------------------------- main loop
    def fit(self) -> dict[str, Any]:
        start = time.perf_counter()
        epochs = self.cfg.train.epochs
        while self.state.epoch < epochs and not self.state.stopped_early:
            epoch = self.state.epoch
            self.train_one_epoch(epoch)
            self.state.epoch, self.state.batch_in_epoch = epoch + 1, 0
            if self.lookahead is not None and self.state.epoch == epochs:
                self.lookahead.finish()
            improved = False
            if self.state.epoch == epochs or self.state.epoch % self.cfg.train.eval_every_epochs == 0:
                improved = self.run_evaluation()
                self.state.pruned = self._report_to_sweep()
                self.state.stopped_early = self.best.should_stop() or self._stop_on_collapse() or self.state.pruned
                if self.state.stopped_early and not (self.state.collapsed or self.state.pruned):
                    self._log_early_stop()
            done = self.state.epoch == epochs or self.state.stopped_early
            every = self.cfg.checkpoint.every_epochs
            self.save_checkpoint(periodic=done or (every > 0 and self.state.epoch % every == 0), best=improved)
            if not done and self.preemption.stop_now(self.state.step, boundary=True):
                self.stop_for_signal()
        if self.cfg.train.restore_best or self.cfg.train.early_stop_patience or self._stop_on_collapse():
            self.restore_best()
        elif not self.last_val:  # resumed after the last epoch's checkpoint: evaluate once more
            self.run_evaluation()
        self.tb.close()
        raise_if_any_rank_failed(self.metrics.failure, self.runtime, "writing metrics.jsonl")
        summary = finish_run(self.run_end(time.perf_counter() - start))
        run_lock.release(self.run_dir)  # the run is over: another may write here
        return summary

    def run_end(self, wall_seconds: float) -> RunEnd:
        b, data = self.backend, self.data
        return RunEnd(
            cfg=self.cfg, runtime=self.runtime, run_dir=self.run_dir, model=self.model, eval_model=self.train_model,
            ema_model=self.ema.module if self.ema is not None else None, autocast=b.autocast,
            prepare_inputs=b.prepare_inputs, full_state_dict=b.full_state_dict, strategy=b.name,
            zero_stage=getattr(b, "stage", None), val_loader=data.val, class_names=data.class_names,
            train_samples=data.train_samples,
            samples_per_epoch=self.steps_per_epoch * self.plan.accum_steps * self.plan.micro_batch,
            global_batch=self.plan.global_batch, epochs=self.state.epoch, steps=self.state.step,
            stopped_early=self.state.stopped_early, pruned=self.state.pruned, best=self.best.state, init=self.init,
            last_val=self.last_val,
            last_val_ema=self.last_val_ema, train_seconds=self.train_seconds, train_images=self.train_images,
            wall_seconds=wall_seconds)

    def _log_early_stop(self) -> None:
        best = self.best.state
        log.info("early stop after epoch %d: val %s has not improved for %d evaluations (best %.4f at epoch %d)",
                 self.state.epoch, self.best.monitor, self.best.patience, best.best_value, best.best_epoch)
        self.metrics.write("early_stop", epoch=self.state.epoch, step=self.state.step, monitor=self.best.monitor,
                           best=best.best_value, best_epoch=best.best_epoch)

    def _report_to_sweep(self) -> bool:
        """Report this evaluation to the sweep's trial; True when its pruner stops the run here."""
        if self.trial is None:
            return False
        if not self.trial.report(self.state.epoch, self.last_val, self.device):
            return False
        log.info("pruned by the sweep after epoch %d (val %s %.4f); the run ends here with its checkpoint",
                 self.state.epoch, self.trial.metric, self.last_val[self.trial.metric])
        self.metrics.write("pruned", epoch=self.state.epoch, step=self.state.step, metric=self.trial.metric,
                           value=self.last_val[self.trial.metric])
        return True

    def _stop_on_collapse(self) -> bool:
        return self.state.collapsed and self.cfg.adversarial.stop_on_collapse

    def restore_best(self) -> None:
        """Load the best checkpoint's weights (and EMA) and evaluate them: the run ends with them."""
        best = self.store.best_entry()
        if best is None:
            raise TrainingFailed(f"train.restore_best: no best checkpoint in {self.store.dir}")
        state = self.backend.load(best)
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        log.info("restored the best checkpoint %s (epoch %d)", best, self.best.state.best_epoch)
        self.metrics.write("restore_best", epoch=self.best.state.best_epoch, step=self.state.step, checkpoint=str(best))
        self.run_evaluation()

    def train_one_epoch(self, epoch: int) -> None:
        cfg, loader = self.cfg, self.data.train
        accum = self.plan.accum_steps
        micro = self.state.batch_in_epoch
        loader.set_epoch(epoch, start=micro)
        self._record_sample_ids(epoch, micro)
        self.train_model.train()
        keep_frozen_bn_in_eval(self.model)
        bar = logs.progress_bar(self.runtime.is_main and cfg.log.progress_bar, self.steps_per_epoch,
                                micro // accum, f"epoch {epoch + 1}/{cfg.train.epochs}")
        window_start, window_images = time.perf_counter(), 0
        epoch_start, epoch_images = window_start, 0
        for images, labels in loader:
            micro += 1
            targets = None
            if self.targets is not None:
                images, targets = self.targets(images, labels, epoch, micro)
            if self.adversary is not None:
                images = self.adversary(images, labels, epoch, micro, targets)
            out = self.step(images, labels, sync=micro % accum == 0, targets=targets)
            self._record(out, labels)
            batch_images = images.shape[0] * self.runtime.world_size
            window_images += batch_images
            epoch_images += batch_images
            if not out.stepped:
                continue
            self.state.step += 1
            self.state.batch_in_epoch = micro
            if self.lookahead is not None:
                self.lookahead.after_step(self.state.step)
            bar.update(1)
            if self.state.step % cfg.log.every_steps == 0:
                self._log_window(epoch, window_images, time.perf_counter() - window_start, bar)
                window_start, window_images = time.perf_counter(), 0
            if cfg.checkpoint.every_steps and self.state.step % cfg.checkpoint.every_steps == 0:
                self.save_checkpoint(periodic=True, best=False)
            if self.preemption.stop_now(self.state.step):
                bar.close()
                self.stop_for_signal()
        if window_images:
            self._log_window(epoch, window_images, time.perf_counter() - window_start, bar)
        bar.close()
        seconds = time.perf_counter() - epoch_start
        self.train_seconds += seconds
        self.train_images += epoch_images
        summary = self.epoch_stats.reduce(self.runtime.world_size)
        self.epoch_stats.reset()
        record = self.metrics.write("epoch", epoch=epoch + 1, step=self.state.step, lr=self._lr(),
                                    loss=summary["loss"], top1=summary["top1"], top5=summary["top5"],
                                    img_per_s=epoch_images / max(seconds, 1e-9))
        self.tb.scalars("epoch", {k: record[k] for k in ("loss", "top1", "top5", "img_per_s")}, self.state.step)

    def _record(self, out: StepOutput, labels: torch.Tensor) -> None:
        """Device-side running sums, and the micro-batch's loss kept for the next finiteness check: no host sync."""
        self.window.update(out.losses.detach(), out.logits.detach(), labels)
        self._unchecked_losses[self._unchecked].copy_(out.loss.detach())
        self._unchecked += 1

    def _lr(self) -> float:
        """The schedule's lr: the highest group lr (the head's, when optim.backbone_lr_mult < 1), leaving out
        the groups with a multiplier of their own (optim.norm_bias_lr_mult) or a stop (optim.freeze_after_*)."""
        plain = [g["lr"] for g in self.optimizer.param_groups
                 if not g.get("name", "").endswith(("_norm_bias", "_brief"))]
        return max(plain or [g["lr"] for g in self.optimizer.param_groups])

    def _log_window(self, epoch: int, images: int, seconds: float, bar) -> None:
        """Read the device-side sums (a sync), check the loss is finite, log one train event."""
        self._check_finite()
        self.epoch_stats.sums += self.window.sums
        stats = self.window.reduce(self.runtime.world_size)
        self.window.reset()
        lr = self._lr()
        img_per_s = images / max(seconds, 1e-9)
        self.metrics.write("train", epoch=epoch + 1, step=self.state.step, lr=lr, loss=stats["loss"],
                           top1=stats["top1"], top5=stats["top5"], img_per_s=img_per_s)
        self.tb.scalars("train", {"loss": stats["loss"], "top1": stats["top1"], "lr": lr, "img_per_s": img_per_s},
                        self.state.step)
        bar.set_postfix(loss=f"{stats['loss']:.3f}", lr=f"{lr:.3g}", img_s=f"{img_per_s:.0f}", refresh=False)

    def _check_finite(self) -> None:
        """Stop if a loss since the last check was non-finite (on any rank), naming the earliest step."""
        none = torch.iinfo(torch.int64).max
        bad = ~torch.isfinite(self._unchecked_losses[: self._unchecked])
        # The first bad micro-batch's optimizer step (1-based), or `none`; MIN over ranks picks the earliest.
        first_bad = torch.where(bad.any(), self._checked_step + bad.int().argmax() // self.plan.accum_steps + 1,
                                none) if self._unchecked else torch.tensor(none, device=self.device)
        if self.runtime.world_size > 1:
            torch.distributed.all_reduce(first_bad, op=torch.distributed.ReduceOp.MIN)
        step = int(first_bad)
        self._unchecked, self._checked_step = 0, self.state.step
        if step != none:
            where = self.last_checkpoint or "none written yet"
            raise TrainingFailed(
                f"loss became non-finite at step {step} (epoch {self.state.epoch + 1}); training stopped; "
                f"last good checkpoint: {where}. Lower optim.lr, set train.grad_clip_norm, or use fp32/bf16"
            )

    # ------------------------------------------------------------- evaluation
    def run_evaluation(self) -> bool:
        """Evaluate the model (and EMA); log val events; True if val top-1 improved."""
        self._check_finite()
        average_buffers(self.model, self.runtime.world_size)  # as timm does: every rank evaluates the same model
        t0 = time.perf_counter()
        tta = self.cfg.train.tta
        val = evaluate(self.train_model, self.data.val, self.backend.autocast, self.device, self.runtime.world_size,
                       self.backend.prepare_inputs, tta=tta)
        seconds = time.perf_counter() - t0
        if self.robust_check is not None:
            val.update(self._check_robustness())
        self.last_val = self.metrics.write("val", epoch=self.state.epoch, step=self.state.step, lr=self._lr(),
                                           img_per_s=val["samples"] / max(seconds, 1e-9), **val)
        self.tb.scalars("val", val, self.state.step)
        log.info("epoch %d/%d  step %d  val loss %.4f  top1 %.2f%%  top5 %.2f%%  (%d samples)",
                 self.state.epoch, self.cfg.train.epochs, self.state.step, val["loss"], val["top1"], val["top5"],
                 val["samples"])
        if self.ema is not None:
            ema_val = evaluate(self.ema.module, self.data.val, self.backend.autocast, self.device,
                               self.runtime.world_size, tta=tta)
            self.last_val_ema = self.metrics.write("val_ema", epoch=self.state.epoch, step=self.state.step,
                                                   lr=self._lr(), **ema_val)
            self.tb.scalars("val_ema", ema_val, self.state.step)
            log.info("    EMA val top1 %.2f%%", ema_val["top1"])
        return self.best.update(val, self.state.epoch)

    def _check_robustness(self) -> dict[str, float]:
        """The PGD check on training images; a collapse below the best so far is logged (and stops the run)."""
        check = self.robust_check.run(self.model, self.backend.autocast)
        robust, best = check["robust_top1"], self.state.best_robust
        log.info("    robustness check: PGD-%d top1 %.2f%% (clean %.2f%%) on %d training images, %.1f s",
                 self.cfg.adversarial.check_steps, robust, check["clean_top1"], check["samples"], check["seconds"])
        if self.robust_check.collapsed(robust, best) and not self.state.collapsed:
            self.state.collapsed = True
            then = ("stopping; the run ends with its best checkpoint by train.monitor=" + self.cfg.train.monitor
                    if self.cfg.adversarial.stop_on_collapse else "continuing (adversarial.stop_on_collapse=false)")
            log.warning("catastrophic overfitting at epoch %d: robust top1 on the check images fell from %.2f%% to "
                        "%.2f%% (more than adversarial.collapse_drop=%g points); %s", self.state.epoch, best, robust,
                        self.cfg.adversarial.collapse_drop, then)
            self.metrics.write("collapse", epoch=self.state.epoch, step=self.state.step, robust_top1=robust,
                               best_robust_top1=best)
        self.state.best_robust = max(best, robust)
        return {"robust_top1": robust, "robust_clean_top1": check["clean_top1"], "robust_samples": check["samples"],
                "robust_seconds": check["seconds"]}

    # ------------------------------------------------------------ checkpoints
    def checkpoint_state(self) -> dict[str, Any]:
        """What the trainer owns; the backend adds the model and optimizer in its own format."""
        return {
            "scheduler": self.scheduler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "lookahead": self.lookahead.state_dict() if self.lookahead is not None else None,
            "trainer": {**asdict(self.state), **self.best.state_dict()},
            "stats": gather_sums(self._running_stats(), self.runtime.world_size),  # a collective: every rank calls
            "rank_buffers": self._gather_buffers(),  # a collective too
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None},
            "config": to_yaml(self.cfg),
            "world_size": self.runtime.world_size,
        }

    def stop_for_signal(self) -> None:
        """Checkpoint this step (unless just done) and stop with exit code 3; a restart resumes here."""
        if self._saved_step != self.state.step:
            self.save_checkpoint(periodic=True, best=False)
        name = self.preemption.signal_name or "a signal on another rank"
        log.warning("stopping on %s after step %d (epoch %d); checkpoint %s", name, self.state.step,
                    self.state.epoch + 1, self.last_checkpoint)
        self.metrics.write("preempted", epoch=self.state.epoch, step=self.state.step, signal=name)
        self.tb.close()
        self.runtime.barrier()
        raise Preempted(f"stopped on {name} after step {self.state.step}; start the same command again to resume "
                        f"from {self.run_dir}", signal=self.preemption.signal_name)

    def save_checkpoint(self, periodic: bool, best: bool) -> None:
        if not (periodic or best):
            return
        self._check_finite()
        raise_if_any_rank_failed(self.metrics.failure, self.runtime, "writing metrics.jsonl")
        self._saved_step = self.state.step
        path = self.backend.save(self.store, self.checkpoint_state(), self.state.step, periodic=periodic, best=best)
        if self.runtime.is_main:
            self.metrics.write("checkpoint", epoch=self.state.epoch, step=self.state.step, path=str(path),
                               best=best)
            self.last_checkpoint = path

    def _record_sample_ids(self, epoch: int, start: int) -> None:
        if not self.cfg.log.sample_ids:
            return
        out = self.run_dir / "ranks"
        out.mkdir(exist_ok=True)
        with open(out / f"rank{self.runtime.rank}_samples.jsonl", "a") as f:
            f.write(json.dumps({"epoch": epoch, "start": start, "indices": self.data.train.epoch_indices()})
                    + "\n")
