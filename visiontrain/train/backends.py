"""How gradients are computed, reduced and applied, and how a run is saved: one interface,
two backends. The trainer never branches on the backend.

- `ddp`: accelerate wraps the model in DistributedDataParallel (a plain module on one
  process). Mixed precision is explicit: torch.autocast for bf16/fp16 and a GradScaler
  for fp16 only (accelerate's own fp16 silently runs fp32 on CPU). Checkpoints are one
  file written by rank 0.
- `deepspeed`: a DeepSpeed engine (ZeRO 0-3) built from our model, our torch optimizer
  and a JSON completed from our config (see deepspeed_config.py). We drive the engine
  directly rather than through accelerate's DeepSpeed plugin: that keeps one training
  loop with our own per-iteration schedule, and avoids the plugin's transformers import,
  "auto" sizes and DataLoader assumptions. bf16 runs torch.autocast over DeepSpeed's
  fp32 weights, gradients and partitions (the same numerics as DDP); fp16 is DeepSpeed's
  own fp16 with its dynamic loss scaling. Checkpoints are DeepSpeed's sharded
  directories, written by every rank.

Interface: prepare, before_micro_batch, sync_context, prepare_inputs, backward, step, save, load,
full_state_dict; `autocast` and `param_memory_format` attributes. How they make one training step:
train/step.py (which also holds the DDP backend's gradient numerics).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from functools import partial
from pathlib import Path
from typing import Any, Callable, ContextManager

import torch
from torch import nn

from visiontrain.checkpoint import (
    CheckpointStore,
    CorruptCheckpoint,
    load_checkpoint,
    read_manifest,
    weights_only_loading,
    write_manifest,
)
from visiontrain.config import Config
from visiontrain.infra.errors import UsageError, describe_os_error
from visiontrain.infra.fileio import raise_if_disk_full
from visiontrain.parallel import deepspeed_config, zero_reshard
from visiontrain.parallel.batch_plan import BatchPlan
from visiontrain.parallel.runtime import Runtime, all_ranks_agree, raise_if_any_rank_failed
from visiontrain.train.optim import keep_implementation
from visiontrain.train.step import apply_gradients, scaled_backward

log = logging.getLogger(__name__)
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_factory(precision: str, device: torch.device) -> Callable[[], ContextManager]:
    if precision == "fp32":
        return contextlib.nullcontext
    return partial(torch.autocast, device_type=device.type, dtype=_DTYPES[precision])


class DDPBackend:
    name = "ddp"

    def __init__(self, cfg: Config, runtime: Runtime, plan: BatchPlan):
        self.runtime = runtime
        self.accelerator = runtime.accelerator
        self.autocast = autocast_factory(cfg.train.precision, runtime.device)
        self.scaler = torch.amp.GradScaler(runtime.device.type) if cfg.train.precision == "fp16" else None
        self.grad_clip_norm = cfg.train.grad_clip_norm
        self.accum = plan.accum_steps
        self.compile_model = cfg.model.compile
        self.compile_mode = cfg.model.compile_mode
        self.param_memory_format = torch.channels_last if cfg.model.channels_last else torch.contiguous_format

    def prepare(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[nn.Module, torch.optim.Optimizer]:
        self.model, self.optimizer = model, optimizer
        wrapped = self.accelerator.prepare_model(model)
        if self.compile_model:
            # Compile the DDP-wrapped model: DDP's graph breaks at bucket boundaries let the
            # gradient all-reduce overlap the backward pass (PyTorch's DDP + compile advice).
            wrapped = torch.compile(wrapped, mode=self.compile_mode)
        self._params = [p for p in model.parameters() if p.requires_grad]
        return wrapped, optimizer

    def before_micro_batch(self) -> None:
        pass  # DDP's forward broadcasts rank 0's BatchNorm buffers itself

    def sync_context(self, model: nn.Module, sync: bool) -> ContextManager:
        """Inside it, backward skips the gradient all-reduce unless `sync` (accumulation)."""
        if sync or self.runtime.world_size == 1:
            return contextlib.nullcontext()
        return self.accelerator.no_sync(model)

    def prepare_inputs(self, images: torch.Tensor) -> torch.Tensor:
        return images

    def backward(self, loss: torch.Tensor) -> None:
        scaled_backward(loss, self.accum, self.scaler)

    def step(self, optimizer: torch.optim.Optimizer, sync: bool) -> bool:
        """Apply the accumulated gradients at the end of an accumulation window; True if it stepped."""
        if sync:
            apply_gradients(optimizer, self._params, self.grad_clip_norm, self.scaler)
        return sync

    def save(self, store: CheckpointStore, state: dict[str, Any], step: int, periodic: bool, best: bool) -> Path | None:
        path, error = None, None
        if self.runtime.is_main:
            full = {**state, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                    "backend": {"scaler": self.scaler.state_dict() if self.scaler is not None else None}}
            try:
                path = store.save(full, step, periodic=periodic, best=best)
            except Exception as err:  # a full disk: every rank learns it here, none waits in the next step
                error = err
        raise_if_any_rank_failed(error, self.runtime, "writing a checkpoint")
        return path

    def load(self, path: Path) -> dict[str, Any]:
        if path.is_dir():
            raise CorruptCheckpoint(f"checkpoint {path} is a DeepSpeed checkpoint; resume it with "
                                    "parallel.strategy=deepspeed")
        state = load_checkpoint(path)
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            keep_implementation(self.optimizer)
        except (RuntimeError, ValueError, KeyError) as err:  # size mismatch, other parameter groups
            raise UsageError(f"checkpoint {path} was written for another model or optimizer "
                             f"({str(err).strip().splitlines()[-1].strip()[:200]}): choose a new run.dir, or start "
                             f"from its weights with finetune.init_from={path.parent.parent}") from None
        if self.scaler is not None and state["backend"].get("scaler"):
            self.scaler.load_state_dict(state["backend"]["scaler"])
        return state

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().to("cpu").contiguous().clone() for k, v in self.model.state_dict().items()}


class DeepSpeedBackend:
    name = "deepspeed"

    def __init__(self, cfg: Config, runtime: Runtime, ds_config: dict[str, Any]):
        self.runtime = runtime
        self.ds_config = ds_config
        self.stage = deepspeed_config.zero_stage(ds_config)
        self.fp16 = cfg.train.precision == "fp16"
        # bf16: torch.autocast over fp32 weights; fp16: DeepSpeed's half-precision engine.
        self.autocast = autocast_factory("bf16", runtime.device) if cfg.train.precision == "bf16" \
            else contextlib.nullcontext
        # DeepSpeed flattens and broadcasts parameters as contiguous buffers: channels-last
        # applies to the inputs (convolutions still run NHWC), not to the weights.
        self.param_memory_format = torch.contiguous_format

    def prepare(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[nn.Module, torch.optim.Optimizer]:
        import deepspeed

        self.model, self.optimizer = model, optimizer
        self.engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=self.ds_config,
                                                    dist_init_required=False)
        # Our LambdaLR drives `optimizer`: DeepSpeed's optimizers share its param_groups.
        return self.engine, optimizer

    def sync_context(self, model: nn.Module, sync: bool) -> ContextManager:
        return contextlib.nullcontext()  # DeepSpeed reduces at its accumulation boundary itself

    def before_micro_batch(self) -> None:
        """Like DDP's forward, start each micro-batch from rank 0's BatchNorm statistics: the ranks'
        running statistics then never drift apart, and a checkpoint (rank 0's) resumes every rank exactly."""
        if self.runtime.world_size == 1:
            return
        from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        for buffer in self.model.buffers():
            by_dtype.setdefault(buffer.dtype, []).append(buffer)
        for buffers in by_dtype.values():  # one broadcast per dtype, not one per buffer
            flat = _flatten_dense_tensors(buffers)
            torch.distributed.broadcast(flat, src=0)
            for buffer, synced in zip(buffers, _unflatten_dense_tensors(flat, buffers)):
                buffer.copy_(synced)

    def prepare_inputs(self, images: torch.Tensor) -> torch.Tensor:
        return images.half() if self.fp16 else images

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)  # divides by gradient_accumulation_steps itself

    def step(self, optimizer: torch.optim.Optimizer, sync: bool) -> bool:
        boundary = self.engine.is_gradient_accumulation_boundary()
        if boundary != sync:
            raise RuntimeError(f"DeepSpeed's accumulation boundary ({boundary}) disagrees with the loop's ({sync})")
        self.engine.step()  # every micro-batch: DeepSpeed counts them and steps at the boundary
        return sync

    def save(self, store: CheckpointStore, state: dict[str, Any], step: int, periodic: bool, best: bool) -> Path | None:
        """Every rank writes its shards under a temporary tag; rank 0 renames it into place."""
        tag = f".step_{step:09d}.tmp"
        tmp = store.dir / tag
        error = None
        if self.runtime.is_main:
            try:
                shutil.rmtree(tmp, ignore_errors=True)
                store.dir.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                error = err
        raise_if_any_rank_failed(error, self.runtime, "preparing its checkpoint directory")
        with self._recording_write_errors(tmp) as failures:
            try:
                self.engine.save_checkpoint(str(store.dir), tag=tag, client_state={"visiontrain": state},
                                            save_latest=False)
            except Exception as err:  # outside a file write: DeepSpeed's own collectives may be out of step
                failures.append(err)
        try:  # every rank learns whether any rank's shards failed; none waits in the next collective
            raise_if_any_rank_failed(failures[0] if failures else None, self.runtime, "writing its checkpoint shards")
        except Exception:
            if self.runtime.is_main:  # every rank is past its writes now
                shutil.rmtree(tmp, ignore_errors=True)  # the previous checkpoints stay as they were
            raise
        path = None
        if self.runtime.is_main:
            try:
                write_manifest(tmp, step, self.runtime.world_size, self.stage)
                path = store.commit_dir(tmp, step, periodic=periodic, best=best)
            except Exception as err:
                error = err
        raise_if_any_rank_failed(error, self.runtime, "writing a checkpoint")
        return path

    @contextlib.contextmanager
    def _recording_write_errors(self, tmp: Path):
        """DeepSpeed's save_checkpoint runs collectives (barriers, tag checks) around its file writes: a rank
        whose write raised would skip them and meet the others' barrier with another collective. So a failed
        write is recorded and the save goes on; the caller agrees on the failures after DeepSpeed returns."""
        engine = self.engine.checkpoint_engine
        original = engine.save
        failures: list[BaseException] = []

        def save(state_dict, path, *args, **kwargs):
            if failures:
                return None  # the disk is full: the rest of this checkpoint is skipped, it is discarded anyway
            try:
                return original(state_dict, path, *args, **kwargs)
            except Exception as err:
                try:
                    raise_if_disk_full(Path(path), err)  # named while the partial file still fills the disk
                    failures.append(err)
                except OSError as full:
                    failures.append(full)
                return None

        engine.save = save
        try:
            yield failures
        finally:
            engine.save = original

    def load(self, path: Path) -> dict[str, Any]:
        if not path.is_dir():
            raise CorruptCheckpoint(f"checkpoint {path} was written by the ddp strategy; resume it with "
                                    "parallel.strategy=ddp")
        manifest = read_manifest(path)
        if self.stage > 0 and manifest.get("world_size") != self.runtime.world_size:
            return self._load_resharded(path, int(manifest.get("world_size", 0)), int(manifest.get("zero_stage", -1)))
        try:
            with weights_only_loading():  # DeepSpeed's reader would unpickle anything
                _, client = self.engine.load_checkpoint(str(path.parent), tag=path.name, load_module_strict=True,
                                                        load_optimizer_states=True, load_lr_scheduler_states=False)
        except Exception as err:  # truncated shard, missing file: the checkpoint is unusable
            raise CorruptCheckpoint(f"checkpoint {path} is unreadable ({type(err).__name__}: "
                                    f"{str(err).splitlines()[0] if str(err) else 'no detail'})") from None
        if client is None or "visiontrain" not in client:
            raise CorruptCheckpoint(f"checkpoint {path} is unreadable (no client state)")
        if isinstance(self.engine.optimizer, torch.optim.Optimizer):  # stage 0 loads the torch optimizer as is
            keep_implementation(self.engine.optimizer)
        return client["visiontrain"]

    def _load_resharded(self, path: Path, saved_world: int, saved_stage: int) -> dict[str, Any]:
        """ZeRO shards of another process count, through DeepSpeed's universal checkpoint (zero_reshard.py).
        Every failure is agreed by all ranks before the next collective: a full disk stops the run, anything
        else is a CorruptCheckpoint on every rank, so the store falls back to the previous checkpoint."""
        world = self.runtime.world_size
        zero_reshard.check_convertible(self.optimizer, path, saved_world, saved_stage, self.stage, world)
        if not all_ranks_agree(zero_reshard.every_group_has_elements_here(self.engine.optimizer, self.stage),
                               world, self.runtime.device):
            raise UsageError(f"checkpoint {path} holds ZeRO-{self.stage} shards of {saved_world} processes; at "
                             f"{world} processes a parameter group has no element on some rank, which DeepSpeed's "
                             f"universal loader cannot fill: resume with {saved_world} processes, or another count")
        universal, error, client = path.parent / zero_reshard.UNIVERSAL_DIR / path.name, None, None
        try:
            if self.runtime.is_main:
                try:
                    universal = zero_reshard.convert(path, self.model)
                except Exception as err:
                    error = _load_error(path, universal, err, f"cannot be converted for {world} processes")
            self._agree_on_load(error, path)
            try:
                client = zero_reshard.load(self.engine, universal)
                if self.stage == 3:
                    zero_reshard.restore_zero3_groups(self.engine.optimizer.optimizer, universal)
            except Exception as err:
                error = _load_error(path, universal, err, f"is unreadable for {world} processes")
            self._agree_on_load(error, path)
            zero_reshard.restore_rest(self.model, path, self.stage, self.runtime)
        finally:
            self.runtime.barrier()  # no rank reads the converted copy any more
            if self.runtime.is_main:
                zero_reshard.remove(path)
        if client is None or "visiontrain" not in client:
            raise CorruptCheckpoint(f"checkpoint {path} is unreadable (no client state)")
        log.warning("resumed ZeRO-%d shards of %d processes on %d (converted through DeepSpeed's universal "
                    "checkpoint)", self.stage, saved_world, world)
        return client["visiontrain"]

    def _agree_on_load(self, error: BaseException | None, path: Path) -> None:
        """A full disk or refused path stops every rank; any other failure is a CorruptCheckpoint on every rank."""
        hard = error if isinstance(error, OSError) and describe_os_error(error) else None
        raise_if_any_rank_failed(hard, self.runtime, "reading a checkpoint")
        if not all_ranks_agree(error is None, self.runtime.world_size, self.runtime.device):
            raise error if error is not None else CorruptCheckpoint(
                f"checkpoint {path} could not be loaded on another rank (its log says why)")

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """Consolidated weights on every rank (a collective under ZeRO-3, which partitions parameters)."""
        if self.stage == 3:
            import deepspeed

            with deepspeed.zero.GatheredParameters(list(self.model.parameters()), modifier_rank=None):
                return {k: v.detach().to("cpu").contiguous().clone() for k, v in self.model.state_dict().items()}
        return {k: v.detach().to("cpu").contiguous().clone() for k, v in self.model.state_dict().items()}


def _load_error(path: Path, target: Path, err: BaseException, what: str) -> BaseException:
    """A full disk (torch.save reports it as its own RuntimeError) stays an OSError; the rest is corruption."""
    try:
        raise_if_disk_full(target, err)
    except OSError as full:
        return full
    if isinstance(err, OSError) and describe_os_error(err):
        return err
    detail = (str(err).splitlines() or ["no detail"])[0][:200]
    return CorruptCheckpoint(f"checkpoint {path} {what} ({type(err).__name__}: {detail})")


def build_backend(cfg: Config, runtime: Runtime, plan: BatchPlan) -> DDPBackend | DeepSpeedBackend:
    """The run's backend. DeepSpeed's JSON is completed and checked here, once: call it before writing anything."""
    if cfg.parallel.strategy != "deepspeed":
        return DDPBackend(cfg, runtime, plan)
    if cfg.train.precision == "fp16" and runtime.device.type == "cpu":
        raise UsageError("train.precision=fp16 with parallel.strategy=deepspeed needs a GPU (DeepSpeed's CPU "
                         "accelerator has no fp16); use bf16 or fp32")
    return DeepSpeedBackend(cfg, runtime, deepspeed_config.build(cfg, plan))
