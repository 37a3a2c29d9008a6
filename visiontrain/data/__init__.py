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


def build_data(cfg: Config, runtime: Runtime, plan: BatchPlan, train: bool = True,
               eval_split: str = "val") -> DataBundle:
    """Loaders for this rank, reading `plan.micro_batch` images per batch; `train=False` builds the eval
    loader only (python -m visiontrain evaluate). `eval_split="train"` (with train=False): the eval loader
    reads the training split's images (the data.classes / data.train_fraction selection of them) through the
    evaluation preprocessing, as int8 calibration wants. Torch's thread count is the decided one afterwards,
    whatever a loader's imports did to it (importing FFCV sets 1)."""
    from visiontrain.infra.errors import UsageError
    from visiontrain.parallel import threads

    if eval_split not in ("val", "train") or (eval_split == "train" and train):
        raise ValueError(f"eval_split={eval_split!r} with train={train}")
    if eval_split == "train" and cfg.data.loader == "random":
        raise UsageError("data.loader=random has no training images to read; give image files instead")
    bundle = _build(cfg, runtime, plan, train, eval_split)
    threads.restore()
    return bundle


def _build(cfg: Config, runtime: Runtime, plan: BatchPlan, train: bool, eval_split: str) -> DataBundle:
    # Each loader's heavy imports (FFCV's native libraries, numba, OpenCV) only when it is asked for.
    if cfg.data.loader == "random":
        from visiontrain.data.random_loader import build_random_data

        return build_random_data(cfg, runtime, plan)
    if cfg.data.loader == "device" and eval_split == "val":
        from visiontrain.data.device_loader import build_device_data

        return build_device_data(cfg, runtime, plan, train)
    if cfg.data.loader in ("ffcv", "device"):  # the same .beton files and pixels (the device loader's contract)
        from visiontrain.data.ffcv_loader import build_ffcv_data

        return build_ffcv_data(cfg, runtime, plan, train, eval_split)
    from visiontrain.data.torch_loader import build_torchvision_data

    return build_torchvision_data(cfg, runtime, plan, train, eval_split)
