"""train.py end to end, as users launch it: files written, numbers asserted."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.helpers import (
    assert_identical_continuation,
    checkpoint_logged,
    ok,
    read_json,
    read_jsonl,
    run_train,
    tiny_args,
    train_until,
)
from visiontrain.checkpoint import load_checkpoint
from visiontrain.checkpoint.weights import read_weights
from visiontrain.config import load_config
from visiontrain.models import build_model
from visiontrain.train.logs import EVENT_KEYS

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("train")]


@pytest.fixture(scope="session")  # once per test process: xdist may interleave other modules
def single_run(shapes_dir, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("runs") / "single"
    ok(run_train(tiny_args(shapes_dir, run_dir)))
    return run_dir


def test_run_directory_holds_every_documented_file(single_run):
    names = {p.name for p in single_run.iterdir()}
    assert {"config.yaml", "metrics.jsonl", "tb", "checkpoints", "summary.json", "weights.safetensors",
            "curves.png"} <= names
    assert any(p.name.startswith("events.out.tfevents") for p in (single_run / "tb").iterdir())
    events = read_jsonl(single_run / "metrics.jsonl")
    assert {e["event"] for e in events} >= {"train", "epoch", "val", "checkpoint"}
    assert all(set(EVENT_KEYS) <= set(e) for e in events)
    assert [e["epoch"] for e in events if e["event"] == "val"] == [1, 2]
    summary = read_json(single_run / "summary.json")
    assert summary["world_size"] == 1 and summary["epochs"] == 2 and summary["steps"] == 12
    assert summary["final"]["samples"] == 110
    env = summary["environment"]
    assert env["packages"]["torch"] == torch.__version__.split("+")[0] and env["device_count"] == 1
    assert env["git_commit"] is None or len(env["git_commit"]) == 40
    # The evaluation report of the final weights: the same numbers as the final val event.
    report = read_json(single_run / "eval" / "eval.json")
    assert report["samples"] == 110 and report["top1"] == pytest.approx(summary["final"]["top1"])
    assert len((single_run / "eval" / "predictions.csv").read_text().splitlines()) == 1 + 110
    assert {"report.md", "confusion.png", "per_class.png"} <= {p.name for p in (single_run / "eval").iterdir()}


def test_exported_weights_load_into_a_fresh_model_strictly(single_run):
    cfg = load_config(single_run / "config.yaml")
    model = build_model(cfg.model)
    model.load_state_dict(read_weights(single_run / "weights.safetensors"), strict=True)
    ckpt = load_checkpoint(sorted((single_run / "checkpoints").glob("step_*.pt"))[-1])
    assert all(torch.equal(ckpt["model"][k].cpu(), v) for k, v in model.state_dict().items())


def test_rerunning_the_saved_config_reproduces_the_weights_bit_for_bit(single_run, tmp_path):
    again = tmp_path / "again"
    ok(run_train(["-c", str(single_run / "config.yaml"), f"run.dir={again}"]))
    first, second = read_weights(single_run / "weights.safetensors"), read_weights(again / "weights.safetensors")
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_resume_false_refuses_an_existing_run_dir(single_run):
    before = (single_run / "metrics.jsonl").read_text()
    result = run_train(["-c", str(single_run / "config.yaml"), "run.resume=false"])
    assert result.returncode == 2
    assert "already exists and run.resume=false" in result.stderr.strip().splitlines()[-1]
    assert (single_run / "metrics.jsonl").read_text() == before


@pytest.mark.parametrize("loader", ["torchvision", "ffcv"])
def test_two_cpu_processes_form_a_world_of_two_with_identical_parameters(shapes_dir, tmp_path, loader):
    run_dir = tmp_path / "ddp"
    result = ok(run_train(tiny_args(shapes_dir, run_dir, "log.sample_ids=true", loader=loader), nproc=2))
    assert "Traceback" not in result.stderr  # nothing alarming after a run that worked (FFCV's numba included)
    summary = read_json(run_dir / "summary.json")
    assert summary["world_size"] == 2 and summary["launcher"] == "torchrun"
    digests = {r["params_sha256"] for r in summary["ranks"]}
    assert len(summary["ranks"]) == 2 and len(digests) == 1
    per_rank = [read_jsonl(run_dir / "ranks" / f"rank{r}_samples.jsonl") for r in range(2)]
    for epoch in range(2):
        a, b = (set(rank[epoch]["indices"]) for rank in per_rank)
        assert len(a) == len(b) == 192 and not a & b  # each rank saw different samples
    assert all(e["samples"] == 110 for e in read_jsonl(run_dir / "metrics.jsonl") if e["event"] == "val")


def test_accelerate_launch_forms_a_world_of_two_and_refuses_the_cpu_trap(shapes_dir, tmp_path):
    run_dir = tmp_path / "acc"
    ok(run_train(tiny_args(shapes_dir, run_dir, "train.epochs=1", "schedule.warmup_epochs=0"),
                 # a port other than test_deepspeed's 29500
                 launcher="accelerate --multi_gpu --num_processes 2 --main_process_port 29517"))
    assert read_json(run_dir / "summary.json")["world_size"] == 2
    trap = run_train(tiny_args(shapes_dir, tmp_path / "trap"), launcher="accelerate --num_processes 2")
    assert trap.returncode != 0 and "started 1 process although --num_processes > 1" in trap.stderr
    assert not (tmp_path / "trap").exists()


def test_sigkill_after_the_half_way_checkpoint_then_restart_is_bit_exact(shapes_dir, tmp_path):
    args = ("train.epochs=4", "data.num_workers=1")
    reference = tmp_path / "reference"
    ok(run_train(tiny_args(shapes_dir, reference, *args), nproc=2))
    killed = tmp_path / "killed"
    train_until(tiny_args(shapes_dir, killed, *args), 2, lambda: checkpoint_logged(killed, epoch=2))
    assert not (killed / "summary.json").exists()
    result = ok(run_train(tiny_args(shapes_dir, killed, *args), nproc=2))
    assert "resuming from" in result.stderr
    resumed_at = [e for e in read_jsonl(killed / "metrics.jsonl") if e["event"] == "resume"][0]["epoch"]
    assert resumed_at in (2, 3)  # killed after the half-way checkpoint, before the end
    assert_identical_continuation(reference, killed)


# The torchvision loader only: the loop's resume is loader-independent, and FFCV's
# replay of a resumed epoch is tested at the loader level (test_augment_parity.py, test_ffcv_loader.py).
@pytest.mark.parametrize("loader", ["torchvision"])
def test_mid_epoch_checkpoint_resume_with_two_processes_is_bit_exact(shapes_dir, tmp_path, loader):
    args = ("train.epochs=2", "checkpoint.every_steps=4", "data.num_workers=1", "data.cutout=4")
    reference = tmp_path / "reference"
    ok(run_train(tiny_args(shapes_dir, reference, *args, loader=loader), nproc=2))
    killed = tmp_path / "killed"
    train_until(tiny_args(shapes_dir, killed, *args, loader=loader), 2, lambda: checkpoint_logged(killed, step=4))
    result = ok(run_train(tiny_args(shapes_dir, killed, *args, loader=loader), nproc=2))
    assert "(epoch 0, step 4, 4 micro-batches into the epoch)" in result.stderr
    assert_identical_continuation(reference, killed)


def test_a_checkpoint_at_an_epochs_last_step_with_two_processes_resumes_bit_exactly(shapes_dir, tmp_path):
    """Stopped after the last step of an epoch, before its evaluation: the evaluation averages every rank's BN
    statistics, so each rank must get its own back (a SIGUSR1 landing on that step hit this)."""
    args = ("train.epochs=2", "checkpoint.every_steps=6", "data.num_workers=1")
    reference = tmp_path / "reference"
    ok(run_train(tiny_args(shapes_dir, reference, *args), nproc=2))
    killed = tmp_path / "killed"
    train_until(tiny_args(shapes_dir, killed, *args), 2, lambda: checkpoint_logged(killed, step=6))
    result = ok(run_train(tiny_args(shapes_dir, killed, *args), nproc=2))
    assert "(epoch 0, step 6, 6 micro-batches into the epoch)" in result.stderr
    assert_identical_continuation(reference, killed)


def test_truncated_checkpoint_falls_back_to_the_previous_good_one(shapes_dir, tmp_path):
    run_dir = tmp_path / "run"
    ok(run_train(tiny_args(shapes_dir, run_dir)))
    newest = run_dir / "checkpoints" / "step_000000012.pt"
    newest.write_bytes(newest.read_bytes()[:1000])  # also truncates best.pt if it is the same file
    result = ok(run_train(tiny_args(shapes_dir, run_dir, "train.epochs=3")))
    assert f"checkpoint {newest} is unreadable" in result.stderr
    assert f"resuming from {run_dir / 'checkpoints' / 'step_000000006.pt'}" in result.stderr
    assert read_json(run_dir / "summary.json")["epochs"] == 3


def test_non_finite_loss_stops_with_exit_1_naming_the_step_and_keeps_the_good_checkpoint(shapes_dir, tmp_path):
    run_dir = tmp_path / "nan"
    result = run_train(tiny_args(shapes_dir, run_dir, "train.epochs=3", "schedule.name=step",
                                 "schedule.warmup_epochs=0", "schedule.milestones=[1]", "schedule.gamma=1e30"))
    assert result.returncode == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: loss became non-finite at step ") and "(epoch 2)" in last
    # Step 7 takes the 1e30 x lr; step 8 computes the first non-finite loss.
    assert int(last.split("at step ")[1].split()[0]) == 8
    assert f"last good checkpoint: {run_dir / 'checkpoints' / 'step_000000006.pt'}" in last
    assert [p.name for p in sorted((run_dir / "checkpoints").glob("step_*.pt"))] == ["step_000000006.pt"]
    good = load_checkpoint(run_dir / "checkpoints" / "step_000000006.pt")
    assert all(torch.isfinite(v).all() for v in good["model"].values() if v.is_floating_point())
    assert not (run_dir / "summary.json").exists()


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_with_ema_trains_and_keeps_separate_ema_weights(shapes_dir, tmp_path, precision):
    run_dir = tmp_path / precision
    ok(run_train(tiny_args(shapes_dir, run_dir, f"train.precision={precision}", "train.ema=true",
                           "train.ema_decay=0.9", "train.epochs=3")))
    events = read_jsonl(run_dir / "metrics.jsonl")
    epochs = [e for e in events if e["event"] == "epoch"]
    assert all(torch.isfinite(torch.tensor(e["loss"])) for e in epochs)
    assert epochs[-1]["loss"] < epochs[0]["loss"]  # it learns
    assert len([e for e in events if e["event"] == "val_ema"]) == 3
    weights, ema = read_weights(run_dir / "weights.safetensors"), read_weights(run_dir / "weights_ema.safetensors")
    assert set(weights) == set(ema) and not torch.equal(weights["fc.weight"], ema["fc.weight"])
    ckpt = load_checkpoint(sorted((run_dir / "checkpoints").glob("step_*.pt"))[-1])
    assert ckpt["ema"] is not None and int(ckpt["ema"]["n_averaged"]) == 18
    scaler = ckpt["backend"]["scaler"]
    assert (scaler is not None and scaler["scale"] > 0) if precision == "fp16" else scaler is None
    assert read_json(run_dir / "summary.json")["final_ema"]["samples"] == 110
