"""Fixtures (a tiny generated dataset, slices of real images) and hooks: the requires_* markers skip, with
the reason, where this machine lacks what a test needs. Helpers the test modules share are in tests/helpers.py."""

from __future__ import annotations

import os
import shutil
import signal
import tarfile
from pathlib import Path

import pytest

from tests.helpers import SHARED_DATASETS, ok, prep

# The daemons and tools of the SLURM test cluster (scripts/slurm_cluster.sh; make setup-dev installs them).
SLURM_TOOLS = ("slurmctld", "slurmd", "munged", "sbatch", "ip", "nsenter")


def _lacks_root() -> str | None:
    if os.geteuid() != 0:
        return "NOT RUN: needs root, which this process is not (CI runs the suite as root)"
    return None


def _lacks_slurm() -> str | None:
    missing = [tool for tool in SLURM_TOOLS if shutil.which(tool) is None]
    if missing:
        return f"SLURM TESTS NOT RUN: {', '.join(missing)} not installed (make setup-dev installs them)"
    return None


def _lacks_gpu() -> str | None:
    import torch

    return None if torch.cuda.is_available() else "NOT RUN without a CUDA device"


REQUIREMENTS = {"requires_root": _lacks_root, "requires_slurm": _lacks_slurm, "requires_gpu": _lacks_gpu}


@pytest.hookimpl(trylast=True)  # after folder conftests (tests/slurm/) have added their markers
def pytest_collection_modifyitems(config, items) -> None:
    """Skip, naming what is missing, the tests marked requires_root / requires_slurm / requires_gpu that this
    machine cannot run: a contributor without root, SLURM or a GPU sees skips with the reason, never failures."""
    reasons: dict[str, str | None] = {}
    for item in items:
        for name, lacks in REQUIREMENTS.items():
            if item.get_closest_marker(name) is None:
                continue
            if name not in reasons:
                reasons[name] = lacks()
            if reasons[name]:
                item.add_marker(pytest.mark.skip(reason=reasons[name]))


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
    # In this process: an interpreter of its own would cost each test process seconds of imports.
    ok(prep("synthetic", "--out", out, "--train-per-class", "40", "--val-per-class", "11", "--size", "16", "--beton",
            "--workers", "2"))
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


@pytest.fixture
def folder_with_bad_files(cifar_slice, tmp_path) -> Path:
    """The CIFAR-10 slice as class folders, with a truncated JPEG in cat/ and a text file in dog/."""
    root = tmp_path / "data"
    shutil.copytree(cifar_slice / "train", root)
    victim = sorted((root / "cat").iterdir())[3]
    victim.write_bytes(victim.read_bytes()[:200])  # a truncated JPEG
    (root / "dog" / "notes.txt").write_text("not an image")
    return root


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
