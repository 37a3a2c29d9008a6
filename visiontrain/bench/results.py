"""Benchmark output: results.json (every point and the environment), results.md (a
table) and PNG charts (throughput per point; scaling efficiency), in one directory.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from visiontrain.infra import fileio

SCHEMA_VERSION = 2  # 2: trainer_vs_bare (was engine_vs_bare)


def _fmt(value: Any, spec: str, missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def table(records: list[dict[str, Any]]) -> str:
    scaling = any("scaling_efficiency" in r for r in records)
    header = ["point", "procs", "img/s total (min-max)", "img/s/device", "step ms p50/p90", "data wait",
              "peak MiB", "GFLOP/img", "TFLOP/s/device", "MFU", "vs bare"]
    if scaling:
        header.insert(4, "scaling eff.")
    # Adversarial training's cost: each point's step time over a plain step's (the first point without an
    # attack, at the same process count), as `bench step --sweep adversarial.method=none,fgsm_rs,pgd` measures it.
    plain = {r["world_size"]: r["images_per_s"] for r in reversed(records)
             if "error" not in r and r.get("adversarial", "none") == "none"}
    attacks = any(r.get("adversarial", "none") != "none" for r in records)
    if attacks:
        header.append("step time vs plain")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in records:
        if "error" in r:
            cells = [r["label"], str(r["world_size"]), f"failed: {r['error'][:80]}"] + [""] * (len(header) - 3)
        else:
            cells = [
                r["label"], str(r["world_size"]),
                f"{r['images_per_s']:.1f} ({r['images_per_s_min']:.1f}-{r['images_per_s_max']:.1f})",
                f"{r['images_per_s_per_device']:.1f}",
                f"{r['step_ms_p50']:.1f} / {r['step_ms_p90']:.1f}",
                f"{100 * r['data_wait_fraction']:.1f}%",
                f"{r['peak_memory_mib']:.0f}",
                f"{r['train_gflops_per_image']:.3g}",
                f"{r['achieved_tflops_per_device']:.3g}",
                _fmt(None if r["mfu"] is None else 100 * r["mfu"], ".1f") + ("%" if r["mfu"] is not None else ""),
                _fmt(r["trainer_vs_bare"], ".3f"),
            ]
            if scaling:
                cells.insert(4, f"{100 * r['scaling_efficiency']:.1f}%")
            if attacks:
                base = plain.get(r["world_size"])
                cells.append(_fmt(None if base is None else base / r["images_per_s"], ".2f") + "x" * bool(base))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown(doc: dict[str, Any]) -> str:
    env = doc["environment"]
    device = f"{env['gpu']} x{env['gpu_count']} (driver {env['driver']})" if env["gpu"] else f"CPU ({env['cpu_model']})"
    s = doc["settings"]
    lines = [
        f"# visiontrain benchmark: {doc['mode']}",
        "",
        f"{device}; {env['cpu_count']} CPUs; torch {env['torch']}, CUDA {env['cuda']}; {doc['created']}",
        f"`{doc['command']}`",
        "",
        f"{s['steps']} timed steps x {s['repeats']} repeats per point after {s['warmup_steps']} warm-up step(s); "
        "img/s is the median over repeats (range in brackets); batch/device is the per-device batch.",
        "",
        table(doc["points"]),
        "",
    ]
    return "\n".join(lines)


def write(out_dir: Path, mode: str, command: str, environment: dict[str, Any], settings: dict[str, Any],
          records: list[dict[str, Any]]) -> dict[str, Any]:
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = {"schema_version": SCHEMA_VERSION, "mode": mode, "command": command,
           "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "environment": environment, "settings": settings,
           "points": records}
    fileio.write_json(out_dir / "results.json", doc)
    fileio.write_text(out_dir / "results.md", markdown(doc))
    ok = [r for r in records if "error" not in r]
    if ok:
        throughput_chart(ok, out_dir / "throughput.png")
        if any("scaling_efficiency" in r for r in ok):
            scaling_chart(ok, out_dir / "scaling.png")
    return doc


def throughput_chart(records: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r["label"] + (f" x{r['world_size']}" if r["world_size"] > 1 else "") for r in records]
    values = [r["images_per_s"] for r in records]
    errors = [[v - r["images_per_s_min"] for v, r in zip(values, records)],
              [r["images_per_s_max"] - v for v, r in zip(values, records)]]
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(records) + 1.5))
    ax.barh(range(len(records)), values, xerr=errors, color="#4c72b0", capsize=3)
    ax.set_yticks(range(len(records)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("images/s (all devices; median, range over repeats)")
    ax.set_title(f"training throughput: {records[0]['model']}, {records[0]['device']}")
    fig.tight_layout()
    with fileio.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)


def scaling_chart(records: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    by_label: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_label.setdefault(r["label"], []).append(r)
    for label, group in by_label.items():
        group.sort(key=lambda r: r["world_size"])
        sizes = [r["world_size"] for r in group]
        line = left.plot(sizes, [r["images_per_s"] for r in group], marker="o", label=label)[0]
        base = group[0]["images_per_s"] / group[0]["world_size"]
        left.plot(sizes, [base * n for n in sizes], linestyle="--", color=line.get_color(), alpha=0.5)
        right.plot(sizes, [100 * r["scaling_efficiency"] for r in group], marker="o", label=label)
    left.set_xlabel("processes")
    left.set_ylabel("images/s (dashed: linear)")
    right.set_xlabel("processes")
    right.set_ylabel("scaling efficiency (%)")
    right.set_ylim(0, 110)
    right.legend(fontsize=8)
    fig.tight_layout()
    with fileio.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
