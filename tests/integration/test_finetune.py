"""Fine-tuning end to end: real transfer between tasks, freezing under DDP, early stopping,
and the evaluation CLI."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch

from tests.helpers import PYTHON, ROOT, ok, read_json, read_jsonl, run_train
from visiontrain.checkpoint import load_checkpoint
from visiontrain.checkpoint.weights import read_weights
from visiontrain.infra.errors import UsageError

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("finetune")]

# Task A: shapes 0-4 (bar, circle, crescent, cross, hollow_square), all labels.
# Task B: shapes 5-9 (hollow_triangle, ring, square, star, triangle), 10% of the labels.
TASK_A = ["data.classes=[0,1,2,3,4]", "model.num_classes=5"]
TASK_B = ["data.classes=[5,6,7,8,9]", "model.num_classes=5", "data.train_fraction=0.1"]
# What the transfer test promises: fine-tuning the task-A network beats training the
# same network from scratch on task B's labelled budget by at least this many points.
TRANSFER_MARGIN = 20.0


def args(data: Path, run_dir: Path, *extra: str) -> list[str]:
    # The device loader keeps the decoded images in memory: the many short runs here do not decode each epoch.
    return ["-c", "configs/demo/train.yaml", "data.loader=device", f"data.path={data}", f"run.dir={run_dir}",
            "data.num_workers=0",
            "data.image_size=24", "data.val_image_size=24", "log.progress_bar=false", "log.tensorboard=false",
            "log.plots=false", *extra]


@pytest.fixture(scope="session")  # once per test process: xdist may interleave other modules
def transfer_data(tmp_path_factory) -> Path:
    """10 shapes x (120 train + 30 val) at 24x24, as image folders."""
    out = tmp_path_factory.mktemp("transfer") / "shapes"
    subprocess.run([PYTHON, "-m", "visiontrain", "prep", "synthetic", "--out", str(out), "--train-per-class", "120",
                    "--val-per-class", "30", "--size", "24", "--workers", "2"],
                   check=True, cwd=ROOT, capture_output=True)
    return out


@pytest.fixture(scope="session")  # once per test process: xdist may interleave other modules
def pretrained(transfer_data, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("runs") / "pretrain_a"
    ok(run_train(args(transfer_data, run_dir, *TASK_A, "train.epochs=16", "train.batch_size=50",
                       "optim.lr=0.2")))
    return run_dir


def finetune_b(data: Path, run_dir: Path, *extra: str, nproc: int = 1):
    ok(run_train(args(data, run_dir, *TASK_B, "train.epochs=10", "train.batch_size=20", "optim.lr=0.2",
                      *extra), nproc=nproc))
    return read_json(run_dir / "summary.json")


def test_pretrained_weights_transfer_to_new_classes_with_few_labels(transfer_data, pretrained, tmp_path):
    pre = read_json(pretrained / "summary.json")
    assert pre["final"]["top1"] > 80, pre["final"]
    runs = {
        "scratch": finetune_b(transfer_data, tmp_path / "scratch"),
        "full fine-tune": finetune_b(transfer_data, tmp_path / "full", f"finetune.init_from={pretrained}"),
        "fine-tune, stages:2 frozen": finetune_b(transfer_data, tmp_path / "stages", f"finetune.init_from={pretrained}",
                                                 "finetune.freeze=stages:2"),
        "linear probe": finetune_b(transfer_data, tmp_path / "probe", f"finetune.init_from={pretrained}",
                                   "finetune.freeze=backbone", "optim.lr=1.0"),
    }
    print(f"\ntask A (5 shapes, 600 labels) pretraining: {pre['final']['top1']:.1f}%")
    print("task B (5 other shapes, 60 labels, 150 val images), same budget:")
    for name, summary in runs.items():
        print(f"  {name:28s} {summary['final']['top1']:5.1f}%")
    scratch = runs["scratch"]["final"]["top1"]
    assert runs["scratch"]["init"].get("init_from") is None
    assert runs["full fine-tune"]["init"]["head_replaced"] is False  # 5 -> 5 classes: the head is kept
    for name in ("full fine-tune", "fine-tune, stages:2 frozen", "linear probe"):
        assert runs[name]["final"]["top1"] >= scratch + TRANSFER_MARGIN, name
    assert runs["linear probe"]["init"]["trainable"] == 5 * 128  # resnet9 width 16: fc is 128 -> 5, no bias
    assert runs["full fine-tune"]["final"]["samples"] == 150


def test_partial_freeze_under_ddp_keeps_frozen_tensors_bit_for_bit(transfer_data, pretrained, tmp_path):
    run_dir = tmp_path / "ddp_freeze"
    summary = finetune_b(transfer_data, run_dir, f"finetune.init_from={pretrained}", "finetune.freeze=stages:1",
                         "optim.backbone_lr_mult=0.1", "train.epochs=2", nproc=2)
    assert summary["world_size"] == 2 and len({r["params_sha256"] for r in summary["ranks"]}) == 1
    start, end = read_weights(pretrained / "weights.safetensors"), read_weights(run_dir / "weights.safetensors")
    frozen = [k for k in end if k.startswith(("prep.", "layer1."))]
    trained = [k for k in end if k.startswith(("layer2.", "layer3.", "fc.")) and "num_batches" not in k]
    assert frozen and all(torch.equal(start[k], end[k]) for k in frozen)  # BN statistics included
    assert all(not torch.equal(start[k], end[k]) for k in trained if k.endswith("weight"))
    # The backbone's groups ran at a tenth of the head's learning rate.
    ckpt = load_checkpoint(sorted((run_dir / "checkpoints").glob("step_*.pt"))[-1])
    lrs = {g["name"]: g["lr"] for g in ckpt["optimizer"]["param_groups"]}
    assert lrs["backbone"] == pytest.approx(0.1 * lrs["head"])


def test_early_stopping_restores_the_best_checkpoint_and_stays_stopped(transfer_data, pretrained, tmp_path):
    run_dir = tmp_path / "early"
    # min_delta of 100 points: no evaluation after the first can count as an improvement.
    extra = ["train.early_stop_patience=2", "train.early_stop_min_delta=100", "train.epochs=10",
             f"finetune.init_from={pretrained}"]
    summary = finetune_b(transfer_data, run_dir, *extra)
    assert summary["stopped_early"] and summary["epochs"] == 3 and summary["best_epoch"] == 1
    events = read_jsonl(run_dir / "metrics.jsonl")
    assert [e["epoch"] for e in events if e["event"] == "early_stop"] == [3]
    best = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    final = read_weights(run_dir / "weights.safetensors")
    assert all(torch.equal(best["model"][k], final[k]) for k in final)
    assert summary["final"]["top1"] == pytest.approx(summary["best_top1"])
    # Starting the same run again finds it finished: nothing more is trained.
    again = finetune_b(transfer_data, run_dir, *extra)
    assert again["epochs"] == 3 and again["steps"] == summary["steps"]


def test_evaluate_cli_on_a_run_dir_a_file_and_a_torchvision_state_dict(transfer_data, pretrained, tmp_path, capsys):
    from visiontrain.deploy.evaluate import main as evaluate  # in-process: the exit-code path is checked below

    assert evaluate(["--weights", str(pretrained), "--tta", "flip", "--out", str(tmp_path / "tta")]) == 0
    report = read_json(tmp_path / "tta" / "eval.json")
    assert report["tta"] == "flip" and report["samples"] == 150  # the run's data.classes apply
    assert report["class_names"] == ["bar", "circle", "crescent", "cross", "hollow_square"]
    assert (tmp_path / "tta" / "curves.png").is_file()  # a run dir brings its training curves
    assert f"top-1 {report['top1']:.2f}%" in capsys.readouterr().out
    evaluate(["--weights", str(pretrained), "--out", str(tmp_path / "plain")])
    plain = read_json(tmp_path / "plain" / "eval.json")
    assert plain["top1"] == pytest.approx(read_json(pretrained / "summary.json")["final"]["top1"])

    # A .safetensors file elsewhere: model settings from its metadata, data from the command line.
    weights = tmp_path / "a.safetensors"
    weights.write_bytes((pretrained / "weights.safetensors").read_bytes())
    evaluate(["--weights", str(weights), "--data", str(transfer_data), "-c", "configs/demo/train.yaml",
              "data.loader=torchvision", "data.classes=[0,1,2,3,4]", "data.image_size=24", "data.val_image_size=24"])
    assert read_json(tmp_path / "eval_a" / "eval.json")["top1"] == pytest.approx(plain["top1"])

    # A torchvision state dict: the user names the model.
    import torchvision

    pth = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), pth)
    evaluate(["--weights", str(pth), "--data", str(transfer_data), "-c", "configs/demo/train.yaml",
              "data.loader=torchvision", "model.name=resnet18", "model.width=64", "data.image_size=24",
              "data.val_image_size=24"])
    assert read_json(tmp_path / "eval_r18" / "eval.json")["samples"] == 300

    # Bad input: one line naming the problem.
    for cli, expected in [(["--weights", str(pth), "--data", str(transfer_data), "-c", "configs/demo/train.yaml"],
                           "--weights='.*' does not fit the model"),
                          (["--weights", str(pretrained), "--data", str(tmp_path)], "no dataset at data.path")]:
        with pytest.raises(UsageError, match=expected):
            evaluate(cli)
    bad = subprocess.run([PYTHON, "-m", "visiontrain", "evaluate", "--weights", str(tmp_path / "missing")], cwd=ROOT,
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "--weights=" in bad.stderr and "does not exist" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1, bad.stderr
