"""Train and eval loaders for one rank, behind one interface (`base.py`) for every `data.loader`.

Where to change what:
- augmentation: `augment.py`, the recipes described once; every image loader is built from them;
- loaders: `ffcv_loader.py` (.beton files; FFCV operations in `ffcv_ops.py`), `torch_loader.py`
  (image folders, CIFAR-10 batches, through a torch DataLoader), `device_loader.py` (the whole dataset
  in device memory, augmented there), `random_loader.py` (data.loader=random: tensors made on the device);
- reading datasets (which files of a class folder are samples, CIFAR-10's batches, image decoding):
  `sources.py`, shared by the torchvision and device loaders and the writers;
- random draws of augmentation, shared by all three image loaders: `draws.py`; the numba pixel kernels
  (flip, translate, cutout) both file loaders run: `kernels.py`; evaluation pixels: `preprocess.py`;
- data order and rank split: `sampling.py`; part of a dataset (classes, fraction): `subset.py`;
- uint8 -> normalized float on a CPU device (`DeviceNormalizer`, `base.py`): `cpu_normalize.py`;
- writing datasets (`visiontrain prep`: .beton files, meta.json): `prep/`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

# Types only: `visiontrain prep` (data/prep/) and the dataset readers import this package without torch.
if TYPE_CHECKING:
    from visiontrain.config import Config
    from visiontrain.data.base import DataBundle
    from visiontrain.parallel.batch_plan import BatchPlan
    from visiontrain.parallel.runtime import Runtime

__all__ = ["build_data"]


def build_data(cfg: Config, runtime: Runtime, plan: BatchPlan, train: bool = True) -> DataBundle:
    """Loaders for this rank, reading `plan.micro_batch` images per batch; `train=False` builds the eval
    loader only (python -m visiontrain evaluate). Torch's thread count is the decided one afterwards,
    whatever a loader's imports did to it (importing FFCV sets 1)."""
    from visiontrain.parallel import threads

    bundle = _build(cfg, runtime, plan, train)
    threads.restore()
    return bundle


def _build(cfg: Config, runtime: Runtime, plan: BatchPlan, train: bool) -> DataBundle:
    # Each loader's heavy imports (FFCV's native libraries, numba, OpenCV) only when it is asked for.
    if cfg.data.loader == "random":
        from visiontrain.data.random_loader import build_random_data

        return build_random_data(cfg, runtime, plan)
    if cfg.data.loader == "device":
        from visiontrain.data.device_loader import build_device_data

        return build_device_data(cfg, runtime, plan, train)
    if cfg.data.loader == "ffcv":
        from visiontrain.data.ffcv_loader import build_ffcv_data

        return build_ffcv_data(cfg, runtime, plan, train)
    from visiontrain.data.torch_loader import build_torchvision_data

    return build_torchvision_data(cfg, runtime, plan, train)
