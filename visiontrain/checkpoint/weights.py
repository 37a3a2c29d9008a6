"""Plain weights: state dicts as safetensors files, loadable without this package's classes, and the one
reader that turns a run directory or a weights file into a state dict (`read_state_dict`).

`export_run` consolidates a run's newest readable checkpoint (ours, or a DeepSpeed
directory at any ZeRO stage) into weights.safetensors (+ weights_ema.safetensors);
it is what `python -m visiontrain checkpoint export RUN_DIR [--out FILE]` runs.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
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
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DDP / DeepSpeed and torch.compile
HUB_PREFIX = "hf-hub:"
# What a Hugging Face model snapshot (timm's layout) holds, in the order they are looked for.
SNAPSHOT_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


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


def read_state_dict(source: str | Path, use_ema: bool = False, key: str = "finetune.init_from"
                    ) -> tuple[dict[str, torch.Tensor], str]:
    """(state dict, the file or checkpoint it came from) of a run directory (weights.safetensors, else the
    newest readable checkpoint: ours or DeepSpeed's at any ZeRO stage; EMA weights with `use_ema`), a
    Hugging Face model snapshot folder (model.safetensors, else pytorch_model.bin; its config.json is not read),
    `hf-hub:<org>/<name>` found in the local Hugging Face cache (never downloaded), a .safetensors file
    or a PyTorch state dict (.pth/.pt/.bin, read with weights_only). The one reader of weights for
    fine-tuning, evaluation, export and prediction. Parameter names lose the prefixes DDP, DeepSpeed and
    torch.compile add. Raises UsageError with one line; `key` names the option in it.
    """
    shown = f"{key}={source!r}"
    path = snapshot_in_cache(str(source)[len(HUB_PREFIX):], shown) if str(source).startswith(HUB_PREFIX) \
        else Path(source)
    key = shown
    if not path.exists():
        raise UsageError(f"{key} does not exist: give a run directory, a .safetensors file, a PyTorch state dict "
                         f"(.pth), a Hugging Face snapshot folder or hf-hub:<org>/<name>")
    if path.is_dir() and snapshot_weights(path) is not None:
        if use_ema:
            raise UsageError(f"finetune.use_ema=true reads a run directory's EMA weights; {key} is a model snapshot")
        path = snapshot_weights(path)
    elif path.is_dir():
        weights, origin = _from_run_dir(path, use_ema, key)
        return _without_wrapper_prefixes(weights), origin
    if use_ema:
        raise UsageError(f"finetune.use_ema=true reads a run directory's EMA weights, but {key} is a file; "
                         f"point finetune.init_from at weights_ema.safetensors instead")
    if path.suffix == ".safetensors":
        return _without_wrapper_prefixes(_read_safetensors(path, key)), str(path)
    if path.suffix in (".pth", ".pt", ".bin"):
        return _without_wrapper_prefixes(_read_torch(path, key)), str(path)
    raise UsageError(f"{key} has an unknown file type {path.suffix!r}: allowed .safetensors, .pth, .pt, .bin")


def snapshot_weights(folder: Path) -> Path | None:
    """The weights file of a Hugging Face model snapshot folder, or None if it is not one."""
    return next((folder / name for name in SNAPSHOT_WEIGHTS if (folder / name).is_file()), None)


def hub_cache_dir() -> Path:
    """Where Hugging Face keeps downloaded models, read from the environment now: HF_HUB_CACHE, else
    $HF_HOME/hub, else $XDG_CACHE_HOME/huggingface/hub (~/.cache/huggingface/hub)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface")
    return Path(home) / "hub"


def snapshot_in_cache(repo_id: str, key: str) -> Path:
    """The folder of `repo_id`'s snapshot in the local Hugging Face cache; never a download (the run may be on
    a node without network, and an unasked download is an unrecorded input)."""
    from huggingface_hub import try_to_load_from_cache

    cache = hub_cache_dir()
    for name in SNAPSHOT_WEIGHTS:
        found = try_to_load_from_cache(repo_id, name, cache_dir=str(cache))
        if isinstance(found, str):
            return Path(found).parent
    raise UsageError(f"{key}: {repo_id} is not in the local Hugging Face cache {cache} (HF_HUB_CACHE / HF_HOME); "
                     f"download it where there is network (hf download {repo_id}) and copy the cache here, "
                     f"or point at the snapshot folder")


def _from_run_dir(run_dir: Path, use_ema: bool, key: str) -> tuple[dict[str, torch.Tensor], str]:
    exported = run_dir / ("weights_ema.safetensors" if use_ema else "weights.safetensors")
    if exported.is_file():
        return _read_safetensors(exported, key), str(exported)
    store = CheckpointStore(run_dir, keep_last=1)
    candidates = store.candidates() if store.dir.is_dir() else []
    if not candidates:
        raise UsageError(f"{key} is a directory with neither {exported.name} nor checkpoints/; "
                         f"is it a run directory?")
    found = newest_consolidated_weights(store)
    if found is None:
        raise UsageError(f"{key}: no readable checkpoint in {store.dir}")
    weights, ema, checkpoint = found
    if use_ema and ema is None:
        raise UsageError(f"finetune.use_ema=true but {checkpoint} has no EMA weights "
                         f"(the run did not set train.ema=true)")
    return (ema if use_ema else weights), str(checkpoint)


def _read_safetensors(path: Path, key: str) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise UsageError(f"{key} is not a readable .safetensors file: {str(err).splitlines()[0]}") from None


def _read_torch(path: Path, key: str) -> dict[str, torch.Tensor]:
    try:
        loaded: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip and weights_only refusals all land here
        raise UsageError(f"{key} is not a readable PyTorch state dict: {str(err).splitlines()[0]}") from None
    # A training checkpoint wraps the state dict; torchvision's files are the state dict.
    for wrapper in ("model", "state_dict"):
        if isinstance(loaded, dict) and isinstance(loaded.get(wrapper), dict):
            loaded = loaded[wrapper]
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise UsageError(f"{key} holds no state dict (a mapping of names to tensors)")
    return loaded


def _without_wrapper_prefixes(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    def strip(name: str) -> str:
        for prefix in _WRAPPER_PREFIXES:
            while name.startswith(prefix):
                name = name[len(prefix):]
        return name

    return {strip(k): v for k, v in weights.items()}
