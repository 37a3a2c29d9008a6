"""`python -m visiontrain bench deploy RUN_DIR`: the run's exported models side by side on this CPU.

Every ONNX file of RUN_DIR/export (or --onnx FILES; fp32 and int8 exports of one run), and the run's
PyTorch model (its weights.safetensors: not the EMA weights) in eager mode (and torch.compile with
--compile) for reference, each at 1 thread and at all cores: batch-1 latency (p50 and p90 of
single-image calls) and batch-N throughput (images/s over the median batch), measured in rounds that
alternate the models (a slow minute of a noisy machine hits all of them); the file size; top-1 on the
run's validation split (or its first --images). Writes results.json, results.md and a PNG chart to
--out, and prints the table with the CPU model and its int8 instruction flags.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from visiontrain.infra import fileio
from visiontrain.infra.errors import UsageError

INT8_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="a run directory, or an .onnx file exported from one")
    parser.add_argument("--onnx", nargs="+", type=Path, metavar="FILE",
                        help="ONNX files to compare (default: every .onnx in the run's export/)")
    parser.add_argument("--compile", action="store_true", help="also PyTorch with torch.compile (minutes on a CPU)")
    parser.add_argument("--batch", type=int, default=64, help="the throughput batch size (default 64)")
    parser.add_argument("--runs", type=int, default=40, help="batch-1 calls per model, thread count and round")
    parser.add_argument("--batches", type=int, default=3, help="batch-N calls per model, thread count and round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (after one warm-up call each)")
    parser.add_argument("--threads", type=int, nargs="+", help="thread counts (default: 1 and all cores)")
    parser.add_argument("--images", type=int, default=0, help="top-1 on the first N validation images (0: all)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/deploy"))


def cpu_description() -> dict[str, Any]:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model in ("", platform.machine()):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return {"cpu": model, "cores": len(os.sched_getaffinity(0)), "int8_flags": [f for f in INT8_FLAGS if f in flags]}


class Candidate:
    """A model under test: `run(threads)` gives a function of a float32 NCHW numpy batch -> logits."""

    def __init__(self, name: str, kind: str, size_bytes: int | None, factory: Callable[[int], Callable]):
        self.name, self.kind, self.size_bytes, self.factory = name, kind, size_bytes, factory
        self.runners: dict[int, Callable] = {}

    def run(self, threads: int) -> Callable:
        if threads not in self.runners:
            self.runners[threads] = self.factory(threads)
        return self.runners[threads]


def onnx_candidate(path: Path) -> Candidate:
    def session(threads: int) -> Callable:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.log_severity_level = 3
        made = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        name = made.get_inputs()[0].name
        return lambda batch: made.run(None, {name: batch})[0]

    contract = fileio.read_json(path.with_name(path.name + ".json"), "input contract") \
        if path.with_name(path.name + ".json").is_file() else {}
    kind = f"onnxruntime {contract.get('precision', '?')}"
    return Candidate(path.name, kind, path.stat().st_size, session)


def torch_candidate(model, compiled: bool) -> Candidate:
    import copy

    import torch

    def runner(threads: int) -> Callable:
        module = copy.deepcopy(model).eval()
        if compiled:
            # Inductor bakes the thread count into its CPU kernels and dynamo would reuse the graph compiled for
            # another count: a fresh compilation per thread count.
            torch._dynamo.reset()
            torch.set_num_threads(threads)
            module = torch.compile(module)

        @torch.inference_mode()
        def call(batch: np.ndarray) -> np.ndarray:
            torch.set_num_threads(threads)
            return module(torch.from_numpy(batch)).numpy()

        return call

    return Candidate("pytorch " + ("compiled" if compiled else "eager"), "pytorch fp32", None, runner)


def measure(candidates: list[Candidate], size: int, threads: list[int], batch: int, runs: int, batches: int,
            rounds: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(0)
    one = rng.standard_normal((1, 3, size, size), dtype=np.float32)
    many = rng.standard_normal((batch, 3, size, size), dtype=np.float32)
    single: dict[tuple, list[float]] = {}
    full: dict[tuple, list[float]] = {}
    for number in range(rounds + 1):  # round 0 warms every runner up (compilation, thread pools, caches)
        for count in threads:
            for candidate in candidates:
                run = candidate.run(count)
                key = (candidate.name, count)
                for _ in range(runs if number else 2):
                    began = time.perf_counter()
                    run(one)
                    if number:
                        single.setdefault(key, []).append(time.perf_counter() - began)
                for _ in range(batches if number else 1):
                    began = time.perf_counter()
                    run(many)
                    if number:
                        full.setdefault(key, []).append(time.perf_counter() - began)
    rows = []
    for candidate in candidates:
        for count in threads:
            times = np.array(single[(candidate.name, count)]) * 1000
            rows.append({"model": candidate.name, "kind": candidate.kind, "threads": count,
                         "file_mb": None if candidate.size_bytes is None else round(candidate.size_bytes / 2**20, 3),
                         "batch1_p50_ms": round(float(np.percentile(times, 50)), 3),
                         "batch1_p90_ms": round(float(np.percentile(times, 90)), 3),
                         f"batch{batch}_images_per_s": round(batch / statistics.median(full[(candidate.name, count)]),
                                                             1)})
    return rows


def top1(candidates: list[Candidate], trained, limit: int, threads: int) -> dict[str, float]:
    """Each model's top-1 (%) on the same validation images, in one pass."""
    hits = dict.fromkeys((c.name for c in candidates), 0)
    seen = 0
    for images, labels, valid in trained.eval_data(128).val:
        keep = min(int(valid.sum()), limit - seen) if limit else int(valid.sum())
        if keep <= 0:
            break
        batch, truth = images[valid][:keep].numpy(), labels[valid][:keep].numpy()
        for candidate in candidates:
            hits[candidate.name] += int((candidate.run(threads)(batch).argmax(1) == truth).sum())
        seen += keep
    if seen == 0:
        raise UsageError(f"the run's validation split at data.path={trained.cfg.data.path} has no images")
    return {name: round(100 * count / seen, 2) for name, count in hits.items()} | {"images": seen}


def markdown(doc: dict[str, Any]) -> str:
    env, batch = doc["environment"], doc["settings"]["batch"]
    lines = [f"# Deployment benchmark: {doc['run']}", "",
             f"CPU: {env['cpu']} ({env['cores']} cores available; int8 flags: "
             f"{', '.join(env['int8_flags']) or 'none'}); onnxruntime {env['onnxruntime']}, torch {env['torch']}. "
             f"Top-1 on {doc['top1']['images']} validation images.", "",
             f"| model | runs as | threads | file (MB) | batch-1 p50 (ms) | batch-1 p90 (ms) | batch-{batch} images/s "
             "| top-1 (%) |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in doc["rows"]:
        size = "-" if r["file_mb"] is None else f"{r['file_mb']:.2f}"
        lines.append(f"| {r['model']} | {r['kind']} | {r['threads']} | {size} | {r['batch1_p50_ms']:.2f} | "
                     f"{r['batch1_p90_ms']:.2f} | {r[f'batch{batch}_images_per_s']:,.0f} | "
                     f"{doc['top1'].get(r['model'], float('nan')):.2f} |")
    return "\n".join(lines) + "\n"


def chart(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, batch = doc["rows"], doc["settings"]["batch"]
    names = list(dict.fromkeys(r["model"] for r in rows))
    threads = list(dict.fromkeys(r["threads"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.6 * len(names) * len(threads) + 2))
    for ax, key, label in ((axes[0], "batch1_p50_ms", "batch-1 latency p50 (ms, lower is better)"),
                           (axes[1], f"batch{batch}_images_per_s", f"batch-{batch} images/s (higher is better)")):
        for offset, count in enumerate(threads):
            values = [next(r[key] for r in rows if r["model"] == n and r["threads"] == count) for n in names]
            positions = [i * (len(threads) + 1) + offset for i in range(len(names))]
            ax.barh(positions, values, label=f"{count} thread{'s' if count > 1 else ''}")
        ax.set_yticks([i * (len(threads) + 1) + (len(threads) - 1) / 2 for i in range(len(names))], names, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel(label)
        ax.legend(fontsize=8)
    fig.suptitle(f"{doc['run']} on {doc['environment']['cpu']}", fontsize=10)
    fig.tight_layout()
    with fileio.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def main(args: argparse.Namespace, argv: list[str]) -> int:
    import onnxruntime
    import torch

    from visiontrain.deploy.trained import load_trained

    if min(args.batch, args.runs, args.batches, args.rounds) < 1 or args.images < 0:
        raise UsageError("--batch, --runs, --batches and --rounds must be >= 1, --images >= 0")
    source = Path(args.source)
    run_dir = source
    if source.suffix == ".onnx":
        contract = source.with_name(source.name + ".json")
        recorded = fileio.read_json(contract, "input contract").get("training_run", {}).get("dir") \
            if contract.is_file() else None
        if not recorded or not Path(recorded).is_dir():
            raise UsageError(f"{source}: its training run is not recorded or not here; give the run directory")
        run_dir = Path(recorded)
    exports = sorted(f for f in (run_dir / "export").glob("*.onnx") if not f.name.startswith("."))  # no temp files
    files = args.onnx or ([source] if source.suffix == ".onnx" else exports)
    missing = [str(f) for f in files if not Path(f).is_file()]
    if missing or not files:
        raise UsageError(f"no ONNX model to compare ({', '.join(missing) or f'none in {run_dir}/export'}); export "
                         f"them: python -m visiontrain export {run_dir} --format onnx [--quantize int8]")
    threads = sorted(set(args.threads or [1, len(os.sched_getaffinity(0))]))
    if min(threads) < 1:
        raise UsageError(f"--threads {threads}: each >= 1")
    trained = load_trained(run_dir, key="source")
    candidates = [onnx_candidate(Path(f)) for f in files] + [torch_candidate(trained.model, False)]
    if args.compile:
        candidates.append(torch_candidate(trained.model, True))
    rows = measure(candidates, trained.preprocess.size, threads, args.batch, args.runs, args.batches, args.rounds)
    environment = cpu_description() | {"onnxruntime": onnxruntime.__version__, "torch": torch.__version__}
    doc = {"run": str(run_dir), "command": "python -m visiontrain bench " + " ".join(argv),
           "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "environment": environment,
           "settings": {"batch": args.batch, "runs": args.runs, "batches": args.batches, "rounds": args.rounds,
                        "threads": threads, "image_size": trained.preprocess.size},
           "rows": rows, "top1": top1(candidates, trained, args.images, max(threads))}
    args.out.mkdir(parents=True, exist_ok=True)
    fileio.write_json(args.out / "results.json", doc)
    fileio.write_text(args.out / "results.md", markdown(doc))
    chart(doc, args.out / "deploy.png")
    print(markdown(doc))
    print(f"wrote {args.out / 'results.md'}, results.json and deploy.png")
    return 0
