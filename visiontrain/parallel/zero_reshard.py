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

UNIVERSAL_DIR = ".universal"


def check_convertible(optimizer: torch.optim.Optimizer, path: Path, saved_world: int, world: int) -> None:
    """The converter writes Adam's two moments per parameter and nothing else (SGD's momentum, Lamb's are not
    tested): anything but the Adam family is refused in one line."""
    name = type(optimizer).__name__
    if "adam" not in name.lower():
        raise UsageError(f"checkpoint {path} holds ZeRO optimizer shards of {saved_world} processes; this run has "
                         f"{world}, and DeepSpeed's universal conversion carries Adam-family states only (this "
                         f"optimizer is {name}). Resume with {saved_world} processes")


def convert(checkpoint: Path) -> Path:
    """Write `checkpoint`'s universal form beside it; returns its directory (tag = its name)."""
    from deepspeed.checkpoint import ds_to_universal

    parent = checkpoint.parent / UNIVERSAL_DIR
    shutil.rmtree(parent, ignore_errors=True)  # a conversion cut short by a kill
    parent.mkdir()
    out = parent / checkpoint.name
    with weights_only_loading():  # its readers unpickle whole files otherwise
        ds_to_universal.main(Namespace(input_folder=str(checkpoint), output_folder=str(out), num_extract_workers=1,
                                       num_merge_workers=1, keep_temp_folder=False, strict=True,
                                       inject_missing_state=True))
    return out


def remove(checkpoint: Path) -> None:
    shutil.rmtree(checkpoint.parent / UNIVERSAL_DIR, ignore_errors=True)


def load(engine, universal: Path) -> dict:
    """Load the universal checkpoint into `engine` (every rank); returns the client state saved with it."""
    engine._config.load_universal_checkpoint = True  # read by DeepSpeed on its load path only
    try:
        with weights_only_loading():
            _, client = engine.load_checkpoint(str(universal.parent), tag=universal.name, load_module_strict=True,
                                               load_optimizer_states=True, load_lr_scheduler_states=False)
    finally:
        engine._config.load_universal_checkpoint = False
    return client


def restore_zero3_groups(optimizer: torch.optim.Optimizer, universal: Path) -> None:
    """ZeRO-3's universal load gives every group group 0's lr / weight decay and one step tensor for all."""
    with weights_only_loading():
        saved = torch.load(universal / "zero" / "optimizer_state.pt", map_location="cpu")
    for group, saved_group in zip(optimizer.param_groups, saved["optimizer_state_dict"]["param_groups"]):
        group.update({key: value for key, value in saved_group.items() if key != "params"})
    for state in optimizer.state.values():
        if torch.is_tensor(state.get("step")):
            state["step"] = state["step"].clone()  # one counter per parameter again, as AdamW increments in place


def restore_rest(model: nn.Module, checkpoint: Path, stage: int) -> None:
    """Buffers (BatchNorm statistics) and frozen parameters from the original checkpoint: the universal load
    sets only what the optimizer holds."""
    import deepspeed

    with weights_only_loading():
        if stage == 3:
            from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

            saved = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint.parent), tag=checkpoint.name)
        else:
            files = sorted(checkpoint.glob("mp_rank_*_model_states.pt"))
            saved = torch.load(files[0], map_location="cpu")["module"]
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if name in saved:
                buffer.copy_(saved[name])
        for name, param in model.named_parameters():
            if not param.requires_grad and name in saved:
                with deepspeed.zero.GatheredParameters([param], modifier_rank=0, enabled=stage == 3):
                    param.data.copy_(saved[name])
