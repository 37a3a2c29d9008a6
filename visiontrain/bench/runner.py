"""Runs throughput points, each in its own processes, and collects their records.

Every point starts fresh processes (`python -m visiontrain.bench.throughput`, under
torchrun when it has several): compiled graphs, allocator state and peak-memory counters
of one point never leak into the next, and a point that fails (say, out of memory at the
largest batch of a sweep) is recorded as failed while the others still run.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

from visiontrain.bench.sweep import Point
from visiontrain.infra.errors import UsageError
from visiontrain.infra.paths import SOURCE_TREE

DEEPSPEED_CONFIGS = SOURCE_TREE / "configs" / "deepspeed"
# `strategy=NAME` in overrides and sweeps: the parallel strategy (and ZeRO stage) in one word.
STRATEGY_ALIASES = {"ddp": ["parallel.strategy=ddp"]} | {
    f"zero{stage}": ["parallel.strategy=deepspeed",
                     f"parallel.deepspeed_config={DEEPSPEED_CONFIGS / f'zero{stage}.json'}"]
    for stage in range(4)
}


def expand_aliases(overrides: tuple[str, ...] | list[str]) -> list[str]:
    expanded = []
    for item in overrides:
        key, _, value = item.partition("=")
        if key == "backend":
            warnings.warn(f"the benchmark's backend={value} is deprecated and will be removed in the next release; "
                          f"use strategy={value}", FutureWarning, stacklevel=2)
            key = "strategy"
        if key != "strategy":
            expanded.append(item)
        elif value in STRATEGY_ALIASES:
            expanded += STRATEGY_ALIASES[value]
        else:
            raise UsageError(f"strategy={value!r} is not a benchmark strategy; allowed: {', '.join(STRATEGY_ALIASES)}")
    return expanded


def parse_nproc(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise UsageError(f"--nproc {text!r} is not a comma-separated list of process counts >= 1")
    return sorted(set(counts))


def check_points(config: str | None, mode: str, points: list[Point], nprocs: list[int]) -> None:
    """Every point's config must load and fit every process count: fail before running any."""
    from visiontrain.bench.throughput import point_config
    from visiontrain.parallel.batch_plan import BatchPlan

    if config is not None and not Path(config).is_file():
        raise UsageError(f"config file {config!r} does not exist")
    for point in points:
        for nproc in nprocs:
            cfg = point_config({"config": config, "mode": mode, "overrides": expand_aliases(point.overrides)}, nproc)
            BatchPlan.for_world(cfg.train, nproc)
            if cfg.run.device == "cuda" and not torch.cuda.is_available():
                raise UsageError("run.device=cuda but this machine has no CUDA device; use run.device=auto or cpu")
            if cfg.run.device != "cpu" and torch.cuda.is_available() and nproc > torch.cuda.device_count():
                raise UsageError(f"--nproc {nproc} is more processes than the {torch.cuda.device_count()} "
                                 "GPU(s) of this machine")


def environment() -> dict[str, Any]:
    """train.py's environment record (environment.environment), in the benchmark's documented keys."""
    from visiontrain.infra.environment import environment as run_environment

    cuda = torch.cuda.is_available()
    base = run_environment(torch.device("cuda" if cuda else "cpu"))
    env: dict[str, Any] = {
        "hostname": base["hostname"], "python": base["python"], "torch": torch.__version__, "cuda": base["cuda"],
        "cudnn": base["cudnn"], "cpu_count": base["cpu_count"], "cpu_model": base["cpu"],
        "platform": platform.platform(), "git_commit": base["git_commit"], "packages": base["packages"],
        "gpu": None, "gpu_count": 0, "driver": None,
    }
    if cuda:
        env.update(gpu=base["device_name"], gpu_count=base["device_count"], driver=base["driver"],
                   gpu_memory_mib=torch.cuda.get_device_properties(0).total_memory // 2**20)
    return env


def threads_per_process(nprocs: list[int]) -> int:
    """Same CPU threads for every process count, so CPU scaling compares like with like."""
    return max(1, (os.cpu_count() or 1) // max(nprocs))


def run_point(spec: dict[str, Any], nproc: int, threads: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        spec_path, out_path = Path(tmp) / "spec.json", Path(tmp) / "record.json"
        spec_path.write_text(json.dumps(spec))
        worker = ["-m", "visiontrain.bench.throughput", str(spec_path), str(out_path)]
        if nproc == 1:
            cmd = [sys.executable, *worker]
        else:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
                   *worker]
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(threads))}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode == 0 and out_path.is_file():
            return json.loads(out_path.read_text())
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    if proc.returncode == 2 and errors:
        raise UsageError(errors[-1][len("error: "):])
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    # A rank's exception says why; torchrun's own summary after it ("error_file: <N/A>") does not.
    raised = [line for line in lines if re.match(r"^(\[rank\d+\]:)?\s*[\w.]*(Error|Exception): ", line)]
    reason = raised[0] if raised else next((line for line in reversed(lines) if "Error" in line or "error" in line),
                                           lines[-1] if lines else "")
    return {"label": spec["label"], "mode": spec["mode"], "overrides": spec["overrides"], "world_size": nproc,
            "error": reason.strip()[-500:], "returncode": proc.returncode}


def run(mode: str, config: str | None, points: list[Point], nprocs: list[int], steps: int, repeats: int,
        warmup_steps: int, bare: bool, peak_tflops: float | None,
        progress: Callable[[str], None] = print) -> list[dict[str, Any]]:
    threads = threads_per_process(nprocs)
    records = []
    total = len(points) * len(nprocs)
    for point in points:
        for nproc in nprocs:
            spec = {"mode": mode, "config": config, "overrides": expand_aliases(point.overrides),
                    "label": point.label, "steps": steps, "repeats": repeats, "warmup_steps": warmup_steps,
                    "bare": bare, "peak_tflops": peak_tflops}
            record = run_point(spec, nproc, threads)
            records.append(record)
            where = f" x{nproc}" if len(nprocs) > 1 or nproc > 1 else ""
            if "error" in record:
                progress(f"[{len(records)}/{total}] {point.label}{where}: FAILED ({record['error']})")
            else:
                progress(f"[{len(records)}/{total}] {point.label}{where}: {record['images_per_s']:.1f} img/s, "
                         f"step p50 {record['step_ms_p50']:.1f} ms")
    return records


def add_scaling_efficiency(records: list[dict[str, Any]]) -> None:
    """Per label: images/s per process relative to the smallest process count measured (1.0 = linear)."""
    by_label: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        if "error" not in record:
            by_label.setdefault(record["label"], []).append(record)
    for group in by_label.values():
        base = min(group, key=lambda r: r["world_size"])
        base_per_process = base["images_per_s"] / base["world_size"]
        for record in group:
            record["scaling_efficiency"] = record["images_per_s"] / record["world_size"] / base_per_process
            record["scaling_base_world_size"] = base["world_size"]
