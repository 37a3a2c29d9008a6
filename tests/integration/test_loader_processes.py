"""Loader checks that need an interpreter of their own: FFCV changes numba's shared types for the whole process
once it builds a Loader, and a process that cannot import FFCV must never have imported it."""

from __future__ import annotations

import subprocess

from tests.helpers import PYTHON, ROOT, ok

AFTER_FFCV = """
import sys, numpy as np, torch
from visiontrain.config import load_config
from visiontrain.parallel.batch_plan import BatchPlan
from visiontrain.data import build_data, draws, kernels
from visiontrain.data.augment import AsIs, Cutout, Flip, RandomResizedCrop, Recipe, Translate
from visiontrain.data.torch_loader import TrainTransform
from visiontrain.parallel.runtime import Runtime

runtime = Runtime(accelerator=None, device=torch.device("cpu"), rank=0, world_size=1, local_rank=0, launcher="single")
images = [np.arange(16 * 16 * 3, dtype=np.uint8).reshape(16, 16, 3)] * 8
ops = (Flip(), Translate(2, (1, 2, 3)), Cutout(4, (1, 2, 3)))
transforms = [TrainTransform(Recipe(AsIs(16), ops), 0), TrainTransform(Recipe(RandomResizedCrop(8), ops), 0)]
before = [t(images, range(8), 0) for t in transforms]
for os_cache in ("true", "false"):  # FFCV's two memory managers, each changing shared numba types
    build_data(load_config("configs/demo/train.yaml", ["data.loader=ffcv", f"data.path={sys.argv[1]}",
                                                       "data.image_size=16", "data.val_image_size=16",
                                                       f"data.os_cache={os_cache}"]),
               runtime, BatchPlan.of_micro_batch(32))
for kernel in (draws.sample_keys, draws.random_resized_crop, draws.flip_decisions, kernels.flip_batch,
               kernels.translate_batch, kernels.cutout_batch):
    kernel.nopython_signatures  # a KeyError once a type its overloads are keyed by has changed
assert all(torch.equal(t(images, range(8), 0), b) for t, b in zip(transforms, before))
print("kernels intact")
"""


def test_building_an_ffcv_loader_leaves_the_shared_kernels_working(shapes_dir):
    """FFCV 1.0.2 turns numba's shared uint8[::1] and uint64[::1] types read-only when it builds a Loader
    (`draws.frozen` says how that breaks compiled functions); the torchvision loader's kernels, compiled
    before in the same process, must survive it. A fresh process: in this one, FFCV ran already."""
    result = subprocess.run([PYTHON, "-c", AFTER_FFCV, str(shapes_dir)], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0 and "kernels intact" in result.stdout, result.stderr[-3000:]


def test_it_runs_where_ffcv_cannot_be_imported(shapes_dir):
    """From class folders, with FFCV made unimportable (a GPU node without its native libraries)."""
    script = (
        "import sys; sys.modules['ffcv'] = None\n"
        "from tests.helpers import build_loaders, cfg_for, single_cpu_runtime\n"
        f"data = build_loaders(cfg_for({str(shapes_dir)!r}, 'device'), single_cpu_runtime(), 32)\n"
        "data.train.set_epoch(0)\n"
        "print(sum(1 for _ in data.train), 'ffcv' in sys.modules and sys.modules['ffcv'] is not None)\n"
    )
    out = ok(subprocess.run([PYTHON, "-c", script], cwd=ROOT, capture_output=True, text=True)).stdout.split()
    assert out == ["12", "False"]
