"""Training-state memory per rank: DDP against DeepSpeed ZeRO 1/2/3.

Each strategy runs a few real training steps (train.py's Trainer, random data) with
N processes. Every rank reports the growth of its peak resident memory (VmHWM) from
just before the model is built: parameters, gradients, optimizer states, the backend's
communication buffers and ZeRO partitions, plus the activations of one step, which are
the same for every strategy (same model, batch and resolution).
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

STRATEGIES = {"ddp": None, "zero1": "configs/deepspeed/zero1.json", "zero2": "configs/deepspeed/zero2.json",
            "zero3": "configs/deepspeed/zero3.json"}


def rss_bytes(field: str = "VmRSS:") -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) * 1024
    return 0


def worker(strategy: str, model: str, image_size: int, batch: int, steps: int, optimizer: str = "sgd") -> None:
    """One rank of a measurement (run under torchrun)."""
    from visiontrain.config import load_config
    from visiontrain.parallel.launchers import detect_launch
    from visiontrain.parallel.runtime import all_gather_objects, init_runtime
    from visiontrain.train.run import build_run

    world = detect_launch().world_size
    overrides = ["data.loader=random", f"model.name={model}", f"optim.name={optimizer}", "model.num_classes=1000",
                 f"data.image_size={image_size}", f"data.val_image_size={image_size}", "train.precision=fp32",
                 f"train.batch_size={batch * world}", "train.epochs=2", "run.device=cpu",
                 "schedule.warmup_epochs=0", "log.progress_bar=false", "log.tensorboard=false",
                 f"data.random_train_samples={batch * world * steps}"]
    if STRATEGIES[strategy]:
        overrides += ["parallel.strategy=deepspeed", f"parallel.deepspeed_config={STRATEGIES[strategy]}"]
    with tempfile.TemporaryDirectory() as run_dir:
        cfg = load_config(None, overrides + [f"run.dir={run_dir}"])
        runtime = init_runtime(cfg.run.device, cfg.parallel)  # before the baseline: libraries are not state
        gc.collect()
        baseline = rss_bytes("VmRSS:")
        run = build_run(cfg, runtime=runtime)
        run.trainer.train_one_epoch(0)
        growth = rss_bytes("VmHWM:") - baseline
        params = sum(p.numel() for p in run.trainer.model.parameters())
    rows = all_gather_objects({"rank": runtime.rank, "peak_growth_bytes": growth, "baseline_bytes": baseline,
                               "params": params}, runtime.world_size)
    if runtime.is_main:
        print("MEMORY " + json.dumps({"strategy": strategy, "ranks": rows}), flush=True)


def run(model: str, nproc: int, image_size: int, batch: int, steps: int, strategies: list[str],
        optimizer: str = "sgd") -> list[dict]:
    results = []
    for strategy in strategies:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
               "-m", "visiontrain.bench.memory", strategy, model, str(image_size), str(batch), str(steps), optimizer]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        line = next((out for out in proc.stdout.splitlines() if out.startswith("MEMORY ")), None)
        if proc.returncode or line is None:
            raise RuntimeError(f"memory run for {strategy} failed:\n{proc.stderr[-3000:]}")
        results.append(json.loads(line[len("MEMORY "):]))
    return results


def report(results: list[dict], model: str, nproc: int, optimizer: str = "sgd") -> str:
    mib = 2**20
    params = results[0]["ranks"][0]["params"]
    lines = [f"{model} ({params / 1e6:.1f} M parameters, {4 * params / mib:.0f} MiB in fp32), {optimizer}, "
             f"{nproc} processes, CPU:",
             "peak memory growth per rank over a few training steps (model, gradients, optimizer, buffers, "
             "activations)",
             "| strategy | per rank (MiB, max over ranks) | vs DDP |", "|---|---|---|"]
    ddp = None
    for result in results:
        growth = max(r["peak_growth_bytes"] for r in result["ranks"]) / mib
        ddp = ddp or growth
        lines.append(f"| {result['strategy']} | {growth:.0f} | {growth / ddp:.2f}x |")
    return "\n".join(lines)


if __name__ == "__main__":
    strategy_name, model_name, size, per_rank_batch, step_count, optimizer_name = sys.argv[1:7]
    worker(strategy_name, model_name, int(size), int(per_rank_batch), int(step_count), optimizer_name)
