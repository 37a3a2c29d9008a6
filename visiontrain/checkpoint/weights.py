"""Plain weights: state dicts as safetensors files, loadable without this package's classes.

`export_run` consolidates a run's newest readable checkpoint (ours, or a DeepSpeed
directory at any ZeRO stage) into weights.safetensors (+ weights_ema.safetensors);
it is what `python -m visiontrain checkpoint export RUN_DIR [--out FILE]` runs.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from visiontrain.checkpoint import (
    CheckpointStore,
    CorruptCheckpoint,
    load_checkpoint,
    read_manifest,
    weights_only_loading,
)
from visiontrain.infra import fileio
from visiontrain.infra.errors import UsageError

log = logging.getLogger(__name__)


def plain_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU copies: what safetensors and torchvision models accept."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in module.state_dict().items()}


def export_weights(state_dict: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    # safetensors stores dense row-major tensors: channels-last weights are repacked.
    tensors = {name: tensor.detach().to("cpu").contiguous() for name, tensor in state_dict.items()}
    with fileio.atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


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
    try:
        with weights_only_loading():
            weights, client = _deepspeed_weights(path, int(manifest["zero_stage"]))
    except Exception as err:  # a refused object, a truncated or missing shard: unusable either way
        raise CorruptCheckpoint(f"checkpoint {path} is unreadable ({type(err).__name__}: "
                                f"{str(err).splitlines()[0] if str(err) else 'no detail'})") from None
    ema = client.get("visiontrain", {}).get("ema")
    return ({k: v.contiguous() for k, v in weights.items()},
            {k[len("module."):]: v for k, v in ema.items() if k.startswith("module.")} if ema else None)


def _deepspeed_weights(path: Path, stage: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(fp32 weights, client state) of a DeepSpeed checkpoint directory, read with DeepSpeed's own readers."""
    model_states = path / "mp_rank_00_model_states.pt"
    if not model_states.is_file():  # ZeRO-3 names it per rank
        model_states = path / "zero_pp_rank_0_mp_rank_00_model_states.pt"
    client = torch.load(model_states, map_location="cpu", weights_only=True)
    if stage == 0:
        return client["module"], client
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(str(path.parent), tag=path.name), client


def newest_consolidated_weights(store: CheckpointStore) -> tuple[dict, dict | None, Path] | None:
    """(weights, EMA weights or None, checkpoint) of the newest checkpoint that reads; unreadable ones are
    skipped with a warning naming them. None if no checkpoint reads."""
    for path in store.candidates():
        try:
            weights, ema = consolidated_weights(path)
        except CorruptCheckpoint as err:
            log.warning("%s; trying the previous checkpoint", err)
            continue
        return weights, ema, path
    return None


def export_run(run_dir: Path, out: Path | None = None) -> Path:
    """Write weights.safetensors (and weights_ema.safetensors) from a run's newest readable checkpoint."""
    if not Path(run_dir).is_dir():
        raise UsageError(f"run directory {run_dir} does not exist")
    store = CheckpointStore(run_dir, keep_last=1)
    candidates = store.candidates()
    if not candidates:
        raise UsageError(f"{run_dir} holds no checkpoints (expected {run_dir}/checkpoints/step_*)")
    out = Path(out) if out else Path(run_dir) / "weights.safetensors"
    found = newest_consolidated_weights(store)
    if found is not None:
        weights, ema, path = found
        export_weights(weights, out, {"checkpoint": str(path)})
        if ema is not None:
            export_weights(ema, out.with_name(out.stem + "_ema.safetensors"), {"checkpoint": str(path)})
        return out
    raise UsageError(f"no readable checkpoint in {store.dir}")
