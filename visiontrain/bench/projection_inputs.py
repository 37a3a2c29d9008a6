"""The inputs of `bench project`: measured rates read from benchmark results (results.json files or
directories) or given on the command line, selected by measurement kind and settings."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

from visiontrain.infra import fileio
from visiontrain.infra.errors import UsageError

# Point fields that must agree for an e2e point and a step point to be the same setting.
SETTING_KEYS = ("model", "image_size", "precision", "channels_last", "compile", "batch_per_device", "world_size",
                "strategy")


def parse_rate(item: str) -> tuple[str, int, float]:
    model, _, rest = item.partition(":")
    res, _, value = rest.partition("=")
    try:
        parsed = model.strip(), int(res), float(value)
    except ValueError:
        parsed = None
    if not parsed or not parsed[0] or parsed[1] < 8 or not (math.isfinite(parsed[2]) and parsed[2] > 0):
        raise UsageError(f"--rate {item!r}: expected MODEL:RES=IMG_S with RES >= 8 and IMG_S > 0, "
                         "e.g. resnet50:160=3000")
    return parsed


def result_files(paths: list[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            found = [path / "results.json"] if (path / "results.json").is_file() else sorted(path.rglob("results.json"))
            if not found:
                raise UsageError(f"{path}: no results.json in it (written by `python -m visiontrain bench e2e/step "
                                 "--out DIR`)")
            files += found
        else:
            raise UsageError(f"{path}: no such results file or directory")
    return files


def load_results(paths: list[Path]) -> list[dict[str, Any]]:
    """Every results.json under `paths`, each as {"path", "doc"}."""
    loaded = []
    for path in result_files(paths):
        doc = fileio.read_json(path, "benchmark results file")
        if not isinstance(doc, dict) or not isinstance(doc.get("points"), list):
            raise UsageError(f"{path} is not a benchmark results file: it has no 'points' list")
        loaded.append({"path": str(path), "doc": doc})
    return loaded


def _value(value: Any) -> str:
    return str(value).lower()


def parse_where(items: list[str], points: list[dict[str, Any]]) -> dict[str, str]:
    where = {}
    known = set().union(*(p.keys() for p in points)) if points else set()
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--where {item!r}: expected key=value, e.g. compile=true")
        if key not in known:
            raise UsageError(f"--where {item!r}: the result points have no field {key!r}; fields: "
                             f"{', '.join(sorted(known)) or 'none (no results given)'}")
        where[key] = value.lower()
    return where


def measured_points(loaded: list[dict[str, Any]]) -> list[dict[str, Any]]:
    points = []
    for entry in loaded:
        for point in entry["doc"]["points"]:
            if isinstance(point, dict) and "error" not in point and point.get("images_per_s_per_device"):
                points.append({**point, "source": entry["path"]})
    return points


def select_rates(points: list[dict[str, Any]], of: str, where: dict[str, str]) -> dict[str, dict[int, dict]]:
    """model -> resolution -> the fastest matching point of mode `of` (per-GPU images/s)."""
    rates: dict[str, dict[int, dict]] = {}
    candidates: Counter = Counter()
    for p in points:
        if p.get("mode") != of or any(_value(p.get(k)) != v for k, v in where.items()):
            continue
        key = (p["model"], int(p["image_size"]))
        candidates[key] += 1
        best = rates.setdefault(key[0], {}).get(key[1])
        if best is None or p["images_per_s_per_device"] > best["images_per_s"]:
            rates[key[0]][key[1]] = {"images_per_s": float(p["images_per_s_per_device"]), "source": p["source"],
                                     "mode": of, "label": p.get("label", ""),
                                     **{k: p.get(k) for k in SETTING_KEYS if k not in ("model", "image_size")}}
    for (model, res), count in candidates.items():
        rates[model][res]["matching_points"] = count
    return rates


def comparisons(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """e2e points next to the step point of the same setting: e2e / step and the e2e data wait."""
    steps = {tuple(_value(p.get(k)) for k in SETTING_KEYS): p for p in points if p.get("mode") == "step"}
    rows = []
    for p in points:
        if p.get("mode") != "e2e":
            continue
        step = steps.get(tuple(_value(p.get(k)) for k in SETTING_KEYS))
        e2e_rate = float(p["images_per_s_per_device"])
        step_rate = None if step is None else float(step["images_per_s_per_device"])
        rows.append({"model": p["model"], "image_size": p["image_size"], "label": p.get("label", ""),
                     "compile": p.get("compile"), "batch_per_device": p.get("batch_per_device"),
                     "data_loader": p.get("data_loader"), "e2e_images_per_s": e2e_rate,
                     "step_images_per_s": step_rate,
                     "e2e_over_step": None if step_rate is None else e2e_rate / step_rate,
                     "data_wait_fraction": p.get("data_wait_fraction")})
    return sorted(rows, key=lambda r: (r["model"], r["image_size"], _value(r["compile"])))


def environment_summary(entry: dict[str, Any]) -> dict[str, Any]:
    env = entry["doc"].get("environment") or {}
    packages = env.get("packages") or {}
    return {"path": entry["path"], "mode": entry["doc"].get("mode"), "created": entry["doc"].get("created"),
            "gpu": env.get("gpu"), "gpu_count": env.get("gpu_count"), "driver": env.get("driver"),
            "torch": env.get("torch"), "cuda": env.get("cuda"), "cudnn": env.get("cudnn"),
            "ffcv": packages.get("ffcv"), "cpu_model": env.get("cpu_model"), "cpu_count": env.get("cpu_count")}
