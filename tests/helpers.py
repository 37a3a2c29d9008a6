"""Helpers the test modules share: paths, the real entry points (as processes, or in this process), result files,
loader epochs, killing and comparing runs.

Fixtures and hooks live in conftest.py. Heavy imports (torch, FFCV, visiontrain) happen inside the functions,
so that importing this module costs nothing for tests that need none of them.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
# Real images beside the checkout (../shared/datasets), or where VISIONTRAIN_SHARED_DATASETS says.
SHARED_DATASETS = Path(os.environ.get("VISIONTRAIN_SHARED_DATASETS", ROOT.parent / "shared" / "datasets"))


# ----------------------------------------------------------------------------------------- processes
def tiny_args(data_dir: Path, run_dir: Path, *extra: str, loader: str = "torchvision") -> list[str]:
    """train.py arguments for a run of a few seconds on the tiny dataset."""
    return ["-c", "configs/demo/train.yaml", f"data.loader={loader}", f"data.path={data_dir}", f"run.dir={run_dir}",
            "data.image_size=16", "data.val_image_size=16", "data.crop_padding=2", "data.num_workers=0",
            "model.width=8", "train.batch_size=64", "train.epochs=2", "schedule.warmup_epochs=0.5",
            "log.progress_bar=false", "log.every_steps=2", *extra]


def run_train(args: list[str], nproc: int = 1, env: dict | None = None, timeout: float = 300,
              launcher: str = "torchrun") -> subprocess.CompletedProcess:
    """train.py as users start it: one process, torchrun with `nproc` ranks, or `accelerate launch ...`."""
    if nproc == 1 and launcher == "torchrun":
        cmd = [PYTHON, "train.py", *args]
    elif launcher == "torchrun":
        cmd = [PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
               "train.py", *args]
    else:
        cmd = [str(Path(PYTHON).parent / "accelerate"), "launch", *launcher.split()[1:], "train.py", *args]
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    # A session of its own: on timeout the whole group goes (torchrun's ranks and their loader
    # workers), not only the launcher, which would leave the ranks running into the next tests.
    proc = subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    return result


def visiontrain_cli(*args) -> subprocess.CompletedProcess:
    """`python -m visiontrain ARGS` in this process (a fresh interpreter costs seconds): the exit code, stdout and
    stderr that command would give, through the same dispatcher and `run_cli`."""
    from visiontrain.cli import main
    from visiontrain.infra.errors import run_cli

    argv = [str(a) for a in args]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = run_cli(main, argv)
    return subprocess.CompletedProcess(["python", "-m", "visiontrain", *argv], code, out.getvalue(), err.getvalue())


def prep(*args) -> subprocess.CompletedProcess:
    """`python -m visiontrain prep ARGS` in this process."""
    return visiontrain_cli("prep", *args)


def kill_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants at once, as a node failure would.

    torchrun starts each worker in a session of its own, so killing its process group
    would leave the workers running.
    """
    import psutil

    parent = psutil.Process(pid)
    for proc in [parent, *parent.children(recursive=True)]:
        try:
            proc.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass


def train_until(args: list[str], nproc: int, stop_when) -> None:
    """Start train.py, SIGKILL it with all its processes once `stop_when()` is true."""
    cmd = [PYTHON, "train.py", *args] if nproc == 1 else [
        PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), "train.py", *args]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while not stop_when():
        assert proc.poll() is None, f"run ended before the kill point: {proc.stderr.read().decode()[-3000:]}"
        assert time.time() < deadline, "kill point never reached"
        time.sleep(0.02)
    kill_tree(proc.pid)
    proc.wait()


# -------------------------------------------------------------------------------------- run results
def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def checkpoint_logged(run_dir: Path, **match) -> bool:
    """Whether metrics.jsonl already holds a checkpoint event with these fields."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return False
    for line in path.read_text().splitlines():
        if '"checkpoint"' in line and all(f'"{k}": {v}' in line for k, v in match.items()):
            return True
    return False


COMPARED = ("event", "epoch", "step", "lr", "loss", "top1", "top5")


def assert_identical_continuation(reference: Path, resumed: Path) -> None:
    """The resumed run ends with the reference's weights and logs what it logged after the resume point."""
    import torch

    from visiontrain.checkpoint.weights import read_weights

    ref_w, res_w = read_weights(reference / "weights.safetensors"), read_weights(resumed / "weights.safetensors")
    assert all(torch.equal(ref_w[k], res_w[k]) for k in ref_w), "resumed weights differ"
    resume = [e for e in read_jsonl(resumed / "metrics.jsonl") if e["event"] == "resume"]
    assert len(resume) == 1
    after = resume[0]["step"]

    def later(run: Path) -> list[tuple]:
        return [tuple(e[k] for k in COMPARED) for e in read_jsonl(run / "metrics.jsonl")
                if e["event"] in ("train", "epoch", "val") and e["step"] > after]

    assert later(reference) and later(resumed) == later(reference)


# ------------------------------------------------------------------------------------------- loaders
def single_cpu_runtime():
    """The runtime of one process on the CPU, without a launcher."""
    import torch

    from visiontrain.parallel.runtime import Runtime

    return Runtime(accelerator=None, device=torch.device("cpu"), rank=0, world_size=1, local_rank=0,
                   launcher="single")


def build_loaders(cfg, runtime, micro_batch: int):
    """The loaders of `cfg` for this runtime, `micro_batch` images per batch, no accumulation."""
    from visiontrain.data import build_data
    from visiontrain.parallel.batch_plan import BatchPlan

    return build_data(cfg, runtime, BatchPlan.of_micro_batch(micro_batch, runtime.world_size))


def cfg_for(path, loader: str, *extra: str):
    """The demo config reading the 16x16 images at `path` through `loader`, seed 5, one loader worker."""
    from visiontrain.config import load_config

    return load_config("configs/demo/train.yaml", [
        f"data.loader={loader}", f"data.path={path}", "data.image_size=16", "data.val_image_size=16",
        "data.num_workers=1", "run.seed=5", *extra])


def epoch(path, loader: str, *extra: str, number: int = 1, start: int = 0, batch: int = 32) -> list:
    """The training batches (images) of epoch `number` from batch `start` on, one process on the CPU."""
    train = build_loaders(cfg_for(path, loader, *extra), single_cpu_runtime(), batch).train
    train.set_epoch(number, start)
    return [images.clone() for images, _ in train]


def identical(a: list, b: list) -> bool:
    """Two non-empty lists of tensors, equal element by element."""
    import torch

    return len(a) == len(b) > 0 and all(torch.equal(x, y) for x, y in zip(a, b))


def read_beton(path: Path, size: int | None = None):
    """(images N x H x W x 3 uint8, labels) of a .beton in file order; `size` centre-crops+resizes."""
    import numpy as np
    from ffcv.fields.basics import IntDecoder
    from ffcv.fields.rgb_image import CenterCropRGBImageDecoder, SimpleRGBImageDecoder
    from ffcv.loader import Loader, OrderOption

    decoder = SimpleRGBImageDecoder() if size is None else CenterCropRGBImageDecoder((size, size), ratio=1.0)
    loader = Loader(str(path), batch_size=50, num_workers=1, order=OrderOption.SEQUENTIAL, drop_last=False,
                    pipelines={"image": [decoder], "label": [IntDecoder()]})
    images, labels = [], []
    for batch_images, batch_labels in loader:
        images.append(np.array(batch_images))
        labels.append(np.array(batch_labels).reshape(-1))
    return np.concatenate(images), np.concatenate(labels)


def ffcv_write(out: Path, dataset, image_name: str = "image", label_name: str = "label", **image_options) -> None:
    """A .beton written by FFCV's own DatasetWriter, as ffcv-imagenet's and FFCV's CIFAR scripts write theirs."""
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    writer = DatasetWriter(str(out), {image_name: RGBImageField(**image_options), label_name: IntField()},
                           num_workers=2)
    writer.from_indexed_dataset(dataset)
