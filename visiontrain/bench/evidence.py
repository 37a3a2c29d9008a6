"""GPU evidence in one short call: the README's GPU figures, each part within its own time budget.

    python -m visiontrain bench evidence OUT [--bundle gpu-bundle] [--rehearse] [--started EPOCH]

scripts/gpu_evidence.sh installs the bundle (make gpu-bundle) and then runs this. The parts run
one after another, each as child processes in a session of their own, killed when the part's
budget or the whole call's deadline (`--deadline-s` after `--started`) runs out. After every part
OUT/results.json and OUT/summary.md are written again: a part that failed, timed out or was never
reached is reported as such, and the parts before it stay intact. The budgets, with a reserve for
the installation, add up to at most the deadline (checked before anything runs); a part never runs
past the deadline, less a few seconds to kill it, and one left with under a quarter of its budget is
not started.

OUT gets summary.md (the README tables' rows, ready to paste), results.json (every part's status,
seconds and figures) and log.txt (the end of each part's output); the shell script adds
install.txt. The work (data,
run directories) goes to --work, outside OUT, since only a few small files come back from a
borrowed machine.

`--rehearse` runs the same parts on a CPU with tiny sizes (fp32, small images, a few steps, no
compilation: inductor on two cores takes minutes) so that the script cannot rot between GPU loans:
make gpu-rehearsal runs it in a fresh Python 3.12 venv holding only the GPU image's packages.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from visiontrain.infra import fileio
from visiontrain.infra.errors import UsageError
from visiontrain.infra.paths import SOURCE_TREE

DEADLINE_S = 540  # 9 minutes: one command of a borrowed machine, with time left to give it back
INSTALL_RESERVE_S = 25  # the bundle's installation, before this module starts
LOG_TAIL_LINES = 60  # per part, in OUT/log.txt
KILL_GRACE_S = 3  # from SIGTERM to SIGKILL of a part's processes; kept free before the deadline
MIN_SHARE = 0.25  # a part with less than this share of its budget left is not started
CPU_REFERENCE = Path(__file__).with_name("recipe_cpu_reference.json")
R50 = ["model.name=resnet50", "model.num_classes=1000", "data.image_size=224", "data.val_image_size=224"]
FAMILIES = {"ConvNeXt-T": "timm/convnext_tiny", "ViT-S/16": "timm/vit_small_patch16_224",
            "EfficientNet-B0": "timm/efficientnet_b0"}
FAMILY_STEPS = ("--steps", "10", "--repeats", "2", "--warmup-steps", "5")  # three models in one part's budget


@dataclass(frozen=True)
class Sizes:
    """What each part runs: the GPU's headline sizes, or the rehearsal's tiny ones."""
    fast_seeds: int
    resnet9_seeds: int
    recipe_overrides: tuple[str, ...]
    cifar_per_class: int | None  # None: the whole training split (45k/5k)
    steps: tuple[str, ...]  # --steps/--repeats/--warmup-steps of the throughput parts
    step_batch: int
    r50_batch: int
    r50_size: int
    compile: bool
    photo_copies: int  # replicated ImageNet photos in the FFCV-fed part's .beton
    ffcv_size: int
    ffcv_batch: int
    ffcv_max_res: int
    label: str
    budget_scale: float = 1.0  # the rehearsal's two CPU cores pay process start-up and numba compilation slowly


GPU = Sizes(fast_seeds=10, resnet9_seeds=3, recipe_overrides=(), cifar_per_class=None,
            steps=("--steps", "30", "--repeats", "3", "--warmup-steps", "10"), step_batch=512, r50_batch=256,
            r50_size=224, compile=True, photo_copies=2000, ffcv_size=160, ffcv_batch=256, ffcv_max_res=500,
            label="1 GPU, bf16")
REHEARSAL = Sizes(fast_seeds=2, resnet9_seeds=1, cifar_per_class=30,
                  recipe_overrides=("run.device=cpu", "train.precision=fp32", "train.epochs=1", "train.batch_size=64",
                                    "schedule.warmup_epochs=0.3", "data.num_workers=1"),
                  steps=("--steps", "2", "--repeats", "1", "--warmup-steps", "1"), step_batch=16, r50_batch=2,
                  r50_size=64, compile=False, photo_copies=200, ffcv_size=64, ffcv_batch=16, ffcv_max_res=96,
                  label="CPU rehearsal, fp32", budget_scale=3.0)


@dataclass
class Context:
    out: Path
    work: Path
    bundle: Path
    sizes: Sizes
    rehearse: bool
    deadline: float  # time.time() by which every part has ended
    part_deadline: float = 0.0
    log: Path = Path()


@dataclass
class Part:
    name: str
    title: str
    budget_s: int
    run: Callable[[Context], None]  # raises on failure; child processes through `command`
    collect: Callable[[Context], dict[str, Any] | None] = lambda ctx: None  # figures, also of a stopped part
    needs: tuple[str, ...] = ()
    available: Callable[[Context], str | None] = lambda ctx: None  # a reason the part cannot run here


@dataclass
class Record:
    name: str
    title: str
    budget_s: int
    status: str = "not reached"  # ok | failed | timed out | not run | missing | not reached
    seconds: float = 0.0
    reason: str = ""
    result: dict[str, Any] | None = None


class PartTimeout(Exception):
    pass


class PartFailed(Exception):
    pass


class CallStopped(BaseException):
    """The evidence call itself got SIGTERM or SIGINT (an outer timeout, Ctrl-C): not one part's failure."""


def command(ctx: Context, *args: str | Path) -> None:
    """Run one child process (and whatever it starts) until it ends or the part's time is up."""
    remaining = ctx.part_deadline - time.time()
    if remaining <= 0:
        raise PartTimeout()
    with ctx.log.open("a") as log:
        log.write(f"$ {' '.join(map(str, args))}\n")
        log.flush()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        # A session of its own: the whole group (FFCV threads, compile workers, torch's children) is killed at once.
        proc = subprocess.Popen([str(a) for a in args], cwd=SOURCE_TREE, stdout=log, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True)
        try:
            code = proc.wait(timeout=remaining)
        except subprocess.TimeoutExpired:
            kill_group(proc)
            raise PartTimeout() from None
        except BaseException:  # CallStopped, KeyboardInterrupt: never leave the part running on the device
            kill_group(proc)
            raise
    if code:
        raise PartFailed(f"{Path(str(args[0])).name} ... exited with {code}: {_last_error(ctx.log)}")


def kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the process group, SIGKILL after a short grace to whatever is left of it.

    The group is killed, not the process: its top (a `bench` command) may exit at once while the training
    process it started treats SIGTERM as preemption and would go on to its next step boundary.
    """
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    grace_end = time.time() + KILL_GRACE_S
    while time.time() < grace_end and _group_alive(proc):
        time.sleep(0.1)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _group_alive(proc: subprocess.Popen) -> bool:
    proc.poll()  # reap the top process once it has exited, or the group never looks empty
    try:
        os.killpg(proc.pid, 0)
        return True
    except ProcessLookupError:
        return False


def _last_error(log: Path) -> str:
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(("error:", "Error", "RuntimeError")) or "Error:" in line]
    return (errors or lines or ["no output"])[-1][:300]


def bench(ctx: Context, *args: str | Path) -> None:
    command(ctx, sys.executable, "-m", "visiontrain", "bench", *args)


# --- the parts ---------------------------------------------------------------------------------------------

def cifar_split(ctx: Context) -> Path:
    per_class = ctx.sizes.cifar_per_class
    return ctx.work / ("cifar10_45k_5k" if per_class is None else f"cifar10_{per_class}_per_class")


def run_cifar_data(ctx: Context) -> None:
    per_class = ctx.sizes.cifar_per_class
    command(ctx, sys.executable, "-c", "import sys; from pathlib import Path; from visiontrain.bench.recipes import "
            "prepare_split as p; p(Path(sys.argv[1]), Path(sys.argv[2]), None if sys.argv[3] == '-' else "
            "int(sys.argv[3]))", ctx.bundle / "data" / "cifar10-train-jpeg.tar.gz", ctx.work,
            "-" if per_class is None else str(per_class))


def recipe_part(config: str, seeds: Callable[[Sizes], int], warmup: bool) -> tuple[Callable, Callable]:
    def run(ctx: Context) -> None:
        bench(ctx, "recipes", "--data", cifar_split(ctx), "--configs", config,
              "--seeds", f"{config}={seeds(ctx.sizes)}", "--label", ctx.sizes.label, "--out", ctx.work / config,
              *([] if warmup else ["--no-warmup"]), *ctx.sizes.recipe_overrides)

    def collect(ctx: Context) -> dict[str, Any] | None:
        path = ctx.work / config / "recipes.json"
        return json.loads(path.read_text()) if path.is_file() else None
    return run, collect


Overrides = Callable[[Context], list[str]]


def step_part(name: str, overrides: Overrides, sweep: Overrides, config: Path | None = None,
              mode: str = "step", bare: bool = True) -> tuple[Callable, Callable]:
    """A `bench step` (or e2e) invocation into WORK/name; its results.json is the part's result.

    `bare=False` leaves out the bare-loop reference: compiling it would double the compilation time.
    """
    def run(ctx: Context) -> None:
        swept = sweep(ctx)
        bench(ctx, mode, *(["-c", config] if config else []), *overrides(ctx),
              *(["--sweep", *swept] if swept else []), *ctx.sizes.steps, *([] if bare else ["--no-bare"]),
              "--out", ctx.work / name)

    def collect(ctx: Context) -> dict[str, Any] | None:
        path = ctx.work / name / "results.json"
        return json.loads(path.read_text()) if path.is_file() else None
    return run, collect


def compiled(ctx: Context, mode: str = "default") -> list[str]:
    """Compilation on the GPU; the rehearsal runs the same points eagerly (inductor takes minutes on two cores)."""
    if not ctx.sizes.compile:
        return ["model.compile=false"]
    return ["model.compile=true", *([f"model.compile_mode={mode}"] if mode != "default" else [])]


def imagenet_beton(ctx: Context) -> Path:
    return ctx.work / f"imagenet_x{ctx.sizes.photo_copies}_{ctx.sizes.ffcv_max_res}"


def run_imagenet_data(ctx: Context) -> None:
    from visiontrain.bench.prep_writer import replicate

    train, val = replicate(ctx.bundle / "data", ctx.work, ctx.sizes.photo_copies)
    # FFCV's own ImageNet options (ffcv-imagenet's write_imagenet.py for ResNet-50).
    command(ctx, sys.executable, "-m", "visiontrain", "prep", "imagenet", "--train", train, "--val", val,
            "--out", imagenet_beton(ctx), "--max-res", str(ctx.sizes.ffcv_max_res), "--write-mode", "proportion",
            "--compress-prob", "0.5", "--jpeg-quality", "90", "--workers", str(max(1, (os.cpu_count() or 2) - 1)),
            "--force")


def ffcv_overrides(ctx: Context) -> list[str]:
    s = ctx.sizes
    return [f"data.path={imagenet_beton(ctx)}", "data.loader=ffcv", "data.progressive_resizing=false",
            f"data.image_size={s.ffcv_size}", f"data.val_image_size={s.ffcv_size}", "model.num_classes=200",
            f"batch_per_device={s.ffcv_batch}", f"data.num_workers={max(1, (os.cpu_count() or 2) - 1)}",
            *precision(ctx)]


def precision(ctx: Context) -> list[str]:
    return ["train.precision=fp32", "run.device=cpu"] if ctx.rehearse else ["train.precision=bf16"]


def family_overrides(ctx: Context, name: str) -> list[str]:
    """One family's step: the ResNet-50 row's batch and size (a fixed-size model built for that size)."""
    from visiontrain.models import spec_of

    size = ctx.sizes.r50_size
    spec = spec_of(name)
    built_for = ([f"model.kwargs.{spec.size_keyword}={size}"]
                 if spec.fixed_input_size and spec.input_size != size else [])
    return [f"model.name={name}", "model.num_classes=1000", f"batch_per_device={ctx.sizes.r50_batch}",
            f"data.image_size={size}", f"data.val_image_size={size}", *built_for,
            *precision(ctx)]  # channels-last as the model prefers it: on for the convnets, off for the ViT


def run_families(ctx: Context) -> None:
    """One `bench step` per model (each has its own sizes and memory format); a model that fails leaves the
    others' rows."""
    failed = []
    for label, name in FAMILIES.items():
        steps = ctx.sizes.steps if ctx.rehearse else FAMILY_STEPS
        try:
            bench(ctx, "step", *family_overrides(ctx, name), *steps, "--no-bare", "--out",
                  ctx.work / "families" / label.replace("/", "_"))
        except PartFailed as err:
            failed.append(f"{label}: {err}")
    if failed:
        raise PartFailed("; ".join(failed))


def collect_families(ctx: Context) -> dict[str, Any] | None:
    points = []
    for label in FAMILIES:
        path = ctx.work / "families" / label.replace("/", "_") / "results.json"
        if path.is_file():
            points += [{**point, "label": label} for point in json.loads(path.read_text()).get("points", [])]
    return {"points": points} if points else None


def parts() -> list[Part]:
    """The headline set, in order, with its budgets (seconds on one H100)."""
    fast_run, fast_collect = recipe_part("fast", lambda s: s.fast_seeds, warmup=True)
    r9_run, r9_collect = recipe_part("resnet9", lambda s: s.resnet9_seeds, warmup=False)

    def r9_step(ctx: Context) -> list[str]:
        return ["model.name=resnet9", f"batch_per_device={ctx.sizes.step_batch}", *precision(ctx)]

    def r50(ctx: Context) -> list[str]:
        size = ctx.sizes.r50_size
        return [*R50[:2], f"data.image_size={size}", f"data.val_image_size={size}",
                f"batch_per_device={ctx.sizes.r50_batch}", "model.channels_last=true", *precision(ctx)]

    ffcv_config = SOURCE_TREE / "configs/imagenet/resnet50.yaml"
    # Budgets from what one H100 took before (docs/benchmarks.md): ResNet-9 trains ~72,000 img/s at batch 512
    # (a 24-epoch resnet9 run ~15 s, plus process start); ResNet-50 compiles in ~52 s.
    table = [
        ("cifar_data", "CIFAR-10 45k/5k split from the bundle's JPEGs", 30, run_cifar_data, None, ()),
        ("fast", "fast recipe (configs/cifar10/fast.yaml)", 150, fast_run, fast_collect, ("cifar_data",)),
        ("resnet9", "resnet9 recipe (configs/cifar10/resnet9.yaml)", 70, r9_run, r9_collect, ("cifar_data",)),
        ("trainer_eager", "trainer vs bare loop: ResNet-9, batch 512, eager",
         20, *step_part("trainer_eager", r9_step, lambda ctx: []), ()),
        ("trainer_compiled", "trainer vs bare loop: ResNet-9, batch 512, compiled",
         35, *step_part("trainer_compiled", lambda ctx: [*r9_step(ctx), *compiled(ctx)], lambda ctx: []), ()),
        ("trainer_graphs", "trainer vs bare loop: ResNet-9, batch 512, compiled with CUDA graphs",
         30, *step_part("trainer_graphs", lambda ctx: [*r9_step(ctx), *compiled(ctx, "reduce-overhead")],
                        lambda ctx: []), ()),
        ("r50_eager", "ResNet-50 224 px bf16 channels-last step, eager",
         20, *step_part("r50_eager", r50, lambda ctx: [], bare=False), ()),
        ("r50_compiled", "ResNet-50 224 px bf16 channels-last step, compiled",
         70, *step_part("r50_compiled", lambda ctx: [*r50(ctx), *compiled(ctx)], lambda ctx: [], bare=False), ()),
        ("imagenet_data", "ImageNet photos replicated, written with FFCV's ResNet-50 options",
         15, run_imagenet_data, None, ()),
        ("ffcv_e2e", "ResNet-50 160 px fed by FFCV: end to end",
         20, *step_part("ffcv_e2e", ffcv_overrides, lambda ctx: [], ffcv_config, mode="e2e"), ("imagenet_data",)),
        ("ffcv_step", "ResNet-50 160 px, the same batches already on the device (the ceiling)",
         20, *step_part("ffcv_step", ffcv_overrides, lambda ctx: [], ffcv_config, bare=False), ("imagenet_data",)),
        ("families", "model families: " + ", ".join(FAMILIES) + " (bf16 step, ResNet-50's batch and size)",
         35, run_families, collect_families, ()),
    ]
    return [Part(name, title, budget, run, collect or (lambda ctx: None), needs)
            for name, title, budget, run, collect, needs in table]


# --- running them ------------------------------------------------------------------------------------------

def check_budgets(plan: list[Part], deadline_s: float) -> None:
    total = sum(p.budget_s for p in plan) + INSTALL_RESERVE_S
    if total > deadline_s:
        raise UsageError(f"the parts' budgets add up to {total} s with the installation, over the deadline "
                         f"{deadline_s:g} s")


def run_parts(ctx: Context, plan: list[Part], write: Callable[[list[Record]], None]) -> list[Record]:
    records = [Record(p.name, p.title, round(p.budget_s * ctx.sizes.budget_scale)) for p in plan]
    for index, (part, record) in enumerate(zip(plan, records)):
        try:
            run_part(ctx, part, record, records)
        except CallStopped:
            record.status, record.reason = "timed out", "the call was stopped"
            for later in records[index + 1:]:
                later.status, later.reason = "not run", "the call was stopped"
            write(records)
            raise
        write(records)
    return records


def run_part(ctx: Context, part: Part, record: Record, records: list[Record]) -> None:
    failed = [r.name for r in records if r.name in part.needs and r.status != "ok"]
    if failed:
        record.status, record.reason = "not run", f"needs {', '.join(failed)}, which did not finish"
        return
    start = time.time()
    end = min(start + record.budget_s, ctx.deadline - KILL_GRACE_S)
    if end - start < MIN_SHARE * record.budget_s:
        record.status, record.reason = "not run", f"only {max(0.0, end - start):.0f} s left before the deadline"
        return
    ctx.part_deadline = end
    ctx.log = ctx.work / "logs" / f"{part.name}.log"
    ctx.log.parent.mkdir(parents=True, exist_ok=True)
    ctx.log.write_text("")
    shutil.rmtree(ctx.work / part.name, ignore_errors=True)  # never report an earlier call's figures
    try:
        missing = part.available(ctx)
        if missing:
            record.status, record.reason = "missing", missing
            return
        part.run(ctx)
        record.status = "ok"
    except PartTimeout:
        record.status, record.reason = "timed out", f"stopped at {end - start:.0f} s"
    except (PartFailed, UsageError) as err:
        record.status, record.reason = "failed", str(err).splitlines()[0][:300]
    except Exception as err:  # anything else is this part's failure, not the end of the call
        record.status, record.reason = "failed", f"{type(err).__name__}: {str(err)[:300]}"
    finally:
        record.seconds = time.time() - start
    try:
        record.result = part.collect(ctx)
    except (OSError, ValueError) as err:
        record.reason += f" (its results could not be read: {err})"


def log_tails(ctx: Context, records: list[Record]) -> str:
    chunks = []
    for record in records:
        path = ctx.work / "logs" / f"{record.name}.log"
        if path.is_file():
            lines = path.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
            chunks.append(f"===== {record.name} ({record.status}, {record.seconds:.0f} s)\n" + "\n".join(lines))
    return "\n\n".join(chunks) + "\n"


def write_outputs(ctx: Context, records: list[Record], environment: dict[str, Any], started: float) -> None:
    from visiontrain.bench.evidence_report import summary

    doc = {"schema": 1, "mode": "rehearsal" if ctx.rehearse else "gpu", "started_unix": started,
           "deadline_s": ctx.deadline - started, "environment": environment,
           "parts": [vars(r) for r in records]}
    fileio.write_json(ctx.out / "results.json", doc)
    fileio.write_text(ctx.out / "summary.md", summary(doc, _cpu_reference()))
    fileio.write_text(ctx.out / "log.txt", log_tails(ctx, records))


def _cpu_reference() -> dict[str, Any]:
    return json.loads(CPU_REFERENCE.read_text())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", type=Path, help="summary.md, results.json and log.txt go here")
    parser.add_argument("--bundle", type=Path, default=SOURCE_TREE / "gpu-bundle",
                        help="the bundle (make gpu-bundle): its data/ is read")
    parser.add_argument("--work", type=Path, help="data and run directories (default: OUT/../OUT-name.work)")
    parser.add_argument("--rehearse", action="store_true", help="tiny sizes on the CPU")
    parser.add_argument("--started", type=float, help="when the call started (Unix time; default: now)")
    parser.add_argument("--deadline-s", type=float, default=DEADLINE_S, help="from --started to the last part's end")


def main(args: argparse.Namespace) -> int:
    from visiontrain.bench.runner import environment as bench_environment

    started = args.started or time.time()
    plan = parts()
    check_budgets(plan, args.deadline_s)
    for name in ("cifar10-train-jpeg.tar.gz", "imagenet-sample-200.tar"):
        if not (args.bundle / "data" / name).is_file():
            raise UsageError(f"--bundle {args.bundle}: data/{name} not found (build the bundle with make gpu-bundle)")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = (args.work or out.parent / f"{out.name}.work").resolve()
    work.mkdir(parents=True, exist_ok=True)
    sizes = REHEARSAL if args.rehearse else GPU
    ctx = Context(out=out, work=work, bundle=args.bundle.resolve(), sizes=sizes, rehearse=args.rehearse,
                  deadline=started + args.deadline_s * sizes.budget_scale)
    environment = bench_environment()
    environment.pop("packages", None)
    environment["install_and_start_s"] = round(time.time() - started, 1)  # scripts/gpu_evidence.sh's part

    def stop(signum, frame):
        raise CallStopped()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    write = lambda rs: write_outputs(ctx, rs, environment, started)  # noqa: E731
    try:
        records = run_parts(ctx, plan, write)
    except CallStopped:
        print(f"stopped; what was measured is in {out}", file=sys.stderr)
        return 1
    print((out / "summary.md").read_text())
    statuses = [r.status for r in records]
    return 0 if all(s in ("ok", "missing") for s in statuses) else 1

