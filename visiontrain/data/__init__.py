"""Train and eval loaders for one rank, behind one interface (`base.py`) for every `data.loader`.

Where to change what:
- augmentation: `augment.py`, the recipes described once; both file loaders are built from them;
- loaders: `ffcv.py` (.beton files; FFCV operations in `ffcv_ops.py`), `torchvision.py`
  (image folders, CIFAR-10 batches), `device.py` (the whole dataset in device memory, augmented there),
  `random_tensors.py` (data.loader=random: tensors made on the device);
- random draws of augmentation, shared by both file loaders: `seeded.py`;
- data order and rank split: `sampling.py`; part of a dataset (classes, fraction): `subset.py`;
- uint8 -> normalized float on a CPU device (`DeviceNormalizer`, `base.py`): `cpu_normalize.py`.
"""

from __future__ import annotations

from visiontrain.config import BatchPlan, Config
from visiontrain.data.base import DataBundle
from visiontrain.parallel.dist import Runtime

__all__ = ["DataBundle", "build_data"]


def build_data(cfg: Config, runtime: Runtime, plan: BatchPlan, train: bool = True) -> DataBundle:
    """Loaders for this rank, reading `plan.micro_batch` images per batch; `train=False` builds the eval
    loader only (python -m visiontrain evaluate)."""
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
