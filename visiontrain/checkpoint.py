"""Atomic checkpoint files, auto-resume with fallback, and export of plain weights.

Layout under `<run dir>/checkpoints/`: `step_000001234.pt` (the last `keep_last`
periodic checkpoints) and `best.pt` (highest val top-1); under DeepSpeed the same names
without `.pt` are DeepSpeed's sharded checkpoint directories. Every checkpoint is
written under a temporary name and renamed, so a crash never leaves a half checkpoint
under a final name. Our files load with `torch.load(weights_only=True)`: a checkpoint
is never unpickled as code (DeepSpeed's directories are read by DeepSpeed).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file

from visiontrain.errors import UsageError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
_STEP_ENTRY = re.compile(r"^step_(\d+)(\.pt)?$")


class CorruptCheckpoint(Exception):
    pass


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_replace(tmp: Path, final: Path) -> None:
    """Durably move a finished temporary file to its final name, with the usual permissions."""
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.chmod(tmp, 0o666 & ~_umask())  # some writers (safetensors) create files 0600
    os.replace(tmp, final)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint dict; `CorruptCheckpoint` naming the file if it cannot be read."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, foreign pickle, bit rot: all mean "unusable"
        raise CorruptCheckpoint(f"checkpoint {path} is unreadable ({type(err).__name__}: "
                                f"{str(err).splitlines()[0] if str(err) else 'no detail'})") from None
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise CorruptCheckpoint(f"checkpoint {path} is not a visiontrain checkpoint (format {FORMAT_VERSION})")
    return state


class CheckpointStore:
    def __init__(self, run_dir: Path, keep_last: int):
        self.dir = Path(run_dir) / "checkpoints"
        self.keep_last = keep_last

    @property
    def best_path(self) -> Path:
        return self.dir / "best.pt"

    def best_entry(self) -> Path | None:
        """best.pt (a file) or best (a DeepSpeed directory), if there is one."""
        for path in (self.best_path, self.dir / "best"):
            if path.exists():
                return path
        return None

    def periodic(self) -> list[Path]:
        """Periodic checkpoints (files or directories), newest first."""
        if not self.dir.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.dir.iterdir() if (m := _STEP_ENTRY.match(p.name))]
        return [p for _, p in sorted(found, reverse=True)]

    def has_any(self) -> bool:
        return bool(self.periodic()) or self.best_entry() is not None

    def candidates(self) -> list[Path]:
        """Every checkpoint to try on resume, newest step first (best placed by its step)."""
        entries = self.periodic()
        best = self.best_entry()
        if best is not None:
            entries.append(best)
        return sorted(entries, key=_step_of, reverse=True)

    def save(self, state: dict[str, Any], step: int, periodic: bool, best: bool) -> Path | None:
        """Write `state` as the step's periodic checkpoint and/or as best.pt; prune old ones."""
        if not (periodic or best):
            return None
        self.dir.mkdir(parents=True, exist_ok=True)
        state = {"format_version": FORMAT_VERSION, **state}
        final = self.dir / f"step_{step:09d}.pt" if periodic else self.best_path
        tmp = final.with_name(f".{final.name}.tmp{os.getpid()}")
        try:
            torch.save(state, tmp)
            if periodic and best:
                # One write, two names: hard-link the finished file as best.pt.
                best_tmp = self.best_path.with_name(f".best.pt.tmp{os.getpid()}")
                best_tmp.unlink(missing_ok=True)
                os.link(tmp, best_tmp)
                os.replace(best_tmp, self.best_path)
            _fsync_replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        self._prune()
        return final

    def commit_dir(self, tmp: Path, step: int, periodic: bool, best: bool) -> Path:
        """Move a finished checkpoint directory into place (as step_N and/or best); prune old ones."""
        final = self.dir / f"step_{step:09d}" if periodic else self.dir / "best"
        if best:
            staged = self.dir / ".best.tmp"
            shutil.rmtree(staged, ignore_errors=True)
            shutil.copytree(tmp, staged, copy_function=os.link)  # hard links: no second copy on disk
            _replace_dir(staged, self.dir / "best")
        if periodic:
            _replace_dir(tmp, final)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
        self._prune()
        return final

    def _prune(self) -> None:
        for old in self.periodic()[self.keep_last:]:
            shutil.rmtree(old) if old.is_dir() else old.unlink(missing_ok=True)

    def load_latest(self, loader: Callable[[Path], dict[str, Any]] = None,
                    agree: Callable[[bool], bool] = lambda ok: ok) -> tuple[dict[str, Any], Path] | None:
        """The newest loadable checkpoint, or None if there are none.

        `loader` reads (and may apply) one checkpoint, raising CorruptCheckpoint; `agree`
        combines every rank's success, so that all ranks fall back together. Unreadable
        checkpoints are skipped with a warning naming them; if none is readable the run
        cannot continue, which is a UsageError naming them all.
        """
        loader = loader or load_checkpoint
        candidates = self.candidates()
        if not candidates:
            return None
        bad = []
        for path in candidates:
            state, error = None, None
            try:
                state = loader(path)
            except CorruptCheckpoint as err:
                error = err
            if agree(error is None):
                return state, path
            bad.append(path)
            log.warning("%s; falling back to the previous checkpoint", error or f"checkpoint {path} is unreadable on "
                        "another rank")
        raise UsageError(
            f"no readable checkpoint in {self.dir} (unreadable: {', '.join(str(p) for p in bad)}); "
            "move them away to start over, or use another run.dir"
        )


def _replace_dir(src: Path, dst: Path) -> None:
    """Rename a directory over another: the old one is moved aside first, then removed."""
    aside = dst.with_name(f".{dst.name}.old")
    shutil.rmtree(aside, ignore_errors=True)
    if dst.exists():
        os.replace(dst, aside)
    os.replace(src, dst)
    shutil.rmtree(aside, ignore_errors=True)


def _step_of(path: Path) -> int:
    match = _STEP_ENTRY.match(path.name)
    if match:
        return int(match.group(1))
    try:  # best: its step is recorded inside; an unreadable one sorts last
        if path.is_dir():
            return int(json.loads((path / "visiontrain.json").read_text())["step"])
        return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["trainer"]["step"])
    except Exception:
        return -1


def plain_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU copies: what safetensors and torchvision models accept."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in module.state_dict().items()}


def export_weights(state_dict: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        save_file(state_dict, str(tmp), metadata=metadata)
        _fsync_replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def consolidated_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
    """(weights, EMA weights or None) of one checkpoint, in one process, whatever wrote it."""
    if path.is_file():
        state = load_checkpoint(path)
        ema = state.get("ema")
        return state["model"], ({k[len("module."):]: v for k, v in ema.items() if k.startswith("module.")}
                                if ema else None)
    try:
        manifest = json.loads((path / "visiontrain.json").read_text())
    except (OSError, json.JSONDecodeError):
        raise CorruptCheckpoint(f"checkpoint {path} is unreadable (no visiontrain.json)") from None
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


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m visiontrain.checkpoint")
    sub = parser.add_subparsers(dest="command", required=True)
    export = sub.add_parser("export", help="consolidate a run's newest checkpoint into weights.safetensors")
    export.add_argument("run_dir", type=Path)
    export.add_argument("--out", type=Path, help="default: RUN_DIR/weights.safetensors")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(f"wrote {export_run(args.run_dir, args.out)}")
    return 0


if __name__ == "__main__":
    import sys

    from visiontrain.errors import run_cli

    sys.exit(run_cli(main))
