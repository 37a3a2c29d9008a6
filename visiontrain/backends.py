"""How gradients are computed, reduced and applied: one small interface per backend.

The engine calls `prepare`, `sync_context`, `backward`, `step` and never branches on
the backend. Mixed precision is explicit: `torch.autocast` for bf16/fp16 and a
GradScaler for fp16 only, on CPU and GPU alike (accelerate's own fp16 silently runs
fp32 on CPU, so it is not used).
"""

from __future__ import annotations

import contextlib
from functools import partial
from typing import Callable, ContextManager

import torch
from torch import nn

from visiontrain.dist import Runtime

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_factory(precision: str, device: torch.device) -> Callable[[], ContextManager]:
    if precision == "fp32":
        return contextlib.nullcontext
    return partial(torch.autocast, device_type=device.type, dtype=_DTYPES[precision])


class DDPBackend:
    """accelerate's DistributedDataParallel wrapping (plain module on one process)."""

    name = "ddp"

    def __init__(self, runtime: Runtime, precision: str, grad_clip_norm: float, compile_model: bool):
        self.runtime = runtime
        self.accelerator = runtime.accelerator
        self.autocast = autocast_factory(precision, runtime.device)
        self.scaler = torch.amp.GradScaler(runtime.device.type) if precision == "fp16" else None
        self.grad_clip_norm = grad_clip_norm
        self.compile_model = compile_model

    def prepare(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[nn.Module, torch.optim.Optimizer]:
        wrapped = self.accelerator.prepare_model(model)
        if self.compile_model:
            # Compile the DDP-wrapped model: DDP's graph breaks at bucket boundaries let the
            # gradient all-reduce overlap the backward pass (PyTorch's DDP + compile advice).
            wrapped = torch.compile(wrapped)
        self._ddp = wrapped
        self._params = [p for p in model.parameters() if p.requires_grad]
        return wrapped, optimizer

    def sync_context(self, model: nn.Module, sync: bool) -> ContextManager:
        """Inside it, backward skips the gradient all-reduce unless `sync` (accumulation)."""
        if sync or self.runtime.world_size == 1:
            return contextlib.nullcontext()
        return self.accelerator.no_sync(model)

    def backward(self, loss: torch.Tensor) -> None:
        if self.scaler is not None:
            loss = self.scaler.scale(loss)
        self.accelerator.backward(loss)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.grad_clip_norm > 0:
            if self.scaler is not None:
                self.scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(self._params, self.grad_clip_norm, foreach=True)
        if self.scaler is not None:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def state_dict(self) -> dict:
        return {"scaler": self.scaler.state_dict() if self.scaler is not None else None}

    def load_state_dict(self, state: dict) -> None:
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])


def build_backend(name: str, runtime: Runtime, precision: str, grad_clip_norm: float, compile_model: bool):
    return DDPBackend(runtime, precision, grad_clip_norm, compile_model)
