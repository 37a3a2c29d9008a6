"""Resume ZeRO-1/2/3 shards written by another number of processes, through DeepSpeed's universal checkpoints.

A ZeRO checkpoint holds each process's slice of the fp32 master weights and optimizer states, so it loads only
at the process count that wrote it. DeepSpeed's `ds_to_universal` rewrites it per parameter (whole tensors,
any process count can slice them again); its loader then takes what each process needs. Three things the
universal path leaves out are restored here: module buffers and frozen parameters (it loads only the
optimizer's parameters), and under ZeRO-3 each parameter group's own hyperparameters and step counters (it
gives every group group 0's values and one shared step tensor).

The conversion reads every process's files in one plain process (rank 0), writes beside the checkpoint
(`checkpoints/.universal/`, never inside it: the converter also writes `latest_universal` next to its output)
and is removed once every rank has loaded. It handles the Adam family only (exp_avg, exp_avg_sq).
"""

from __future__ import annotations

import shutil
from argparse import Namespace
from pathlib import Path

import torch
from torch import nn

from visiontrain.checkpoint import weights_only_loading
from visiontrain.infra.errors import UsageError
from visiontrain.parallel.runtime import Runtime, raise_if_any_rank_failed

UNIVERSAL_DIR = ".universal"


def check_convertible(optimizer: torch.optim.Optimizer, path: Path, saved_world: int, saved_stage: int,
                      stage: int, world: int) -> None:
    """One line, before anything is read: another ZeRO stage, or an optimizer the converter cannot carry (it
    writes Adam's two moments per parameter and nothing else)."""
    forward = (f"resume with {saved_world} processes, or continue from its weights only in a new run directory: "
               f"finetune.init_from={path.parent.parent}")
    if saved_stage != stage:
        raise UsageError(f"checkpoint {path} holds ZeRO-{saved_stage} shards of {saved_world} processes; this run "
                         f"is ZeRO-{stage} on {world}: use the checkpoint's stage to resume at another count, or "
                         f"{forward}")
    if not isinstance(optimizer, torch.optim.Adam | torch.optim.AdamW):
        raise UsageError(f"checkpoint {path} holds ZeRO-{stage} shards of {saved_world} processes; this run has "
                         f"{world}, and DeepSpeed's universal conversion carries Adam-family states only (this "
                         f"optimizer is {type(optimizer).__name__}): {forward}")


def every_group_has_elements_here(zero_optimizer, stage: int) -> bool:
    """ZeRO-1/2 pad each parameter group to a multiple of the process count: a rank whose slice of a group is
    all padding (a small head's bias alone in its group, many processes) makes DeepSpeed's universal loader
    fail on that rank alone. Checked, and agreed, before loading."""
    if stage not in (1, 2):
        return True
    groups = getattr(zero_optimizer, "bit16_groups", [])
    return all(any(getattr(p, "_hp_mapping", None) is not None for p in group) for group in groups)


def convert(checkpoint: Path, model: nn.Module) -> Path:
    """Write `checkpoint`'s universal form beside it; returns its directory (tag = its name)."""
    from deepspeed.checkpoint import ds_to_universal

    _check_names(checkpoint, set(model.state_dict()))
    parent = checkpoint.parent / UNIVERSAL_DIR
    shutil.rmtree(parent, ignore_errors=True)  # a conversion cut short by a kill
    parent.mkdir()
    out = parent / checkpoint.name
    with weights_only_loading():  # its readers unpickle whole files otherwise
        ds_to_universal.main(Namespace(input_folder=str(checkpoint), output_folder=str(out), num_extract_workers=1,
                                       num_merge_workers=1, keep_temp_folder=False, strict=True,
                                       inject_missing_state=True))
    return out


def _check_names(checkpoint: Path, names: set[str]) -> None:
    """The converter makes a directory per parameter name stored in the checkpoint: names that are not this
    model's (a crafted "../../x") would be written outside the conversion's directory."""
    with weights_only_loading():
        states = torch.load(sorted(checkpoint.glob("*model_states.pt"))[0], map_location="cpu")
    shapes = states.get("param_shapes") or []
    stored = [name for group in (shapes if isinstance(shapes, list) else [shapes]) for name in group]
    foreign = sorted(set(stored) - names)
    if foreign:
        raise ValueError(f"parameter names that are not this model's: {foreign[:3]}")


def remove(checkpoint: Path) -> None:
    shutil.rmtree(checkpoint.parent / UNIVERSAL_DIR, ignore_errors=True)


def load(engine, universal: Path) -> dict:
    """Load the universal checkpoint into `engine` (every rank); returns the client state saved with it."""
    before = engine._config.load_universal_checkpoint
    engine._config.load_universal_checkpoint = True  # read by DeepSpeed on its load path only
    try:
        with weights_only_loading():
            _, client = engine.load_checkpoint(str(universal.parent), tag=universal.name, load_module_strict=True,
                                               load_optimizer_states=True, load_lr_scheduler_states=False)
    finally:
        engine._config.load_universal_checkpoint = before
    return client


def restore_zero3_groups(optimizer: torch.optim.Optimizer, universal: Path) -> None:
    """ZeRO-3's universal load gives every group group 0's lr / weight decay and one step tensor for all."""
    with weights_only_loading():
        saved = torch.load(universal / "zero" / "optimizer_state.pt", map_location="cpu")
    for group, saved_group in zip(optimizer.param_groups, saved["optimizer_state_dict"]["param_groups"], strict=True):
        group.update({key: value for key, value in saved_group.items() if key != "params"})
    for state in optimizer.state.values():
        if torch.is_tensor(state.get("step")):
            # One counter per parameter again (all hold the same count): AdamW increments it in place.
            state["step"] = state["step"].clone()


def restore_rest(model: nn.Module, checkpoint: Path, stage: int, runtime: Runtime) -> None:
    """Buffers (BatchNorm statistics) and frozen parameters from the original checkpoint, which the universal
    load leaves out. Rank 0 reads them (one copy of the model in host memory, not one per process) and sends
    them: buffers by broadcast, frozen parameters through ZeRO-3's gather with rank 0 as the writer."""
    import deepspeed

    saved, error = {}, None
    if runtime.is_main:
        try:
            saved = _saved_module(checkpoint, stage)
        except Exception as err:
            error = err
    raise_if_any_rank_failed(error, runtime, "reading the checkpoint's buffers and frozen parameters")
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if runtime.is_main and name in saved:
                buffer.copy_(saved[name])
            if runtime.world_size > 1:
                torch.distributed.broadcast(buffer, src=0)
        for name, param in model.named_parameters():
            if param.requires_grad:
                continue
            with deepspeed.zero.GatheredParameters([param], modifier_rank=0, enabled=stage == 3):
                if runtime.is_main and name in saved:
                    param.data.copy_(saved[name])
            if stage != 3 and runtime.world_size > 1:
                torch.distributed.broadcast(param.data, src=0)


def _saved_module(checkpoint: Path, stage: int) -> dict[str, torch.Tensor]:
    with weights_only_loading():
        if stage == 3:  # parameters are partitioned in the model states: consolidate (frozen ones included)
            from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

            return get_fp32_state_dict_from_zero_checkpoint(str(checkpoint.parent), tag=checkpoint.name)
        files = sorted(checkpoint.glob("mp_rank_*_model_states.pt"))
        return torch.load(files[0], map_location="cpu")["module"]
