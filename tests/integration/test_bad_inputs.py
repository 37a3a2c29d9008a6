"""Bad inputs and faults: one line naming the value and what is allowed, exit code 2, no traceback,
nothing half-written. Entry points run in this process where the exit code is not the subject."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tests.helpers import PYTHON, ROOT, checkpoint_logged, ok, read_jsonl, run_train, tiny_args
from train import main as train_main
from visiontrain.checkpoint import CheckpointStore, load_checkpoint
from visiontrain.checkpoint.cli import main as checkpoint_main
from visiontrain.checkpoint.weights import read_weights
from visiontrain.config import ModelConfig
from visiontrain.data.prep.cli import main as data_prep_main
from visiontrain.deploy.evaluate import main as evaluate_main
from visiontrain.infra.errors import run_cli
from visiontrain.launch.cli import main as launch_main
from visiontrain.models import build_model
from visiontrain.parallel.network import free_port

# Trains (the module fixture, and runs that resume, export or fine-tune); one process runs the module, which
# shares one trained run.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("bad_inputs")]


def one_line_error(main, argv: list[str], capsys) -> str:
    """Run an entry point in-process; it must end with exit code 2 and exactly one line, no traceback."""
    code = run_cli(main, argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2, err[-3000:]
    assert "Traceback" not in err and len(lines) == 1, err[-3000:]
    return lines[0]


@contextlib.contextmanager
def tmpfs(path: Path, size: str, read_only: bool = False):
    """A small file system of its own at `path`: tests using it are marked requires_root, and skip without root."""
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if mounted.returncode:  # root without the right to mount (a container without CAP_SYS_ADMIN)
        pytest.skip(f"NOT RUN: cannot mount a tmpfs at {path}: {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def read_only_dir(path: Path):
    return tmpfs(path, "1m", read_only=True)


def tiny(shapes_dir: Path, run_dir: Path, *extra: str, loader: str = "torchvision") -> list[str]:
    return tiny_args(shapes_dir, run_dir, "train.epochs=1", "schedule.warmup_epochs=0", "log.tensorboard=false",
                     "log.plots=false", *extra, loader=loader)


@pytest.fixture(scope="session")  # once per test process: xdist may interleave other modules
def trained(shapes_dir, tmp_path_factory) -> Path:
    """A finished one-epoch run (channels-last ResNet-9, torchvision loader) with its checkpoint."""
    run_dir = tmp_path_factory.mktemp("bad") / "run"
    assert run_cli(train_main, tiny(shapes_dir, run_dir)) == 0
    return run_dir


# --------------------------------------------------------------------------------- config and arguments
@pytest.mark.parametrize("override, expected", [
    ("train.epochs=${nope}", "config key 'train.epochs' cannot be resolved: Interpolation key 'nope' not found"),
    ("data.mean=[3,0.5,0.5]", "config key 'data.mean' = [3.0, 0.5, 0.5] is invalid: three numbers (R, G, B) in [0, 1]"),
    ("data.std=[nan,0.2,0.2]", "config key 'data.std' = [nan, 0.2, 0.2] is invalid: three numbers (R, G, B) in (0, 1]"),
    ("data.mean=[nan,0.2,0.2]", "config key 'data.mean' = [nan, 0.2, 0.2] is invalid"),
    ("parallel.timeout=5", "config key 'parallel.timeout' = 5 is invalid: must be between 10 and 604800 seconds"),
])
def test_bad_config_values_are_named(override, expected, tmp_path, capsys):
    line = one_line_error(train_main, [override, f"run.dir={tmp_path / 'run'}"], capsys)
    assert line.startswith(f"error: {expected}")
    assert not (tmp_path / "run").exists()


def test_a_config_path_that_is_a_directory_says_so(tmp_path, capsys):
    line = one_line_error(train_main, ["-c", str(tmp_path)], capsys)
    assert line.startswith(f"error: config file {tmp_path} is a directory; give a YAML file")


def test_overrides_may_stand_before_and_after_the_options(shapes_dir, tmp_path, capsys):
    argv = ["optim.lr=0.2", "-c", "configs/demo/train.yaml", "train.batch_size=64", "--check", "2", "model.width=8",
            f"run.dir={tmp_path / 'run'}", f"data.path={shapes_dir}", "data.image_size=16", "data.val_image_size=16"]
    assert run_cli(train_main, argv) == 0
    assert "ok: resnet9 on 2 process(es), micro-batch 32" in capsys.readouterr().out
    from visiontrain.launch.cli import parse_args

    args = parse_args(["submit", "a.b=1", "-c", "x.yaml", "c.d=2", "--nodes", "2", "e.f=3"])
    assert (args.overrides, args.config, args.nodes) == (["a.b=1", "c.d=2", "e.f=3"], "x.yaml", 2)


def test_check_validates_for_a_launcher_before_its_workers_start(tmp_path, capsys):
    """The documented `python train.py --check N ... && torchrun --nproc_per_node N train.py ...`."""
    line = one_line_error(train_main, ["--check", "5", "-c", "configs/demo/train.yaml",
                                       f"run.dir={tmp_path / 'run'}"], capsys)
    assert line == ("error: config key 'train.batch_size' = 256 is invalid: the global batch must be divisible by "
                    "world size x train.grad_accum_steps = 5 x 1 = 5")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("overrides, expected", [
    (["data.path=PATH/nowhere"], "no train.beton in data.path=PATH/nowhere (data.loader=ffcv)"),
    (["data.path=PATH/nowhere", "data.loader=torchvision"],
     "config key 'data.path' = 'PATH/nowhere' does not exist: data.loader=torchvision reads image folders"),
    (["data.path=SHAPES", "finetune.init_from=PATH/gone.pt"], "config key 'finetune.init_from' = 'PATH/gone.pt' does "
                                                               "not exist"),
    (["data.path=SHAPES", "data.image_size=32"], "data.recipe=cifar reads train.beton images as they are, but they "
                                                 "are not all 32x32"),
])
def test_check_refuses_a_dataset_or_starting_weights_that_are_not_there(shapes_dir, tmp_path, capsys, overrides,
                                                                         expected):
    fixed = [o.replace("PATH", str(tmp_path)).replace("SHAPES", str(shapes_dir)) for o in overrides]
    sizes = [] if "data.image_size=32" in overrides else ["data.image_size=16", "data.val_image_size=16"]
    line = one_line_error(train_main, ["--check", "1", "-c", "configs/demo/train.yaml", f"run.dir={tmp_path / 'run'}",
                                       *sizes, *fixed], capsys)
    assert line.startswith("error: " + expected.replace("PATH", str(tmp_path)))
    assert not (tmp_path / "run").exists()


def test_launch_refuses_zero_tasks_per_node(capsys):
    line = one_line_error(launch_main, ["submit", "--cluster", "local", "--tasks-per-node", "0"], capsys)
    assert line == "error: --tasks-per-node 0 is invalid: at least 1"


# ------------------------------------------------------------------------------------------- run dir
@pytest.mark.requires_root
def test_run_dir_under_a_file_or_on_a_read_only_file_system(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    line = one_line_error(train_main, [f"run.dir={blocker / 'run'}"], capsys)
    assert line == f"error: run.dir={blocker / 'run'} cannot be created: {blocker} is a file"
    with read_only_dir(tmp_path / "ro") as ro:
        line = one_line_error(train_main, [f"run.dir={ro / 'run'}"], capsys)
        assert line.startswith(f"error: run.dir={ro / 'run'} cannot be written: {ro} is read-only")


@pytest.mark.parametrize("where", ["component", "whole"])
def test_a_run_dir_name_too_long_for_the_file_system_is_one_line(tmp_path, capsys, where):
    long_dir = tmp_path / ("d" * 300) if where == "component" else tmp_path.joinpath(*["p" * 200] * 21)
    line = one_line_error(train_main, [f"run.dir={long_dir / 'run'}"], capsys)
    limit = "255 bytes per name" if where == "component" else "4096 bytes in all"
    assert line.startswith(f"error: run.dir={long_dir / 'run'} is too long for this file system (at most {limit}")
    assert list(tmp_path.iterdir()) == []


def test_an_output_name_too_long_is_one_line(tmp_path, capsys):
    out = tmp_path / ("o" * 300)
    code = run_cli(data_prep_main, ["synthetic", "--out", str(out), "--train-per-class", "2",
                                    "--val-per-class", "1", "--size", "8"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err[-2000:]
    assert f"cannot use {out}: a name in the path is too long for the file system" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("case", ["missing", "text", "other_architecture", "refused_pickle"])
def test_a_bad_starting_checkpoint_is_refused_before_the_run_dir_is_written(shapes_dir, tmp_path, capsys, case):
    source = tmp_path / {"missing": "nothing.pth", "text": "notes.pth", "other_architecture": "r18.safetensors",
                         "refused_pickle": "pickled.pth"}[case]
    if case == "text":
        source.write_text("hello")
    elif case == "other_architecture":
        save_file(build_model(ModelConfig(name="cifar_resnet18", width=8)).state_dict(), str(source))
    elif case == "refused_pickle":
        torch.save({"model": Payload(tmp_path / "pwned")}, source)
    run_dir = tmp_path / "run"
    line = one_line_error(train_main, tiny(shapes_dir, run_dir, f"finetune.init_from={source}"), capsys)
    assert f"finetune.init_from='{source}'" in line
    assert {"missing": "does not exist", "text": "is not a readable PyTorch state dict",
            "other_architecture": "does not fit the model",
            "refused_pickle": "is not a readable PyTorch state dict"}[case] in line
    assert not run_dir.exists() and not (tmp_path / "pwned").exists()


def test_a_misspelt_parameter_to_train_briefly_is_named_before_the_run_dir_is_written(shapes_dir, tmp_path, capsys):
    run_dir = tmp_path / "run"
    line = one_line_error(train_main, tiny(shapes_dir, run_dir, "model.name=cifar_fast", "model.width=8",
                                           "optim.freeze_after_params=[whiten.bais]", "optim.freeze_after_epochs=1"),
                          capsys)
    assert "'whiten.bais'" in line and "closest: whiten.bias" in line
    assert not run_dir.exists()


def test_resuming_with_another_model_names_the_keys_and_leaves_the_run_untouched(trained, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(trained, run_dir)
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    line = one_line_error(train_main, tiny(Path("unused"), run_dir, "model.width=16", "model.name=cifar_resnet18"),
                          capsys)
    assert line == (f"error: run.dir={run_dir} holds checkpoints of another configuration (model.name 'resnet9' "
                    "there, 'cifar_resnet18' now; model.width 8 there, 16 now): choose a new run.dir, or start from "
                    f"its weights with finetune.init_from={run_dir}")
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before


def test_a_checkpoint_of_another_model_without_its_config_is_refused(trained, shapes_dir, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(trained / "checkpoints", run_dir / "checkpoints")  # no config.yaml to compare with
    line = one_line_error(train_main, tiny(shapes_dir, run_dir, "model.width=16"), capsys)
    assert "was written for another model or optimizer" in line and "size mismatch" in line
    assert f"finetune.init_from={run_dir}" in line


def test_a_failed_resume_leaves_the_run_and_its_config_as_they_were(trained, shapes_dir, tmp_path, capsys):
    """config.yaml agrees with the command, the newest checkpoint does not: the load fails, and the run's
    config (written only once the start has succeeded) still holds the epochs it was started with."""
    run_dir = tmp_path / "run"
    shutil.copytree(trained, run_dir)
    config = run_dir / "config.yaml"
    config.write_text(config.read_text().replace("width: 8", "width: 16"))
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    line = one_line_error(train_main, tiny(shapes_dir, run_dir, "model.width=16", "train.epochs=3"), capsys)
    assert "was written for another model or optimizer" in line
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before


# ------------------------------------------------------------------------------------------------ data
def _copy_dataset(shapes_dir: Path, out: Path) -> Path:
    out.mkdir()
    for name in ("train.beton", "val.beton", "meta.json"):
        shutil.copy(shapes_dir / name, out / name)
    return out


@pytest.mark.parametrize("damage, expected", [
    ("truncate", "train.beton is "),  # "not a readable .beton file" or "truncated or damaged": where it was cut
    ("header", "train.beton is "),
    ("meta_not_json", "meta.json is not valid JSON"),
    ("meta_classes", "train.beton has labels up to 9 but meta.json names 3 classes"),
])
def test_damaged_ffcv_data_is_named_before_training(shapes_dir, tmp_path, capsys, damage, expected):
    data = _copy_dataset(shapes_dir, tmp_path / "data")
    beton = data / "train.beton"
    if damage == "truncate":
        os.truncate(beton, beton.stat().st_size // 2)
    elif damage == "header":
        with open(beton, "r+b") as f:
            f.write(b"\xff" * 64)
    elif damage == "meta_not_json":
        (data / "meta.json").write_text("{not json")
    else:
        meta = json.loads((data / "meta.json").read_text())
        (data / "meta.json").write_text(json.dumps({**meta, "class_names": meta["class_names"][:3]}))
    run_dir = tmp_path / "run"
    extra = ["model.num_classes=3"] if damage == "meta_classes" else []
    line = one_line_error(train_main, tiny(data, run_dir, *extra, loader="ffcv"), capsys)
    assert expected in line and ("python -m visiontrain prep" in line or damage == "meta_not_json")
    assert not run_dir.exists()


def test_an_unreadable_image_is_named(shapes_dir, tmp_path, capsys):
    data = tmp_path / "folders"
    shutil.copytree(shapes_dir / "train", data / "train")
    shutil.copytree(shapes_dir / "val", data / "val")
    broken = sorted((data / "train").rglob("*.png"))[7]
    broken.write_bytes(broken.read_bytes()[:40])
    line = one_line_error(train_main, tiny(data, tmp_path / "run", "data.num_workers=1"), capsys)
    assert line.startswith(f"error: image {broken} cannot be read (") and "remove or replace it" in line


def test_data_prep_refuses_one_class_and_a_missing_or_ignored_val_labels_file(tmp_path, capsys):
    one = tmp_path / "one" / "only"
    one.mkdir(parents=True)
    (one / "a.png").write_bytes(b"x")
    line = one_line_error(data_prep_main, ["folder", "--train", str(tmp_path / "one"), "--out",
                                           str(tmp_path / "out")], capsys)
    assert "has one class folder (only): a classifier needs at least 2" in line
    for split in ("train", "val"):
        for name in ("a", "b"):
            (tmp_path / "imagenet" / split / name).mkdir(parents=True)
            (tmp_path / "imagenet" / split / name / "x.png").write_bytes(b"x")
    common = ["imagenet", "--train", str(tmp_path / "imagenet" / "train"), "--val", str(tmp_path / "imagenet" / "val"),
              "--out", str(tmp_path / "out")]
    line = one_line_error(data_prep_main, common + ["--val-labels", str(tmp_path / "nowhere.csv")], capsys)
    assert line == f"error: --val-labels {tmp_path / 'nowhere.csv'} does not exist"
    labels = tmp_path / "labels.txt"
    labels.write_text("x a\n")
    line = one_line_error(data_prep_main, common + ["--val-labels", str(labels)], capsys)
    assert "has class folders, which give the labels: drop --val-labels" in line
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------- outputs
@pytest.mark.requires_root
def test_unwritable_outputs_name_the_path_and_the_reason(trained, shapes_dir, tmp_path, capsys):
    with read_only_dir(tmp_path / "ro") as ro:
        line = one_line_error(checkpoint_main, ["export", str(trained), "--out", str(ro / "w.safetensors")], capsys)
        assert line.startswith(f"error: could not write {ro}/") and "read-only file system" in line
        line = one_line_error(evaluate_main, ["--weights", str(trained), "--out", str(ro / "eval")], capsys)
        assert line.startswith(f"error: could not write {ro}/") and "read-only file system" in line
        line = one_line_error(data_prep_main, ["synthetic", "--out", str(ro / "shapes"), "--train-per-class", "2",
                                               "--val-per-class", "1", "--size", "8"], capsys)
        assert line.startswith(f"error: could not write {ro}") and "read-only file system" in line


def test_an_output_path_that_is_a_directory_is_named(trained, tmp_path, capsys):
    line = one_line_error(checkpoint_main, ["export", str(trained), "--out", str(tmp_path)], capsys)
    assert line == f"error: cannot use {tmp_path}: it is a directory; choose another location or fix its permissions"


@pytest.mark.requires_root
def test_a_full_disk_while_checkpointing_is_named_and_keeps_the_previous_checkpoint(tmp_path):
    with tmpfs(tmp_path / "small", size="1m") as small:
        store = CheckpointStore(small / "run", keep_last=2)
        store.save({"weights": torch.ones(1000)}, step=1, periodic=True, best=False)
        with pytest.raises(OSError) as raised:
            store.save({"weights": torch.ones(2_000_000)}, step=2, periodic=True, best=False)  # 8 MB
        assert raised.value.errno == errno.ENOSPC and raised.value.filename.endswith("step_000000002.pt")
        assert [p.name for p in (small / "run" / "checkpoints").iterdir()] == ["step_000000001.pt"]
        assert torch.equal(load_checkpoint(small / "run" / "checkpoints" / "step_000000001.pt")["weights"],
                           torch.ones(1000))

    result = subprocess.run([PYTHON, "-c", "import errno, os, sys\nfrom visiontrain.infra.errors import run_cli\n"
                             "def main(argv):\n    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "
                             "'/data/run/ckpt.pt')\nsys.exit(run_cli(main))"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.strip() == (
        "error: could not write /data/run/ckpt.pt: no space left on the device; free space or choose another "
        "location (files written before are intact)")


def _srun_like_tasks(args: list[str], world: int, port: int) -> list[subprocess.Popen]:
    """train.py tasks as srun starts them: each a process of its own, no launcher that stops the others."""
    tasks = []
    for rank in range(world):
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank),
               "SLURM_STEP_NUM_TASKS": str(world), "SLURM_STEP_TASKS_PER_NODE": str(world), "SLURM_NODEID": "0",
               "SLURM_STEP_NODELIST": "127.0.0.1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        tasks.append(subprocess.Popen([PYTHON, "train.py", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, start_new_session=True))
    return tasks


STRATEGIES = {"ddp": (),
              "zero2": ("parallel.strategy=deepspeed", "parallel.deepspeed_config=configs/deepspeed/zero2.json")}


def _disk_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in [path, *path.rglob("*")] if p.is_file())


@pytest.mark.requires_root
@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_when_only_rank_0_cannot_write_its_checkpoint_every_rank_ends_within_seconds(shapes_dir, tmp_path, strategy):
    """A full disk under the second checkpoint (DDP: rank 0 writes it; ZeRO-2: rank 0 the model, each rank its
    optimizer shard): rank 0 names it, the others do not wait in the next collective for the process-group
    timeout (set long here, so only the agreement can end them)."""
    def args(run_dir: Path, epochs: int) -> list[str]:
        return tiny(shapes_dir, run_dir, f"train.epochs={epochs}", "log.report=false", "parallel.timeout=600",
                    *STRATEGIES[strategy])

    measure = _srun_like_tasks(args(tmp_path / "measure", 1), 2, free_port())
    assert [task.wait(timeout=180) for task in measure] == [0, 0]
    first = next(p for p in (tmp_path / "measure" / "checkpoints").iterdir() if p.name.startswith("step_"))
    with tmpfs(tmp_path / "small", f"{int(_disk_bytes(first) * 1.5) // 1024 + 64}k") as small:
        run_dir = small / "run"
        tasks = _srun_like_tasks(args(run_dir, 2), 2, free_port())
        ended = []
        for task in tasks:
            try:
                ended.append(task.communicate(timeout=90))
            except subprocess.TimeoutExpired:
                for other in tasks:
                    os.killpg(other.pid, 9)
                pytest.fail("a rank was still waiting 90 s after rank 0 failed to write")
        errs = [err for _, err in ended]
        assert [task.returncode for task in tasks] == [2, 2], errs[0][-3000:] + errs[1][-3000:]
        assert all("Traceback" not in err and err.count("error: ") == 1 for err in errs), errs
        if strategy == "ddp":  # rank 0 alone writes: it names the disk, rank 1 its failure
            assert "no space left on the device" in errs[0] and "rank 0 failed while writing" in errs[1], errs
        else:  # each rank writes its optimizer shard: whichever met the full disk names it, the other its failure
            assert any("no space left on the device" in err for err in errs), errs
            assert all("no space left on the device" in err or "failed while writing" in err for err in errs), errs
        saved = sorted(p.name for p in (run_dir / "checkpoints").iterdir() if not p.name.startswith("zero_to_"))
        assert saved == ["best.pt" if strategy == "ddp" else "best", first.name], saved  # nothing partial
        events = read_jsonl(run_dir / "metrics.jsonl")
        assert [e["step"] for e in events if e["event"] == "checkpoint"] == [6] and events[-1]["event"] == "val"


def test_when_rank_0_cannot_write_the_final_report_every_rank_ends_with_one_line(shapes_dir, tmp_path):
    """After the last checkpoint rank 0 alone writes the evaluation report, the weights and the summary: a
    failure there (a file where the report's directory goes) ends the other rank at once, naming it, instead
    of leaving it in the next collective until the process-group timeout (set long here)."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "eval").write_text("a file where the report directory goes\n")
    tasks = _srun_like_tasks(tiny(shapes_dir, run_dir, "parallel.timeout=600"), 2, free_port())
    try:
        ended = [task.communicate(timeout=120) for task in tasks]
    except subprocess.TimeoutExpired:
        pytest.fail("a rank was still waiting 120 s into a one-epoch run")
    finally:
        for task in tasks:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(task.pid, signal.SIGKILL)
    (_, err0), (_, err1) = ended
    assert [task.returncode for task in tasks] == [2, 2], err0[-2000:] + err1[-2000:]
    assert all("Traceback" not in err and err.count("error: ") == 1 for err in (err0, err1)), (err0, err1)
    assert f"cannot use {run_dir / 'eval'}" in err0
    assert "rank 0 failed while writing the evaluation report (exit 2)" in err1
    assert any(p.name.startswith("step_") for p in (run_dir / "checkpoints").iterdir())  # the epoch is kept


def test_a_rank_that_stops_answering_ends_the_others_after_parallel_timeout(trained, shapes_dir, tmp_path):
    """A node that vanishes without closing its connections, played by a stopped process: the other rank gives up
    after parallel.timeout seconds with one line, not after torch's 30 minutes."""
    run_dir = tmp_path / "run"
    tasks = _srun_like_tasks(tiny(shapes_dir, run_dir, "train.epochs=30", "log.report=false",
                                  "parallel.timeout=10"), 2, free_port())
    try:
        deadline = time.monotonic() + 120
        while not checkpoint_logged(run_dir) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert checkpoint_logged(run_dir), tasks[1].stderr.read() if tasks[1].poll() is not None else "no checkpoint"
        os.kill(tasks[0].pid, signal.SIGSTOP)
        stopped = time.monotonic()
        _, err1 = tasks[1].communicate(timeout=60)
        waited = time.monotonic() - stopped
    finally:
        for task in tasks:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(task.pid, signal.SIGKILL)
            task.wait()
    assert 8 <= waited < 40, waited
    tail = "\n".join(err1.splitlines()[-12:])  # the exception, where a traceback would end
    assert tasks[1].returncode == 1 and "Traceback" not in err1 and err1.count("error: ") == 1, tail
    # gloo names the 10 s wait, or (when the connection was closed after it) only says so
    assert "waited parallel.timeout" in err1 and "for another process of this run" in err1, tail


# --------------------------------------------------------------------------------------- left behind
def test_temporaries_of_a_killed_writer_are_removed_on_the_next_start(trained, shapes_dir, tmp_path):
    dead = subprocess.Popen([PYTHON, "-c", "pass"])
    dead.wait()  # a pid that no process has any more
    run_dir = tmp_path / "run"
    shutil.copytree(trained, run_dir)
    # The writer of the last one ran on another node: its pid names a process alive here (this one). The run
    # that holds the run directory's lock owns every temporary in it, whatever pid its name carries.
    leftovers = [run_dir / "checkpoints" / f".step_000000009.{dead.pid}-0123abcd.tmp.pt",
                 run_dir / "checkpoints" / ".step_000000009.tmp", run_dir / f".config.{dead.pid}-0123abcd.tmp.yaml",
                 run_dir / "checkpoints" / f".step_000000008.{os.getpid()}-0123abcd.tmp.pt"]
    leftovers[0].write_bytes(b"half a checkpoint")
    leftovers[1].mkdir()
    leftovers[2].write_text("half a config")
    leftovers[3].write_bytes(b"half a checkpoint from another node")
    assert run_cli(train_main, tiny(shapes_dir, run_dir, "train.epochs=2")) == 0
    assert [p.name for p in leftovers if p.exists()] == []
    out = tmp_path / "shapes"
    half = tmp_path / f".shapes.{dead.pid}-0123abcd.tmp"
    half.mkdir()
    assert run_cli(data_prep_main, ["synthetic", "--out", str(out), "--train-per-class", "2", "--val-per-class", "1",
                                    "--size", "8"]) == 0
    assert not half.exists() and (out / "train").is_dir()


def test_a_second_run_on_a_run_directory_in_use_is_refused_naming_the_holder(trained, shapes_dir, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(trained, run_dir)
    hold = ("import sys, time; from visiontrain.train.run_lock import RunLock; RunLock(sys.argv[1]).acquire(); "
            "print('held', flush=True); time.sleep(120)")
    holder = subprocess.Popen([PYTHON, "-c", hold, str(run_dir)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"  # a run in progress on this directory
        before = {p.name: p.stat().st_mtime_ns for p in run_dir.rglob("*")}
        second = run_train(tiny(shapes_dir, run_dir, "train.epochs=3"))  # a job submitted twice
        assert second.returncode == 2, second.stderr[-2000:]
        line = second.stderr.strip().splitlines()[-1]
        assert "is in use by another run" in line and f"pid {holder.pid}" in line and "Traceback" not in second.stderr
        assert {p.name: p.stat().st_mtime_ns for p in run_dir.rglob("*")} == before  # nothing written
    finally:
        holder.kill()
        holder.wait()
    rerun = run_train(tiny(shapes_dir, run_dir, "train.epochs=3"))  # the holder died: taken over at once
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "took over the lock" in rerun.stderr and not (run_dir / "writer.lock").exists()


@pytest.mark.requires_root
def test_a_full_disk_while_preparing_data_names_the_output(tmp_path, capsys):
    with tmpfs(tmp_path / "small", "200k") as small:
        out = small / "out"
        line = one_line_error(data_prep_main, ["synthetic", "--out", str(out), "--train-per-class", "50",
                                               "--val-per-class", "10", "--size", "32"], capsys)
        assert line.startswith(f"error: could not write {out}: no space left on the device"), line
        assert list(small.iterdir()) == []  # the half-written temporary is gone


def test_an_output_below_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("mine")
    code = run_cli(data_prep_main, ["synthetic", "--out", str(tmp_path / "file" / "out"), "--train-per-class", "2",
                                    "--val-per-class", "1", "--size", "8"])
    err = capsys.readouterr().err
    assert code == 2 and "file: it is a file where a directory is needed" in err and "Traceback" not in err
    assert (tmp_path / "file").read_text() == "mine"


def test_export_of_a_directory_that_does_not_exist_says_so(tmp_path, capsys):
    line = one_line_error(checkpoint_main, ["export", str(tmp_path / "nowhere")], capsys)
    assert line == f"error: run directory {tmp_path / 'nowhere'} does not exist"


def test_evaluate_names_the_class_count_to_set(trained, capsys):
    line = one_line_error(evaluate_main, ["--weights", str(trained), "model.num_classes=5"], capsys)
    assert "has a 10-class head and the model 5 classes: set model.num_classes=10" in line
    assert "keep_head" not in line


def test_export_of_channels_last_and_ema_runs_loads_into_the_plain_model(shapes_dir, trained, tmp_path, capsys):
    ema_run = tmp_path / "ema"
    assert run_cli(train_main, tiny(shapes_dir, ema_run, "train.ema=true", "model.channels_last=false")) == 0
    for run in (trained, ema_run):
        out = tmp_path / f"{run.name}.safetensors"
        assert run_cli(checkpoint_main, ["export", str(run), "--out", str(out)]) == 0
        names = [out] + ([out.with_name(f"{out.stem}_ema.safetensors")] if run == ema_run else [])
        for exported in names:
            model = build_model(ModelConfig(name="resnet9", width=8))
            model.load_state_dict(read_weights(exported), strict=True)
    final = read_weights(trained / "weights.safetensors")
    exported = read_weights(tmp_path / "run.safetensors")
    assert all(torch.equal(exported[k], final[k]) for k in final)


# ---------------------------------------------------------------------------------- untrusted files
class Payload:
    """Unpickling this creates `marker`: the proof that a reader ran code from a file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


_ZERO2_CHECKPOINT = """
import os, sys, torch, deepspeed, deepspeed.ops
os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                  MASTER_PORT=sys.argv[2])
torch.distributed.init_process_group("gloo")
deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
deepspeed.init_distributed(dist_backend="gloo")
model = torch.nn.Linear(4, 3)
config = {"train_batch_size": 2, "zero_optimization": {"stage": 2}, "zero_allow_untested_optimizer": True}
engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), config=config)
engine.backward(engine(torch.randn(2, 4)).sum())
engine.step()
engine.save_checkpoint(sys.argv[1], tag="step_000000001", save_latest=False)
"""


def _plant(kind: str, run_dir: Path, marker: Path) -> None:
    checkpoints = run_dir / "checkpoints"
    checkpoints.mkdir(parents=True)
    if kind == "ddp_checkpoint":
        torch.save({"format_version": 1, "model": Payload(marker)}, checkpoints / "step_000000001.pt")
        return
    if kind == "ema_in_checkpoint":
        torch.save({"format_version": 1, "model": {}, "ema": {"module.x": Payload(marker)}},
                   checkpoints / "step_000000001.pt")
        return
    step = checkpoints / "step_000000001"
    if kind == "deepspeed_model_states":
        step.mkdir()
        torch.save({"module": {"w": Payload(marker)}}, step / "mp_rank_00_model_states.pt")
        stage = 0
    else:  # a real ZeRO-2 checkpoint whose optimizer states carry the payload
        ok(subprocess.run([PYTHON, "-c", _ZERO2_CHECKPOINT, str(checkpoints), str(free_port())], cwd=ROOT,
                          capture_output=True, text=True, timeout=300))
        torch.save({"optimizer_state_dict": Payload(marker)}, step / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
        stage = 2
    (step / "visiontrain.json").write_text(json.dumps({"step": 1, "world_size": 1, "zero_stage": stage}))


@pytest.mark.parametrize("kind", ["ddp_checkpoint", "ema_in_checkpoint", "deepspeed_model_states",
                                  "deepspeed_optimizer_states"])
def test_no_reader_runs_code_from_a_checkpoint(kind, shapes_dir, tmp_path, capsys):
    marker = tmp_path / "pwned"
    planted = tmp_path / "planted"
    _plant(kind, planted, marker)
    ema = ["finetune.use_ema=true"] if kind == "ema_in_checkpoint" else []
    one_line_error(train_main, tiny(shapes_dir, tmp_path / "ft", f"finetune.init_from={planted}", *ema), capsys)
    one_line_error(checkpoint_main, ["export", str(planted)], capsys)
    one_line_error(evaluate_main, ["--weights", str(planted), "-c", "configs/demo/train.yaml", "model.width=8"]
                   + (["--ema"] if ema else []), capsys)
    # Resuming: DeepSpeed's engine reads its files under the same weights-only rule (its model states first: a
    # planted optimizer shard is only reached behind matching model states, which this tiny Linear is not;
    # test_deepspeed's ZeRO-2 restarts show that real shards load under the rule).
    if kind != "deepspeed_optimizer_states":
        strategy = (["parallel.strategy=deepspeed", "parallel.deepspeed_config=configs/deepspeed/zero2.json"]
                    if kind.startswith("deepspeed") else [])
        result = run_train(tiny(shapes_dir, planted, *strategy))
        assert result.returncode == 2 and "no readable checkpoint" in result.stderr.strip().splitlines()[-1], \
            result.stderr[-3000:]
    assert not marker.exists()
