"""`python -m visiontrain bench models`: which timm and torchvision architectures go through the whole project.

For every architecture of the chosen families up to `--max-params` million parameters: build it with 10
classes (fixed-size models built for `--image-size`), train it under the trainer on random tensors for two
epochs of two steps at a constant lr, train it again for one epoch and resume that run to the second (the
resumed weights must equal the uninterrupted run's, bit for bit), and export the uninterrupted run to ONNX with the
export's numeric check. One row per architecture goes to OUT/results.jsonl as soon as it is known (a
long walk can be stopped and read; run again with the same `--out`, it goes on with the architectures
not in it yet), and OUT/summary.md counts them per family with every failure's one-line reason. Each
architecture runs in a child process on the CPU (forked): one that crashes the interpreter (a native
fault) or hangs past `--timeout` is a failed row at the stage it reached, and the walk goes on.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import io
import json
import logging
import shutil
import signal
import time
from pathlib import Path
from typing import Any

FAMILY_NAMES = ("timm", "torchvision")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--family", nargs="+", choices=FAMILY_NAMES, default=list(FAMILY_NAMES))
    parser.add_argument("--match", nargs="+", default=["*"],
                        help="only architectures whose name matches one of these patterns (fnmatch)")
    parser.add_argument("--max-params", type=float, default=100.0, help="millions of parameters (default 100)")
    parser.add_argument("--limit", type=int, default=0, help="at most this many architectures per family (0: all)")
    parser.add_argument("--every", type=int, default=1,
                        help="a systematic sample: every k-th architecture in name order (default 1: all)")
    parser.add_argument("--image-size", type=int, default=64, help="training and export resolution (default 64)")
    parser.add_argument("--timeout", type=int, default=300, help="seconds per architecture (default 300)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/models"))


def architectures(family: str, patterns: list[str], limit: int, every: int = 1) -> list[str]:
    if family == "timm":
        import timm

        names = [f"timm/{arch}" for arch in timm.list_models()]
    else:
        from visiontrain.models.torchvision_models import architectures as torchvision_architectures

        names = [f"torchvision/{arch}" for arch in torchvision_architectures()]
    chosen = sorted(name for name in names
                    if any(fnmatch.fnmatch(name.partition("/")[2], pattern) for pattern in patterns))[::every]
    return chosen[:limit] if limit else chosen


class _Timeout(BaseException):
    """SIGALRM: this architecture ran past --timeout. A BaseException, so that no handler of the run catches it."""


def _on_alarm(signum, frame):
    raise _Timeout()


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else 'no detail'}"[:300]


def overrides_for(name: str, size: int, run_dir: Path, epochs: int) -> list[str]:
    from visiontrain.models import spec_of

    spec = spec_of(name)
    size = max(size, spec.min_input_size)  # Inception v3, MaxViT: at the smallest size they take
    value = f"[{size},{size}]" if spec.size_keyword == "input_size" else str(size)
    built_for = ([f"model.kwargs.{spec.size_keyword}={value}"]
                 if spec.fixed_input_size and spec.size_keyword and spec.input_size != size else [])
    return [f"model.name={name}", "model.num_classes=10", *built_for, "data.loader=random",
            f"data.image_size={size}", f"data.val_image_size={size}", "data.random_train_samples=32",
            "data.random_val_samples=8", "train.batch_size=16", f"train.epochs={epochs}", "train.precision=fp32",
            # constant lr: a 1-epoch run continued to 2 then sees the uninterrupted run's rates
            "schedule.name=constant", "schedule.warmup_epochs=0", "optim.name=adamw", "optim.lr=1e-4",
            "run.device=cpu", f"run.dir={run_dir}",
            "log.progress_bar=false", "log.tensorboard=false", "log.plots=false", "log.report=false"]


def _parameters(build_model, model_cfg) -> int:
    """The parameter count, from a build on the meta device (no memory, no init time: a billion-parameter
    architecture is skipped in a second); on the CPU where a builder computes from tensor values (RegNets)."""
    import torch

    try:
        with torch.device("meta"):
            model = build_model(model_cfg)
    except (NotImplementedError, RuntimeError):
        model = build_model(model_cfg)
    return sum(p.numel() for p in model.parameters())


def check_one(name: str, size: int, work: Path, max_params: float, progress: dict[str, str]) -> dict[str, Any]:
    """Build, train, resume and export one architecture; the row of the table. `progress["stage"]` says where
    it is, for the row of a timeout."""
    import torch

    from visiontrain.checkpoint.weights import read_weights
    from visiontrain.config import ModelConfig, load_config
    from visiontrain.deploy.export import main as export_main
    from visiontrain.infra.errors import Preempted, run_cli
    from visiontrain.models import build_model
    from visiontrain.train.run import train

    row: dict[str, Any] = {"model": name, "family": name.partition("/")[0]}
    try:
        # Counted as built by default first: a model too large for the walk is skipped even where the walk's
        # image size would not fit it (ViT-H/14's patches do not divide 64 px).
        params = _parameters(build_model, ModelConfig(name=name, num_classes=10)) / 1e6
        if params > max_params:
            return {**row, "params_m": round(params, 2), "stage": "skipped", "ok": None,
                    "reason": f"{params:.0f} M parameters > --max-params"}
        cfg = load_config(None, overrides_for(name, size, work / "reference", 2))
        params = _parameters(build_model, ModelConfig(**vars(cfg.model))) / 1e6
    except Exception as err:  # noqa: BLE001 - any failure is this architecture's row
        return {**row, "stage": "build", "ok": False, "reason": _one_line(err)}
    row["params_m"] = round(params, 2)
    progress["stage"] = "train"
    try:
        train(None, overrides_for(name, size, work / "reference", 2))
        progress["stage"] = "resume"
        train(None, overrides_for(name, size, work / "resumed", 1))
        train(None, overrides_for(name, size, work / "resumed", 2))
        reference = read_weights(work / "reference" / "weights.safetensors")
        resumed = read_weights(work / "resumed" / "weights.safetensors")
        if not all(torch.equal(reference[k], resumed[k]) for k in reference):
            return {**row, "stage": "resume", "ok": False,
                    "reason": "resumed weights differ from the uninterrupted run"}
        progress["stage"] = "export"
        errors = io.StringIO()
        with contextlib.redirect_stderr(errors):
            code = run_cli(export_main, [str(work / "reference"), "--format", "onnx", "--out",
                                         str(work / "model.onnx")])
        if code != 0:
            last = (errors.getvalue().strip().splitlines() or [f"exit {code}"])[-1]
            return {**row, "stage": "export", "ok": False, "reason": f"export exited with {code}: {last}"[:300]}
        check = json.loads((work / "model.onnx.json").read_text())["export_check"]
        return {**row, "stage": "done", "ok": True, "max_rel_diff": check["max_rel_diff"]}
    except Preempted:
        raise  # SIGTERM / SIGUSR1 to the walk: stop it, not this row
    except Exception as err:  # noqa: BLE001
        return {**row, "stage": progress["stage"], "ok": False, "reason": _one_line(err)}


def summary(rows: list[dict[str, Any]], seconds: float, size: int, every: int = 1) -> str:
    sample = f"Every {every}th architecture in name order. " if every > 1 else ""
    lines = ["# Model compatibility", "",
             f"{sample}Each architecture with 10 classes at {size} px (or its minimum, where larger) on the CPU: "
             "trained 2 epochs under the trainer, "
             "resumed from epoch 1 (bit-exact), exported to ONNX with the numeric check. "
             f"Wall time {seconds / 60:.1f} min.", "",
             "| family | tried | build | train | resume | export | skipped (size) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for family in sorted({r["family"] for r in rows}):
        mine = [r for r in rows if r["family"] == family]
        tried = [r for r in mine if r["stage"] != "skipped"]

        def passed(stages: tuple[str, ...], tried: list[dict[str, Any]] = tried) -> int:
            """Rows past these stages: done, or failed at a later one."""
            return sum(1 for r in tried if r["ok"] or r["stage"] not in stages)

        lines.append(f"| {family} | {len(tried)} | {passed(('build',))} | {passed(('build', 'train'))} | "
                     f"{passed(('build', 'train', 'resume'))} | {sum(1 for r in tried if r['ok'])} | "
                     f"{len(mine) - len(tried)} |")
    failures = [r for r in rows if r["ok"] is False]
    if failures:
        lines += ["", "## Failures", "", "| model | stage | reason |", "|---|---|---|"]
        lines += [f"| {r['model']} | {r['stage']} | {r['reason'].replace('|', '/')} |" for r in failures]
    return "\n".join(lines) + "\n"


class _StageReports(dict):
    """check_one's `progress` in the child: each stage is also sent to the parent, which names it in the row of
    a child that dies."""

    def __init__(self, conn):
        super().__init__(stage="build")
        self.conn = conn

    def __setitem__(self, key: str, value: str) -> None:
        super().__setitem__(key, value)
        self.conn.send(("stage", value))


def _child(conn, name: str, size: int, work: Path, max_params: float, timeout: int) -> None:
    import os

    progress = _StageReports(conn)
    signal.signal(signal.SIGALRM, _on_alarm)
    logging.disable(logging.WARNING)  # the trainer's per-run lines would bury the table
    signal.alarm(timeout)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            row = check_one(name, size, work, max_params, progress)
    except _Timeout:
        row = {"model": name, "family": name.partition("/")[0], "stage": progress["stage"], "ok": False,
               "reason": f"timeout: not done in {timeout} s"}
    signal.alarm(0)
    conn.send(("row", row))
    conn.close()
    os._exit(0)  # no interpreter shutdown in a fork: the parent's atexit handlers and finalizers are not ours


def check_isolated(name: str, size: int, work: Path, max_params: float, timeout: int) -> dict[str, Any]:
    """`check_one` in a forked child; a child that dies or outlives the timeout is a failed row."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    reader, writer = context.Pipe(duplex=False)
    child = context.Process(target=_child, args=(writer, name, size, work, max_params, timeout))
    child.start()
    writer.close()
    stage, row = "build", None
    deadline = time.monotonic() + timeout + 30  # the child's own alarm comes first unless a native call blocks it
    try:
        while row is None and reader.poll(max(0.0, deadline - time.monotonic())):
            kind, value = reader.recv()
            stage, row = (value, None) if kind == "stage" else (stage, value)
    except EOFError:  # the child died without a row
        pass
    child.join(5)
    if child.is_alive():
        child.kill()
        child.join()
    if row is None:
        code = child.exitcode
        how = f"signal {-code}" if code is not None and code < 0 else f"exit {code}"
        reason = (f"the process died ({how}{', ' + signal.Signals(-code).name if code and code < 0 else ''})"
                  if code not in (None, -signal.SIGKILL) or time.monotonic() < deadline
                  else f"timeout: not done in {timeout} s (stuck in a native call)")
        row = {"model": name, "family": name.partition("/")[0], "stage": stage, "ok": False, "reason": reason}
    return row


def _done_rows(results: Path) -> list[dict[str, Any]]:
    if not results.is_file():
        return []
    return [json.loads(line) for line in results.read_text().splitlines() if line.strip()]


def main(args: argparse.Namespace) -> int:
    from visiontrain.infra.errors import UsageError

    if args.max_params <= 0 or args.image_size < 8 or args.timeout < 1 or args.limit < 0 or args.every < 1:
        raise UsageError("--max-params must be > 0, --image-size >= 8, --timeout >= 1, --limit >= 0, --every >= 1")
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    work = out / "work"
    results = out / "results.jsonl"
    rows = _done_rows(results)
    done = {row["model"] for row in rows}
    if done:
        print(f"{len(done)} architectures already in {results}: going on with the others", flush=True)
    try:
        with open(results, "a") as log:
            for family in args.family:
                for name in architectures(family, args.match, args.limit, args.every):
                    if name in done:
                        continue
                    shutil.rmtree(work, ignore_errors=True)
                    t0 = time.perf_counter()
                    row = check_isolated(name, args.image_size, work, args.max_params, args.timeout)
                    row["seconds"] = round(time.perf_counter() - t0, 1)
                    rows.append(row)
                    log.write(json.dumps(row) + "\n")
                    log.flush()
                    print(f"{name}: {'ok' if row['ok'] else row['stage']} "
                          f"{row.get('reason', '')} ({row['seconds']} s)", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    seconds = sum(row.get("seconds", 0.0) for row in rows)  # over every run that filled results.jsonl
    text = summary(rows, seconds, args.image_size, args.every)
    (out / "summary.md").write_text(text)
    print(text)
    return 0
