"""Data-loader throughput: the FFCV loader against the torchvision loader, and against the pipeline a user
would otherwise write (torchvision's reference recipe on the original photos: stock_loader.py).

Both loaders are built by `build_data`, exactly as train.py builds them, with the same
images, recipe, output (float, normalized, channels-last) and worker count, and are
timed in alternating epochs (the first epoch of each, with FFCV's compilation, is
excluded). Workloads:
- imagenet: the shared 200 ImageNet photos replicated to N samples; training pipeline
  (random-resized-crop + flip) at each resolution. FFCV reads a .beton written with
  --max-res 256 --write-mode jpg; torchvision reads the same 256-px JPEGs as files
  (and, for reference, the original photos); the stock pipeline (PIL decode, torchvision v2
  transforms, DataLoader) reads the original photos.
- cifar10: the shared CIFAR-10 training JPEGs as 32x32 raw pixels; flip + translate.
  FFCV reads a raw .beton, torchvision the same pixels as CIFAR-10 python batches.

Where the time goes (`profile` of each ImageNet-like row):
- every timed epoch splits the CPU time it used, per image, between the main thread
  (receiving batches, labels, normalization), the process's other threads (FFCV's
  pipeline: decode, crop, flip, collation into its batch buffers) and the worker
  processes (the DataLoader's: read, decode, crop, flip, hand-off through shared memory);
- the compared loaders are also timed handing over their uint8 batches without the
  normalization (`uint8`), in the same alternation;
- each stage alone on one core, the loaders idle: FFCV's JPEG decode, its crop + resize
  and its flip as its decoder runs them; torchvision's file read + decode and its
  crop + resize + flip; the normalization (DeviceNormalizer, and torch's formula for reference).
"""

from __future__ import annotations

import os
import pickle
import shutil
import statistics
import subprocess
import sys
import tarfile
import threading
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import psutil
import torch
from PIL import Image

from visiontrain.bench.loader_stages import ffcv_stage_costs, normalization_costs, torchvision_stage_costs
from visiontrain.bench.stock_loader import StockBundle, StockTorchvisionTrain
from visiontrain.config import load_config
from visiontrain.data import build_data
from visiontrain.infra import fileio
from visiontrain.infra.errors import UsageError
from visiontrain.parallel.batch_plan import BatchPlan
from visiontrain.parallel.runtime import Runtime

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def _runtime() -> Runtime:
    return Runtime(accelerator=None, device=torch.device("cuda" if torch.cuda.is_available() else "cpu"),
                   rank=0, world_size=1, local_rank=0, launcher="single")


def _prep(*args: str) -> None:
    result = subprocess.run([sys.executable, "-m", "visiontrain", "prep", *args], capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"visiontrain prep {args[0]} failed: {result.stderr[-2000:]}")


def extract_photos(shared: Path, work: Path) -> list[Path]:
    """The shared 200 ImageNet photos, extracted once under `work`."""
    photos = work / "imagenet_photos"
    if not photos.is_dir():
        with tarfile.open(shared / "imagenet-sample-200.tar") as tar:
            tar.extractall(photos, filter="data")
    return sorted((photos / "imagenet-sample").glob("*/*.JPEG"))


def prepare_imagenet(shared: Path, work: Path, samples: int, workers: int) -> dict[str, Path]:
    """Folders of originals and of 256-px JPEGs (both replicated to `samples`) and the .beton."""
    work = work.resolve()  # the replicas are symlinks: a relative target would resolve from their own folder
    ready = work / "imagenet.ready"  # holds the sample count it was prepared for
    paths = {"originals": work / "imagenet_originals", "resized": work / "imagenet_resized",
             "ffcv": work / "imagenet_ffcv"}
    if ready.is_file() and ready.read_text() == str(samples):
        return paths
    for path in paths.values():
        shutil.rmtree(path, ignore_errors=True)
    sources = extract_photos(shared, work)
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
    ready.write_text(str(samples))
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


class CpuClock:
    """CPU seconds used so far by this process's main thread, by its other threads, and by its child processes."""

    PARTS = ("main", "threads", "workers")

    def __init__(self):
        self.process = psutil.Process()
        self.main_id = threading.main_thread().native_id

    def read(self) -> np.ndarray:
        total = sum(self.process.cpu_times()[:2])  # every thread's, also of threads that have ended
        main = sum(t.user_time + t.system_time for t in self.process.threads() if t.id == self.main_id)
        workers = 0.0
        for child in self.process.children(recursive=True):
            try:
                workers += sum(child.cpu_times()[:2])
            except psutil.NoSuchProcess:
                pass
        return np.array([main, total - main, workers])


class Uint8Batches:
    """Stands in for a loader's DeviceNormalizer: the loader then yields the uint8 batches it hands over."""

    def __init__(self, device: torch.device):
        self.device = device

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return images


@contextmanager
def without_normalization(loader):
    normalize = loader.normalize
    loader.normalize = Uint8Batches(normalize.device)
    try:
        yield loader
    finally:
        loader.normalize = normalize


def time_epoch(loader, epoch: int, clock: CpuClock) -> dict:
    """One epoch of `loader`: images/s, and CPU microseconds per image in each of `CpuClock.PARTS`."""
    loader.set_epoch(epoch)
    count, cpu, start = 0, clock.read(), time.perf_counter()
    for images, _ in loader:
        count += images.shape[0]
    if images.is_cuda:
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter() - start, clock.read() - cpu
    return {"img_per_s": count / wall, "cores_busy": float(cpu.sum() / wall),
            "cpu_us_per_img": dict(zip(CpuClock.PARTS, (cpu / count * 1e6).tolist()))}


def epoch_timings(bundles: dict, epochs: int, uint8: tuple[str, ...] = ()) -> dict[str, list[dict]]:
    """`time_epoch` of each loader (key `name`), and of those in `uint8` also without normalization (key
    `name/uint8`), alternating between them epoch after epoch; epoch 0 excluded."""
    clock = CpuClock()
    timings: dict[str, list[dict]] = {}
    for epoch in range(epochs + 1):
        for name, bundle in bundles.items():
            for key in [name, f"{name}/uint8"] if name in uint8 else [name]:
                with without_normalization(bundle.train) if key.endswith("/uint8") else nullcontext():
                    timing = time_epoch(bundle.train, epoch, clock)
                if epoch:
                    timings.setdefault(key, []).append(timing)
    return timings


def _cfg(loader: str, path: Path, recipe: str, res: int, batch: int, workers: int, *extra: str):
    mean_std = [f"data.mean={IMAGENET_MEAN}", f"data.std={IMAGENET_STD}"] if recipe == "imagenet" else []
    return load_config(None, [f"data.loader={loader}", f"data.path={path}", f"data.recipe={recipe}",
                              f"data.image_size={res}", f"data.val_image_size={res}", f"data.num_workers={workers}",
                              f"train.batch_size={batch}", "data.crop_padding=2", "model.num_classes=200"
                              if recipe == "imagenet" else "model.num_classes=10", *mean_std, *extra])


def augment_row(imagenet: dict[str, Path], res: int, policy: str, workers: int, epochs: int, runtime: Runtime) -> dict:
    """FFCV with `policy` against FFCV without it and against the stock torchvision pipeline with torchvision's
    RandAugment (same ops and magnitude) on the original photos; and each op's cost on one core."""
    from visiontrain.bench.augment_costs import op_costs, torchvision_costs
    from visiontrain.data.ops.auto_augment import parse_policy

    parsed = parse_policy(policy, "--augment")
    bundles = {name: build_data(_cfg("ffcv", imagenet["ffcv"], "imagenet", res, 256, workers, *extra), runtime,
                                BatchPlan.of_micro_batch(256))
               for name, extra in (("augmented", (f"augment.auto={policy}",)), ("plain", ()))}
    # torchvision's magnitude counts 31 bins over the full strength where timm's counts 10: m9 is its 27
    bundles["stock"] = StockBundle(StockTorchvisionTrain(
        imagenet["originals"] / "train", res, 256, workers, IMAGENET_MEAN, IMAGENET_STD,
        auto_augment=("trivial", 0, 0) if parsed.trivial else ("rand", parsed.num_ops, round(3 * parsed.magnitude))))
    timings = epoch_timings(bundles, epochs)
    medians = {name: _median_timing(timings[name])["img_per_s"] for name in bundles}
    return {"workload": f"augment {policy}, res {res}", "workers": workers,
            "img_per_s": medians,
            "ffcv_augmented_vs_stock": medians["augmented"] / medians["stock"],
            "ffcv_plain_vs_augmented": medians["plain"] / medians["augmented"],
            "us_per_img_one_core": {**op_costs(res, policy),
                                    **torchvision_costs(res, parsed.num_ops, round(3 * parsed.magnitude))}}


def augment_report(row: dict) -> str:
    speeds = row["img_per_s"]
    lines = [f"{row['workload']} ({row['workers']} workers): FFCV with it {speeds['augmented']:.0f} img/s, "
             f"without {speeds['plain']:.0f}, stock torchvision with its own {speeds['stock']:.0f}: "
             f"**{row['ffcv_augmented_vs_stock']:.1f}x** the stock pipeline, "
             f"{row['ffcv_plain_vs_augmented']:.2f}x slower than without it", "",
             "| op | us per image, one core |", "|---|---:|"]
    lines += [f"| {name} | {us:.0f} |" for name, us in row["us_per_img_one_core"].items()]
    return "\n".join(lines)


def run(shared: Path, work: Path, workers: int, epochs: int, imagenet_samples: int, resolutions: list[int],
        out: Path | None, augment: str = "") -> list[dict]:
    if not (shared / "imagenet-sample-200.tar").is_file():
        raise UsageError(f"--shared {shared} does not hold imagenet-sample-200.tar and cifar10-train-jpeg.tar.gz")
    work.mkdir(parents=True, exist_ok=True)
    # The main thread only receives and normalizes: its torch ops should not compete with the decoders.
    torch.set_num_threads(1)
    runtime = _runtime()
    rows = []
    imagenet = prepare_imagenet(shared, work, imagenet_samples, workers)
    for res in resolutions:
        bundles = {name: build_data(_cfg(loader, imagenet[name], "imagenet", res, 256, workers), runtime,
                                    BatchPlan.of_micro_batch(256))
                   for name, loader in (("ffcv", "ffcv"), ("resized", "torchvision"), ("originals", "torchvision"))}
        bundles["stock"] = StockBundle(StockTorchvisionTrain(imagenet["originals"] / "train", res, 256, workers,
                                                             IMAGENET_MEAN, IMAGENET_STD))
        timings = epoch_timings(bundles, epochs, uint8=("ffcv", "resized"))
        row = _row(f"imagenet-like, {imagenet_samples} samples, res {res}", timings, workers,
                   {"ffcv": "ffcv (.beton, 256 px jpg)", "resized": "torchvision (same 256 px jpgs)",
                    "originals": "torchvision (original photos)",
                    "stock": "stock torchvision reference (original photos, PIL)"}, baseline="resized")
        row.update(_versus(timings, "ffcv", "stock", "ffcv_vs_stock"))
        row["profile"] = {
            "stages_us_per_img_one_core": {
                "ffcv": ffcv_stage_costs(imagenet["ffcv"] / "train.beton", bundles["ffcv"].train.decoder),
                "torchvision": torchvision_stage_costs(bundles["resized"].train),
                "normalization": normalization_costs(bundles["ffcv"].train.normalize, 256, res)},
            **_loop_profile(timings, "ffcv", "resized")}
        rows.append(row)
        del bundles
        if augment:
            rows.append(augment_row(imagenet, res, augment, workers, epochs, runtime))
    cifar = prepare_cifar(shared, work, workers)
    bundles = {name: build_data(_cfg(name, cifar[name], "cifar", 32, 512, workers), runtime,
                                BatchPlan.of_micro_batch(512))
               for name in ("ffcv", "torchvision")}
    rows.append(_row("cifar10, 50000 samples, raw 32x32", epoch_timings(bundles, epochs), workers,
                     {"ffcv": "ffcv (.beton, raw)", "torchvision": "torchvision (python batches)"},
                     baseline="torchvision"))
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        fileio.write_json(out / "loader_results.json", {"workers": workers, "epochs": epochs, "rows": rows,
                                                        "cpu_count": os.cpu_count()})
    return rows


def _median_timing(runs: list[dict]) -> dict:
    return {"img_per_s": statistics.median(t["img_per_s"] for t in runs),
            "cores_busy": statistics.median(t["cores_busy"] for t in runs),
            "cpu_us_per_img": {part: statistics.median(t["cpu_us_per_img"][part] for t in runs)
                               for part in CpuClock.PARTS}}


def _decode_us(timing: dict) -> float:
    """CPU per image outside the main thread: the decoding side (FFCV's threads, the DataLoader's workers)."""
    return timing["cpu_us_per_img"]["threads"] + timing["cpu_us_per_img"]["workers"]


def _cpu_us(timing: dict) -> float:
    return sum(timing["cpu_us_per_img"].values())


def _loop_profile(timings: dict[str, list[dict]], ffcv: str, baseline: str) -> dict:
    """Per loader: images/s with and without normalization, and where each image's CPU time went; and the
    speed-up FFCV would have if only the decoding side cost CPU time (both loaders keep every core busy)."""
    loaders = {}
    for name in (ffcv, baseline):
        normalized, uint8 = _median_timing(timings[name]), _median_timing(timings[f"{name}/uint8"])
        loaders[name] = {"normalized": normalized, "uint8": uint8,
                         "decode_img_per_s_per_core": 1e6 / _decode_us(uint8),
                         "main_thread_normalize_us_per_img": (normalized["cpu_us_per_img"]["main"]
                                                              - uint8["cpu_us_per_img"]["main"])}
    return {"loop": loaders,
            "uint8_speedup": loaders[ffcv]["uint8"]["img_per_s"] / loaders[baseline]["uint8"]["img_per_s"],
            "decode_cpu_ratio": _decode_us(loaders[baseline]["uint8"]) / _decode_us(loaders[ffcv]["uint8"])}


def _versus(timings: dict[str, list[dict]], ffcv: str, other: str, key: str) -> dict:
    """FFCV's images/s over `other`'s (medians), and the same in CPU time per image."""
    mine, theirs = _median_timing(timings[ffcv]), _median_timing(timings[other])
    return {f"{key}_speedup": mine["img_per_s"] / theirs["img_per_s"],
            f"{key}_cpu_speedup": _cpu_us(theirs) / _cpu_us(mine)}


def _row(workload: str, timings: dict[str, list[dict]], workers: int, labels: dict[str, str], baseline: str) -> dict:
    medians = {name: _median_timing(timings[name]) for name in labels}
    return {"workload": workload, "workers": workers,
            "loaders": {labels[n]: {"img_per_s": medians[n]["img_per_s"],
                                    "per_epoch": [t["img_per_s"] for t in timings[n]],
                                    "cpu_us_per_img": medians[n]["cpu_us_per_img"],
                                    "cores_busy": medians[n]["cores_busy"],
                                    "img_per_s_per_decoding_core": 1e6 / _decode_us(medians[n])}
                        for n in labels},
            "ffcv_speedup": medians["ffcv"]["img_per_s"] / medians[baseline]["img_per_s"],
            # The same comparison in CPU time per image: what the speed-up is where the loader has every core to
            # itself, whatever share of the cores other work left it during the run.
            "ffcv_cpu_speedup": _cpu_us(medians[baseline]) / _cpu_us(medians["ffcv"]),
            "ffcv_img_per_s_per_core": medians["ffcv"]["img_per_s"] / workers}


def report(rows: list[dict]) -> str:
    lines = ["| workload | loader | img/s (median) | FFCV speed-up: img/s (CPU time) | cores busy | "
             "CPU us/img: decoding side / main thread | img/s per decoding core |", "|---|---|---|---|---|---|---|"]
    augmented = [row for row in rows if "ffcv_augmented_vs_stock" in row]
    rows = [row for row in rows if row not in augmented]
    for row in rows:
        for k, (name, values) in enumerate(row["loaders"].items()):
            speedup = f"**{row['ffcv_speedup']:.1f}x** ({row['ffcv_cpu_speedup']:.1f}x)" if k == 0 else ""
            cpu = values["cpu_us_per_img"]
            lines.append(f"| {row['workload'] if k == 0 else ''} | {name} | {values['img_per_s']:.0f} | {speedup} | "
                         f"{values['cores_busy']:.2f} | {cpu['threads'] + cpu['workers']:.0f} / {cpu['main']:.0f} | "
                         f"{values['img_per_s_per_decoding_core']:.0f} |")
    for row in rows:
        if "ffcv_vs_stock_speedup" in row:
            lines += ["", f"{row['workload']}: FFCV against the stock torchvision reference pipeline on the original "
                          f"photos: **{row['ffcv_vs_stock_speedup']:.1f}x** img/s, "
                          f"{row['ffcv_vs_stock_cpu_speedup']:.1f}x per CPU-second"]
    for row in rows:
        if "profile" in row:
            lines += ["", _profile_report(row)]
    lines += [line for row in augmented for line in ("", augment_report(row))]
    return "\n".join(lines)


def _profile_report(row: dict) -> str:
    profile, res = row["profile"], row["workload"].split(",")[-1].strip()
    stages = profile["stages_us_per_img_one_core"]
    f, t, n = stages["ffcv"], stages["torchvision"], stages["normalization"]
    lines = [f"Profile, {res} (CPU us per image):",
             "| loader | img/s uint8 / normalized | decoding side (uint8 run) | main thread: uint8 / normalized | "
             "cores busy | img/s per decoding core |", "|---|---|---|---|---|---|"]
    for name, values in profile["loop"].items():
        u, m = values["uint8"], values["normalized"]
        lines.append(f"| {name} | {u['img_per_s']:.0f} / {m['img_per_s']:.0f} | {_decode_us(u):.0f} | "
                     f"{u['cpu_us_per_img']['main']:.0f} / {m['cpu_us_per_img']['main']:.0f} | "
                     f"{m['cores_busy']:.2f} | {values['decode_img_per_s_per_core']:.0f} |")
    decode_share = f["jpeg_decode"] / (f["jpeg_decode"] + f["crop_resize"] + f["flip"])
    lines += [f"one core, alone: ffcv JPEG decode {f['jpeg_decode']:.0f} + crop/resize {f['crop_resize']:.0f} + flip "
              f"{f['flip']:.0f} (decode {decode_share:.0%}); torchvision read+decode {t['read_decode']:.0f} + "
              f"crop/resize/flip {t['crop_resize_flip']:.0f}; normalize {n['normalize']:.0f} (torch formula "
              f"{n['torch_formula']:.0f})",
              f"FFCV speed-up without normalization: {profile['uint8_speedup']:.2f}x; ratio of decoding-side CPU per "
              f"image (the speed-up if nothing else cost time): {profile['decode_cpu_ratio']:.2f}x"]
    return "\n".join(lines)
