"""Shared fixtures: a tiny generated dataset, and helpers that run the real entry points."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
# Real images beside the checkout (../shared/datasets), or where VISIONTRAIN_SHARED_DATASETS says.
SHARED_DATASETS = Path(os.environ.get("VISIONTRAIN_SHARED_DATASETS", ROOT.parent / "shared" / "datasets"))


@pytest.fixture(autouse=True)
def _signal_handlers_restored():
    """Training in this process installs SIGTERM/SIGUSR1 handlers: a test that leaves them behind would
    change how later tests' child processes stop."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGUSR1)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory) -> Path:
    """10 classes x (40 train + 11 val) generated 16x16 images (an odd val count on purpose),
    as image folders and as train.beton/val.beton in the same directory."""
    out = tmp_path_factory.mktemp("data") / "shapes"
    subprocess.run([PYTHON, "-m", "visiontrain", "prep", "synthetic", "--out", str(out), "--train-per-class", "40",
                    "--val-per-class", "11", "--size", "16", "--beton", "--workers", "2"],
                   check=True, cwd=ROOT, capture_output=True)
    return out


def _shared(name: str) -> Path:
    path = SHARED_DATASETS / name
    if not path.is_file():
        pytest.skip(f"shared dataset {path} is missing: these tests read real images from it")
    return path


@pytest.fixture(scope="session")
def cifar_slice(tmp_path_factory) -> Path:
    """30 real CIFAR-10 training JPEGs per class: `<dir>/train/<class>/*.jpg`."""
    out = tmp_path_factory.mktemp("cifar_slice")
    with tarfile.open(_shared("cifar10-train-jpeg.tar.gz")) as tar:
        members = [m for m in tar if m.isfile() and Path(m.name).name < "0030.jpg"]
        tar.extractall(out, members=members, filter="data")
    return out


@pytest.fixture(scope="session")
def cifar_2000(tmp_path_factory) -> Path:
    """2,000 real CIFAR-10 training JPEGs (200 per class) in train/ and 200 others in val/ (20 per class)."""
    out = tmp_path_factory.mktemp("cifar_2000")
    with tarfile.open(_shared("cifar10-train-jpeg.tar.gz")) as tar:
        for member in tar:
            name = Path(member.name)
            if member.isfile() and name.name < "0220.jpg":
                split = "train" if name.name < "0200.jpg" else "val"
                member.name = f"{split}/{name.parent.name}/{name.name}"
                tar.extract(member, out, filter="data")
    return out


@pytest.fixture(scope="session")
def imagenet_sample(tmp_path_factory) -> Path:
    """200 real ImageNet photos, one per class: `<dir>/<wnid>/<wnid>_<name>.JPEG`."""
    out = tmp_path_factory.mktemp("imagenet")
    with tarfile.open(_shared("imagenet-sample-200.tar")) as tar:
        tar.extractall(out, filter="data")
    return out / "imagenet-sample"


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


def build_loaders(cfg, runtime, micro_batch: int):
    """The loaders of `cfg` for this runtime, `micro_batch` images per batch, no accumulation."""
    from visiontrain.config import BatchPlan
    from visiontrain.data import build_data

    return build_data(cfg, runtime, BatchPlan.of_micro_batch(micro_batch, runtime.world_size))


def tiny_args(data_dir: Path, run_dir: Path, *extra: str, loader: str = "torchvision") -> list[str]:
    """train.py arguments for a run of a few seconds on the tiny dataset."""
    return ["-c", "configs/demo/train.yaml", f"data.loader={loader}", f"data.path={data_dir}", f"run.dir={run_dir}",
            "data.image_size=16", "data.val_image_size=16", "data.crop_padding=2", "data.num_workers=0",
            "model.width=8", "train.batch_size=64", "train.epochs=2", "schedule.warmup_epochs=0.5",
            "log.progress_bar=false", "log.every_steps=2", *extra]


def run_train(args: list[str], nproc: int = 1, env: dict | None = None, timeout: float = 300,
              launcher: str = "torchrun") -> subprocess.CompletedProcess:
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


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def pytest_report_header(config) -> list[str]:
    """The software the suite ran with, next to the lock it should match (make setup installs the lock)."""
    from importlib import metadata

    from visiontrain.infra.pinned_versions import differences_from_lock

    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "missing"

    names = ("torch", "torchvision", "numpy", "ffcv", "deepspeed", "accelerate", "submitit", "onnxruntime")
    packages = ", ".join(f"{name} {version(name)}" for name in names)
    differs = differences_from_lock(include_missing=True)
    lock = ("no lock file" if differs is None else "installed as locked" if not differs
            else "DIFFERS FROM THE LOCK: " + ", ".join(f"{n} {d['installed']} (locked {d['locked']})"
                                                        for n, d in sorted(differs.items())))
    return [f"packages: {packages}", f"requirements/constraints.txt: {lock}"]
