"""summary.md of a GPU-evidence call (bench/evidence.py): the README tables' rows, ready to paste.

Every part appears, with its status: a part that timed out, failed or was never reached says so
(and shows what it finished before it stopped) instead of leaving a silent gap.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from visiontrain.bench.results import table as throughput_table

# How each part's points are named in the tables (a swept point adds its setting).
POINT_NAMES = {"trainer_eager": "eager", "trainer_compiled": "compiled", "trainer_graphs": "CUDA graphs",
               "r50_eager": "eager",
               "r50_compiled": "compiled", "ffcv_e2e": "FFCV-fed, end to end",
               "ffcv_step": "batches already on the device", "families": ""}
CONFIG_LINKS = {"fast": "[fast](../configs/cifar10/fast.yaml)", "resnet9": "[resnet9](../configs/cifar10/resnet9.yaml)"}


def _part(doc: dict[str, Any], name: str) -> dict[str, Any]:
    absent = {"name": name, "title": name, "status": "not in this call", "reason": "", "result": None}
    return next((p for p in doc["parts"] if p["name"] == name), absent)


def _status(part: dict[str, Any]) -> str:
    return part["status"] + (f": {part['reason']}" if part["reason"] else "")


def header(doc: dict[str, Any]) -> list[str]:
    env = doc["environment"]
    where = (f"{env['gpu']} x{env['gpu_count']}, driver {env['driver']}" if env.get("gpu")
             else f"no GPU: CPU {env.get('cpu_model')}")
    title = "# visiontrain GPU evidence"
    if doc["mode"] == "rehearsal":
        title += ": CPU rehearsal (tiny sizes, fp32, no compilation; no figure here is a GPU figure)"
    started = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(doc["started_unix"]))
    return [title, "",
            f"- {where}; torch {env.get('torch')}, CUDA {env.get('cuda')}; Python {env.get('python')}; "
            f"{env.get('cpu_count')} CPU cores",
            f"- started {started}; deadline {doc['deadline_s']:.0f} s after the start, the bundle's installation "
            f"included ({env.get('install_and_start_s', '?')} s)", ""]


def parts_table(doc: dict[str, Any]) -> list[str]:
    lines = ["## Parts", "", "| part | status | seconds | budget s |", "|---|---|---:|---:|"]
    for p in doc["parts"]:
        lines.append(f"| {p['title']} | {_status(p)} | {p['seconds']:.0f} | {p['budget_s']} |")
    return [*lines, ""]


def accuracy_check(config: str, runs: list[dict[str, Any]], reference: dict[str, Any]) -> str:
    """Does the device's mean land within the seeds' spread of the CPU fp32 reference?"""
    ref = reference.get(config)
    if not ref or not runs:
        return f"{config}: no CPU reference to compare with"
    gpu = [r["top1"] for r in runs]
    cpu = ref["top1"]
    diff = statistics.fmean(gpu) - statistics.fmean(cpu)
    spreads = [statistics.stdev(v) for v in (gpu, cpu) if len(v) > 1]
    where = (f"{statistics.fmean(gpu):.2f} % over {len(gpu)} run(s) here vs {statistics.fmean(cpu):.2f} % over "
             f"{len(cpu)} CPU seed(s) ({ref['setting']}): {diff:+.2f} points")
    if not spreads:
        return f"{config}: {where}; one run each, no spread to judge by"
    tolerance = 2 * max(spreads)
    verdict = "within" if abs(diff) <= tolerance else "OUTSIDE"
    return f"{config}: {where}, {verdict} twice the larger seed std ({tolerance:.2f})"


def recipe_rows(doc: dict[str, Any], reference: dict[str, Any]) -> list[str]:
    lines = ["## CIFAR-10 recipe table (docs/training.md, README)", "",
             "| config | model | epochs | hardware | val top-1 (mean ± std) | training s | process s |",
             "|---|---|---:|---|---|---:|---:|"]
    checks = []
    for name in ("fast", "resnet9"):
        part = _part(doc, name)
        result = part["result"] or {}
        rows = result.get("rows") or []
        if not rows:
            lines.append(f"| {CONFIG_LINKS[name]} | | | | not measured ({_status(part)}) | | |")
            continue
        r = rows[0]
        gpu = doc["environment"].get("gpu")
        hardware = result.get("label", "") + (f" ({gpu})" if gpu else "")
        asked = (result.get("seeds_asked") or {}).get(name, r["runs"])
        runs = f"{r['runs']} seed{'s' if r['runs'] != 1 else ''}" + (
            "" if r["runs"] >= asked else f" of {asked} ({part['status']})")
        lines.append(f"| {CONFIG_LINKS[name]} | {r['model']} | {r['epochs']} | {hardware} | "
                     f"{r['top1_mean']:.2f} ± {r['top1_std']:.2f} % ({runs}) | {r['train_s_mean']:.2f} | "
                     f"{r['process_s_mean']:.1f} |")
        if doc["mode"] != "rehearsal":  # a rehearsal's accuracy after one epoch on 270 images means nothing
            checks.append(accuracy_check(name, result.get("runs", {}).get(name, []), reference))
    lines.append("")
    if checks:
        lines += ["Accuracy against the CPU measurement:", "", *[f"- {c}" for c in checks], ""]
    return lines


def throughput_section(doc: dict[str, Any], title: str, names: list[str]) -> list[str]:
    lines = [f"## {title}", ""]
    points = []
    for name in names:
        part = _part(doc, name)
        got = (part["result"] or {}).get("points") or []
        for point in got:
            label = "" if point["label"] == "default" else point["label"]
            points.append({**point, "label": " ".join(filter(None, [POINT_NAMES.get(name, name), label]))})
        if part["status"] != "ok" or not got:
            lines.append(f"- {part['title']}: {_status(part)}")
    if points:
        lines += [*([""] if len(lines) > 2 else []), throughput_table(points)]
    return [*lines, ""]


def ffcv_ratio(doc: dict[str, Any]) -> list[str]:
    e2e = ((_part(doc, "ffcv_e2e")["result"] or {}).get("points") or [None])[0]
    step = ((_part(doc, "ffcv_step")["result"] or {}).get("points") or [None])[0]
    if not e2e or not step or "error" in e2e or "error" in step:
        return ["- FFCV-fed / step ratio: not measured (one of the two points is missing)", ""]
    ratio = e2e["images_per_s"] / step["images_per_s"]
    return [f"- FFCV-fed ResNet-50 at {e2e['image_size']} px: {e2e['images_per_s']:.0f} img/s end to end, "
            f"{step['images_per_s']:.0f} img/s on batches already on the device: **{ratio:.3f}** of the step rate, "
            f"data wait {100 * e2e['data_wait_fraction']:.1f} % of the time", ""]


def summary(doc: dict[str, Any], reference: dict[str, Any]) -> str:
    lines = [*header(doc), *parts_table(doc), *recipe_rows(doc, reference),
             *throughput_section(doc, "Trainer vs the bare loop (ResNet-9, batch 512)",
                                 ["trainer_eager", "trainer_compiled", "trainer_graphs"]),
             *throughput_section(doc, "ResNet-50 step (224 px, batch 256, channels-last)",
                                 ["r50_eager", "r50_compiled"]),
             *throughput_section(doc, "ResNet-50 fed by FFCV (160 px)", ["ffcv_e2e", "ffcv_step"]),
             *ffcv_ratio(doc),
             *throughput_section(doc, "Model families", ["families"])]
    return "\n".join(lines).rstrip() + "\n"
