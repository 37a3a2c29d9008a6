"""Data-loader throughput: the FFCV loader against the torchvision loader.

Both loaders are built by `build_data`, exactly as train.py builds them, with the same
images, recipe, output (float, normalized, channels-last) and worker count, and are
timed in alternating epochs (the first epoch of each, with FFCV's compilation, is
excluded). Workloads:
- imagenet: the shared 200 ImageNet photos replicated to N samples; training pipeline
  (random-resized-crop + flip) at each resolution. FFCV reads a .beton written with
  --max-res 256 --write-mode jpg; torchvision reads the same 256-px JPEGs as files
  (and, for reference, the original photos).
- cifar10: the shared CIFAR-10 training JPEGs as 32x32 raw pixels; flip + translate.
  FFCV reads a raw .beton, torchvision the same pixels as CIFAR-10 python batches.
"""

from __future__ import annotations

import os
import pickle
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from visiontrain import fileio
from visiontrain.config import BatchPlan, load_config
from visiontrain.data import build_data
from visiontrain.dist import Runtime
from visiontrain.errors import UsageError

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def _runtime() -> Runtime:
    return Runtime(accelerator=None, device=torch.device("cuda" if torch.cuda.is_available() else "cpu"),
                   rank=0, world_size=1, local_rank=0, launcher="single")


def _prep(*args: str) -> None:
    result = subprocess.run([sys.executable, "-m", "data_prep", *args], capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"data_prep {args[0]} failed: {result.stderr[-2000:]}")


def prepare_imagenet(shared: Path, work: Path, samples: int, workers: int) -> dict[str, Path]:
    """Folders of originals and of 256-px JPEGs (both replicated to `samples`) and the .beton."""
    ready = work / "imagenet.ready"
    paths = {"originals": work / "imagenet_originals", "resized": work / "imagenet_resized",
             "ffcv": work / "imagenet_ffcv"}
    if ready.is_file():
        return paths
    photos = work / "imagenet_photos"
    if not photos.is_dir():
        with tarfile.open(shared / "imagenet-sample-200.tar") as tar:
            tar.extractall(photos, filter="data")
    sources = sorted((photos / "imagenet-sample").glob("*/*.JPEG"))
    copies = -(-samples // len(sources))
    for kind in ("originals", "resized"):
        for split, count in (("train", copies), ("val", 1)):
            for src in sources:
                folder = paths[kind] / split / src.parent.name
                folder.mkdir(parents=True, exist_ok=True)
                target = folder / f"0{src.name}"
                if kind == "resized":
                    with Image.open(src) as img:
                        img = img.convert("RGB")
                        img.thumbnail((256, 256), Image.BILINEAR)  # longer side 256, like --max-res 256
                        img.save(target, quality=90)
                else:
                    target.symlink_to(src)
                for k in range(1, count):
                    (folder / f"{k}{src.name}").symlink_to(target)
    _prep("imagenet", "--train", str(paths["resized"] / "train"), "--val", str(paths["resized"] / "val"),
          "--out", str(paths["ffcv"]), "--max-res", "256", "--write-mode", "jpg", "--workers", str(workers),
          "--force")
    ready.touch()
    return paths


def prepare_cifar(shared: Path, work: Path, workers: int) -> dict[str, Path]:
    ready = work / "cifar.ready"
    paths = {"torchvision": work / "cifar_batches", "ffcv": work / "cifar_ffcv"}
    if ready.is_file():
        return paths
    images, labels, names = [], [], []
    with tarfile.open(shared / "cifar10-train-jpeg.tar.gz") as tar:
        for member in tar:
            if member.isfile():
                name = Path(member.name).parent.name
                if name not in names:
                    names.append(name)
                images.append(np.asarray(Image.open(tar.extractfile(member)).convert("RGB")))
                labels.append(name)
    names.sort()
    data = np.stack(images)
    label_ids = [names.index(n) for n in labels]
    batches = paths["torchvision"] / "cifar-10-batches-py"
    batches.mkdir(parents=True, exist_ok=True)
    for name, rows in (("data_batch_1", slice(None)), ("test_batch", slice(0, 1000))):
        with open(batches / name, "wb") as f:
            pickle.dump({"data": data[rows].transpose(0, 3, 1, 2).reshape(len(data[rows]), -1),
                         "labels": label_ids[rows]}, f)
    with open(batches / "batches.meta", "wb") as f:
        pickle.dump({"label_names": names}, f)
    _prep("cifar10", "--source", str(paths["torchvision"]), "--out", str(paths["ffcv"]), "--workers", str(workers),
          "--force")
    ready.touch()
    return paths


def epoch_rates(bundles: dict, epochs: int) -> dict[str, list[float]]:
    """Images/s per epoch for each loader, alternating between them; epoch 0 excluded."""
    rates: dict[str, list[float]] = {name: [] for name in bundles}
    for epoch in range(epochs + 1):
        for name, bundle in bundles.items():
            loader = bundle.train
            loader.set_epoch(epoch)
            count, start = 0, time.perf_counter()
            for images, _ in loader:
                count += images.shape[0]
            if images.is_cuda:
                torch.cuda.synchronize()
            if epoch:
                rates[name].append(count / (time.perf_counter() - start))
    return rates


def _cfg(loader: str, path: Path, recipe: str, res: int, batch: int, workers: int):
    mean_std = [f"data.mean={IMAGENET_MEAN}", f"data.std={IMAGENET_STD}"] if recipe == "imagenet" else []
    return load_config(None, [f"data.loader={loader}", f"data.path={path}", f"data.recipe={recipe}",
                              f"data.image_size={res}", f"data.val_image_size={res}", f"data.num_workers={workers}",
                              f"train.batch_size={batch}", "data.crop_padding=2", "model.num_classes=200"
                              if recipe == "imagenet" else "model.num_classes=10", *mean_std])


def run(shared: Path, work: Path, workers: int, epochs: int, imagenet_samples: int, resolutions: list[int],
        out: Path | None) -> list[dict]:
    if not (shared / "imagenet-sample-200.tar").is_file():
        raise UsageError(f"--shared {shared} does not hold imagenet-sample-200.tar and cifar10-train-jpeg.tar.gz")
    work.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)  # the main process only normalizes; the workers are what is measured
    runtime = _runtime()
    rows = []
    imagenet = prepare_imagenet(shared, work, imagenet_samples, workers)
    for res in resolutions:
        bundles = {name: build_data(_cfg(loader, imagenet[name], "imagenet", res, 256, workers), runtime,
                                    BatchPlan.of_micro_batch(256))
                   for name, loader in (("ffcv", "ffcv"), ("resized", "torchvision"), ("originals", "torchvision"))}
        rates = epoch_rates(bundles, epochs)
        rows.append(_row(f"imagenet-like, {imagenet_samples} samples, res {res}", rates, workers,
                         {"ffcv": "ffcv (.beton, 256 px jpg)", "resized": "torchvision (same 256 px jpgs)",
                          "originals": "torchvision (original photos)"}, baseline="resized"))
    cifar = prepare_cifar(shared, work, workers)
    bundles = {name: build_data(_cfg(name, cifar[name], "cifar", 32, 512, workers), runtime,
                                BatchPlan.of_micro_batch(512))
               for name in ("ffcv", "torchvision")}
    rows.append(_row("cifar10, 50000 samples, raw 32x32", epoch_rates(bundles, epochs), workers,
                     {"ffcv": "ffcv (.beton, raw)", "torchvision": "torchvision (python batches)"},
                     baseline="torchvision"))
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        fileio.write_json(out / "loader_results.json", {"workers": workers, "epochs": epochs, "rows": rows,
                                                        "cpu_count": os.cpu_count()})
    return rows


def _row(workload: str, rates: dict[str, list[float]], workers: int, labels: dict[str, str], baseline: str) -> dict:
    medians = {name: statistics.median(r) for name, r in rates.items()}
    return {"workload": workload, "workers": workers,
            "loaders": {labels[n]: {"img_per_s": medians[n], "per_epoch": rates[n]} for n in rates},
            "ffcv_speedup": medians["ffcv"] / medians[baseline],
            "ffcv_img_per_s_per_core": medians["ffcv"] / workers}


def report(rows: list[dict]) -> str:
    lines = ["| workload | loader | img/s (median) | FFCV speed-up |", "|---|---|---|---|"]
    for row in rows:
        for k, (name, values) in enumerate(row["loaders"].items()):
            speedup = f"**{row['ffcv_speedup']:.1f}x**" if k == 0 else ""
            lines.append(f"| {row['workload'] if k == 0 else ''} | {name} | {values['img_per_s']:.0f} | {speedup} |")
    per_core = ", ".join(f"{r['workload'].split(',')[0]}{r['workload'].split(',')[-1]}: "
                         f"{r['ffcv_img_per_s_per_core']:.0f}" for r in rows)
    return "\n".join(lines + [f"\nFFCV images/s per decoding core ({rows[0]['workers']} cores): {per_core}"])
