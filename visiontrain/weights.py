"""Plain weights: state dicts as safetensors files, loadable without this package's classes.

`export_run` consolidates a run's newest readable checkpoint (ours, or a DeepSpeed
directory at any ZeRO stage) into weights.safetensors (+ weights_ema.safetensors);
it is what `python -m visiontrain.checkpoint export RUN_DIR [--out FILE]` runs.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from visiontrain import fileio
from visiontrain.checkpoint import CheckpointStore, CorruptCheckpoint, load_checkpoint, read_manifest
from visiontrain.errors import UsageError

log = logging.getLogger(__name__)


def plain_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU copies: what safetensors and torchvision models accept."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in module.state_dict().items()}


def export_weights(state_dict: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    with fileio.atomic_path(path) as tmp:
        save_file(state_dict, str(tmp), metadata=metadata)


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def consolidated_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
    """(weights, EMA weights or None) of one checkpoint, in one process, whatever wrote it."""
    if path.is_file():
        state = load_checkpoint(path)
        ema = state.get("ema")
        return state["model"], ({k[len("module."):]: v for k, v in ema.items() if k.startswith("module.")}
                                if ema else None)
    manifest = read_manifest(path)
    # DeepSpeed's own files: read with DeepSpeed's loaders (they hold DeepSpeed objects, not only tensors).
    model_states = path / "mp_rank_00_model_states.pt"
    client = {}
    if model_states.is_file():
        client = torch.load(model_states, map_location="cpu", weights_only=False)
    if manifest["zero_stage"] == 0:
        weights = client["module"]
    else:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        weights = get_fp32_state_dict_from_zero_checkpoint(str(path.parent), tag=path.name)
        if not client:
            client = torch.load(path / "zero_pp_rank_0_mp_rank_00_model_states.pt", map_location="cpu",
                                weights_only=False)
    ema = client.get("visiontrain", {}).get("ema")
    return ({k: v.contiguous() for k, v in weights.items()},
            {k[len("module."):]: v for k, v in ema.items() if k.startswith("module.")} if ema else None)


def export_run(run_dir: Path, out: Path | None = None) -> Path:
    """Write weights.safetensors (and weights_ema.safetensors) from a run's newest readable checkpoint."""
    store = CheckpointStore(run_dir, keep_last=1)
    candidates = store.candidates()
    if not candidates:
        raise UsageError(f"{run_dir} holds no checkpoints (expected {run_dir}/checkpoints/step_*)")
    out = Path(out) if out else Path(run_dir) / "weights.safetensors"
    for path in candidates:
        try:
            weights, ema = consolidated_weights(path)
        except CorruptCheckpoint as err:
            log.warning("%s; trying the previous checkpoint", err)
            continue
        export_weights(weights, out, {"checkpoint": str(path)})
        if ema is not None:
            export_weights(ema, out.with_name(out.stem + "_ema.safetensors"), {"checkpoint": str(path)})
        return out
    raise UsageError(f"no readable checkpoint in {store.dir}")
