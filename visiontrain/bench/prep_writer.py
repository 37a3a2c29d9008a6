"""Writing speed: `visiontrain prep imagenet` against FFCV's own writer (ffcv_writer.py) on the same photos.

The shared 200 ImageNet photos are replicated (symlinks) to N training samples plus the 200 as the
validation split. Both writers store them with the same field settings (--max-res 256 --write-mode
jpg --jpeg-quality 90 by default) at each worker count, as fresh processes timed in turn (the order
alternates every repeat): wall seconds, and CPU seconds of the process and its workers. Ours also
checks every file and measures the images' sizes and colour statistics (meta.json); FFCV's does not.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from visiontrain.bench.loader import extract_photos
from visiontrain.bench.timing import children_cpu_seconds
from visiontrain.infra import fileio

IMAGENET_TRAIN_IMAGES = 1_281_167


def replicate(shared: Path, work: Path, samples: int) -> tuple[Path, Path]:
    """train/ with `samples` symlinked copies of the photos (spread over their 200 classes), val/ with each once."""
    work = work.resolve()
    ready = work / "prep.ready"
    train, val = work / "prep_photos" / "train", work / "prep_photos" / "val"
    if ready.is_file() and ready.read_text() == str(samples):
        return train, val
    shutil.rmtree(work / "prep_photos", ignore_errors=True)
    sources = extract_photos(shared, work)
    for k in range(samples):
        src = sources[k % len(sources)]
        folder = train / src.parent.name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{k // len(sources)}{src.name}").symlink_to(src)
    for src in sources:
        (val / src.parent.name).mkdir(parents=True, exist_ok=True)
        (val / src.parent.name / src.name).symlink_to(src)
    ready.write_text(str(samples))
    return train, val


def commands(train: Path, val: Path, out: Path, workers: int, max_res: int, quality: int) -> dict[str, list[str]]:
    field = ["--max-res", str(max_res), "--write-mode", "jpg", "--jpeg-quality", str(quality), "--workers",
             str(workers)]
    return {"visiontrain": [sys.executable, "-m", "visiontrain", "prep", "imagenet", "--train", str(train), "--val",
                            str(val), "--out", str(out / "visiontrain"), "--force", *field],
            "ffcv": [sys.executable, "-m", "visiontrain.bench.ffcv_writer", str(train), str(val), str(out / "ffcv"),
                     *field]}


def timed(command: list[str]) -> dict[str, float]:
    cpu, start = children_cpu_seconds(), time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    wall, cpu = time.perf_counter() - start, children_cpu_seconds() - cpu
    if result.returncode:
        raise RuntimeError(f"{' '.join(command[:5])} ... failed: {result.stderr[-2000:]}")
    return {"wall_s": wall, "cpu_s": cpu}


def run(shared: Path, work: Path, samples: int, workers: list[int], repeats: int, max_res: int = 256,
        quality: int = 90) -> dict:
    train, val = replicate(shared, work, samples)
    out = work / "prep_out"
    times: dict[int, dict[str, list[dict]]] = {w: {"visiontrain": [], "ffcv": []} for w in workers}
    for repeat in range(repeats):
        for w in workers:
            runs = commands(train, val, out, w, max_res, quality)
            for name in (("visiontrain", "ffcv") if repeat % 2 == 0 else ("ffcv", "visiontrain")):
                shutil.rmtree(out / name, ignore_errors=True)
                times[w][name].append(timed(runs[name]))
    shutil.rmtree(out, ignore_errors=True)
    images = samples + len(list(val.glob("*/*")))
    rows = []
    for w in workers:
        median = {name: {k: statistics.median(t[k] for t in runs) for k in ("wall_s", "cpu_s")}
                  for name, runs in times[w].items()}
        rows.append({"workers": w, "images": images, "median": median, "runs": times[w],
                     "speed_vs_ffcv": median["ffcv"]["wall_s"] / median["visiontrain"]["wall_s"],
                     "cpu_vs_ffcv": median["ffcv"]["cpu_s"] / median["visiontrain"]["cpu_s"],
                     "img_per_s": images / median["visiontrain"]["wall_s"]})
    return {"samples": samples, "max_res": max_res, "jpeg_quality": quality, "repeats": repeats, "rows": rows}


def report(result: dict, node_cores: int = 32) -> str:
    lines = [f"{result['rows'][0]['images']} images (--max-res {result['max_res']} --write-mode jpg --jpeg-quality "
             f"{result['jpeg_quality']}), median of {result['repeats']}:",
             "| workers | visiontrain prep s | FFCV's writer s | speed vs FFCV's writer | CPU s (ours / FFCV's) |",
             "|---:|---:|---:|---:|---|"]
    for row in result["rows"]:
        m = row["median"]
        lines.append(f"| {row['workers']} | {m['visiontrain']['wall_s']:.1f} | {m['ffcv']['wall_s']:.1f} | "
                     f"**{row['speed_vs_ffcv']:.2f}x** | {m['visiontrain']['cpu_s']:.1f} / {m['ffcv']['cpu_s']:.1f} |")
    rows = result["rows"]
    if len(rows) > 1:
        first, last = rows[0], rows[-1]
        scaling = first["median"]["visiontrain"]["wall_s"] / last["median"]["visiontrain"]["wall_s"]
        per_worker = last["img_per_s"] / last["workers"]
        hours = IMAGENET_TRAIN_IMAGES / (per_worker * node_cores) / 3600
        lines.append(f"\n{first['workers']} -> {last['workers']} workers: {scaling:.2f}x faster "
                     f"(linear: {last['workers'] / first['workers']:.1f}x). At {per_worker:.0f} images/s per worker, "
                     f"ImageNet's {IMAGENET_TRAIN_IMAGES:,} training images on a {node_cores}-core node would take "
                     f"about {hours:.2f} h if the scaling stays linear (a projection; the disk may not keep up).")
    return "\n".join(lines)


def write(out: Path, result: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    fileio.write_json(out / "prep_results.json", result)
