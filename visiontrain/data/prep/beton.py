"""Checking images (bad files, sizes, colour statistics) and writing FFCV .beton files.

Files are decoded once, by FFCV's writer workers (`write_beton`): each decode is checked there
and measured (size, and the colour sums of a subsample of about 64 rows), so a bad image is named
and the output discarded, and meta.json gets its statistics, without a second pass over the data.
The dataset object never raises inside FFCV's workers, because FFCV's writer would wait for
ever on a worker that died. `--on-bad skip` must know the good files before writing, so there a
scan decodes every file first (`scan`: JPEGs in draft mode, DCT scaling to 1/8 size, which still
reads the whole compressed stream, so truncated files are caught).
"""

from __future__ import annotations

import multiprocessing as mp
import signal
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from visiontrain.data.sources import Samples, to_rgb
from visiontrain.infra.errors import UsageError


@dataclass
class ScanResult:
    good: list[int]
    bad: list[tuple[Path, str]]
    widths: np.ndarray
    heights: np.ndarray
    channel_sum: np.ndarray  # of pixel values in [0, 1]
    channel_sq_sum: np.ndarray
    pixels: int


def _inspect(path: Path) -> tuple[int, int, np.ndarray, np.ndarray, int] | str:
    """(width, height, sum, squared sum, pixel count) of a decodable image, or why it is not one."""
    try:
        with Image.open(path) as img:
            width, height = img.size
            if img.format == "JPEG":
                img.draft("RGB", (max(1, width // 8), max(1, height // 8)))
            img.load()
            pixels = np.asarray(to_rgb(img), dtype=np.float64) / 255.0
    except Exception as err:  # PIL raises many types for bad input; all mean "not an image"
        return f"{type(err).__name__}: {err}"
    flat = pixels.reshape(-1, 3)
    return width, height, flat.sum(0), (flat**2).sum(0), flat.shape[0]


def _default_signals() -> None:
    for sig in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_DFL)


def worker_pool(workers: int):
    """Forked decoding workers that stop on SIGTERM: a forked worker inherits its parent's Python signal
    handlers, and a caller's catching SIGTERM handler (a training run in the same process) would make
    Pool.terminate(), which every `with` block calls, wait for ever."""
    return mp.get_context("fork").Pool(max(1, workers), initializer=_default_signals)


def scan(samples: Samples, workers: int, on_bad: str, split: str) -> ScanResult:
    """Decode every sample once; stop at the first bad file (on_bad='stop') or skip and count them."""
    if samples.array is not None:
        flat = samples.array.reshape(-1, 3).astype(np.float64) / 255.0
        n, h, w = samples.array.shape[:3]
        return ScanResult(list(range(n)), [], np.full(n, w), np.full(n, h), flat.sum(0), (flat**2).sum(0),
                          flat.shape[0])
    good, bad, widths, heights = [], [], [], []
    total, total_sq, count = np.zeros(3), np.zeros(3), 0
    with worker_pool(workers) as pool:
        results = pool.imap(_inspect, samples.paths, chunksize=64)
        for index, result in enumerate(tqdm(results, total=len(samples), desc=f"scan {split}", unit="img")):
            if isinstance(result, str):
                if on_bad == "stop":
                    pool.terminate()
                    raise UsageError(f"bad image {samples.paths[index]} ({result}); "
                                     "pass --on-bad skip to leave such files out")
                bad.append((samples.paths[index], result))
                continue
            width, height, s, sq, n = result
            good.append(index)
            widths.append(width)
            heights.append(height)
            total += s
            total_sq += sq
            count += n
    if not good:
        raise UsageError(f"no readable images in the {split} split")
    return ScanResult(good, bad, np.array(widths), np.array(heights), total, total_sq, count)


class _WriterDataset:
    """What FFCV's DatasetWriter reads: (HxWx3 uint8 RGB array, label) per index.

    It never raises inside FFCV's worker processes (that would hang the writer): a file
    that fails now is recorded in `failed` (with why) and written as a placeholder, and the
    caller discards the whole output. With `measure`, each decoded image's size and colour
    sums go into arrays shared with the parent, one slot per index (no lock: slots are disjoint).
    """

    def __init__(self, samples: Samples, measure: bool = False):
        self.samples = samples
        context = mp.get_context("fork")
        self.failed = context.Value("q", -1)
        self.reason = context.Array("c", 300)
        self.measure = measure
        if measure:
            self.sizes = np.frombuffer(context.RawArray("i", 2 * len(samples)), np.int32).reshape(-1, 2)
            self.sums = np.frombuffer(context.RawArray("d", 7 * len(samples)), np.float64).reshape(-1, 7)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        label = self.samples.labels[index]
        if self.samples.array is not None:
            return self.samples.array[index], label
        try:
            with Image.open(self.samples.paths[index]) as img:
                image = np.asarray(to_rgb(img))  # grayscale (16-bit too), CMYK, palette, alpha -> RGB
        except Exception as err:  # PIL raises many types for bad input; all mean "not an image"
            why = f"{type(err).__name__}: {err}".encode(errors="replace")[: len(self.reason) - 1]
            with self.failed.get_lock():  # two failing workers: one file's path with its own reason
                self.reason.value, self.failed.value = why, index
            return np.zeros((8, 8, 3), dtype=np.uint8), label
        if self.measure:
            self._measure(index, image)
        return image, label

    def _measure(self, index: int, image: np.ndarray) -> None:
        height, width = image.shape[:2]
        stride = max(1, min(height, width) // 64)  # about 64 rows: the statistics of a whole dataset, cheaply
        flat = image[::stride, ::stride].reshape(-1, 3).astype(np.float64) / 255.0
        weight = stride * stride  # a sampled pixel stands for its stride x stride block (pixel-weighted)
        self.sizes[index] = width, height
        self.sums[index] = (*(flat.sum(0) * weight), *((flat**2).sum(0) * weight), len(flat) * weight)

    def result(self) -> ScanResult:
        """What `scan` would have found, from the writer's own decodes (all of them good)."""
        totals = self.sums.sum(0)
        return ScanResult(list(range(len(self.samples))), [], self.sizes[:, 0].copy(), self.sizes[:, 1].copy(),
                          totals[:3], totals[3:6], int(totals[6]))


@dataclass
class BetonOptions:
    write_mode: str = "raw"  # raw | jpg | proportion | smart
    max_res: int | None = None  # longer side cap (None: keep)
    jpeg_quality: int = 90
    compress_prob: float = 0.5  # proportion mode: fraction stored as JPEG
    smart_threshold: int = 256 * 256 * 3  # smart mode: more values than this -> JPEG
    chunk_size: int = 100
    workers: int = 4


def can_measure_while_writing() -> bool:
    """FFCV's writer workers share the measurement arrays only when they are forked (Linux's default up
    to Python 3.13); under spawn or forkserver they would fill copies, so the caller scans first."""
    return mp.get_start_method() == "fork"


def write_beton(samples: Samples, out_file: Path, options: BetonOptions, measure: bool = False
                ) -> ScanResult | None:
    """Write `samples`; a file that cannot be decoded is a UsageError naming it (the caller's output
    directory is then discarded). `measure`: also return the images' sizes and colour statistics."""
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    image_field = RGBImageField(write_mode=options.write_mode, max_resolution=options.max_res,
                                jpeg_quality=options.jpeg_quality, compress_probability=options.compress_prob,
                                smart_threshold=options.smart_threshold)
    dataset = _WriterDataset(samples, measure)
    writer = DatasetWriter(str(out_file), {"image": image_field, "label": IntField()},
                           num_workers=max(1, options.workers))
    writer.from_indexed_dataset(dataset, chunksize=options.chunk_size)
    if dataset.failed.value >= 0:
        raise UsageError(f"bad image {samples.paths[dataset.failed.value]} "
                         f"({dataset.reason.value.decode(errors='replace')}); "
                         "pass --on-bad skip to leave such files out")
    return dataset.result() if measure else None


def split_meta(samples: Samples, result: ScanResult) -> dict:
    counts = np.bincount([samples.labels[i] for i in result.good], minlength=len(samples.class_names))
    mean = result.channel_sum / result.pixels
    std = np.sqrt(np.maximum(result.channel_sq_sum / result.pixels - mean**2, 0))
    return {
        "samples": len(result.good),
        "counts": {name: int(c) for name, c in zip(samples.class_names, counts)},
        "image_size": {"width": _stats(result.widths), "height": _stats(result.heights)},
        "mean": [round(float(v), 5) for v in mean],
        "std": [round(float(v), 5) for v in std],
        "skipped": len(result.bad),
        "skipped_files": [f"{path}: {why}" for path, why in result.bad[:100]],
    }


def _stats(values: np.ndarray) -> dict:
    return {"min": int(values.min()), "max": int(values.max()), "mean": round(float(values.mean()), 1)}
