"""timm and torchvision models through the whole trainer: two DDP ranks ending with identical parameters,
a SIGKILLed run resumed bit-exactly, an ONNX export that passes the numeric check, a fine-tune from a Hugging
Face snapshot, and bad names, keywords and weights refused before anything is written."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.helpers import (
    PYTHON,
    ROOT,
    assert_identical_continuation,
    checkpoint_logged,
    ok,
    read_json,
    run_train,
    train_until,
)

pytestmark = pytest.mark.slow

VIT = ["model.name=timm/vit_tiny_patch16_224", "model.kwargs.img_size=32", "model.kwargs.patch_size=8",
       "model.kwargs.depth=2", "model.kwargs.drop_path_rate=0.1"]


def family_args(data, run_dir, *extra: str) -> list[str]:
    return ["-c", "configs/demo/train.yaml", "data.loader=torchvision", f"data.path={data}", f"run.dir={run_dir}",
            "data.image_size=32", "data.val_image_size=32", "data.num_workers=0", "model.width=64",
            "train.batch_size=64", "train.epochs=2", "schedule.warmup_epochs=0.5", "optim.name=adamw",
            "optim.lr=0.002", "optim.weight_decay=0.05", "log.progress_bar=false", "log.every_steps=2",
            "log.tensorboard=false", "log.plots=false", *extra]


@pytest.mark.parametrize("model", [
    ["model.name=timm/convnext_atto", "model.kwargs.drop_path_rate=0.1", "optim.layer_decay=0.8"],
    ["model.name=torchvision/mobilenet_v3_small", "finetune.freeze=stages:2"],
], ids=["timm-convnext", "torchvision-mobilenet"])
def test_two_ddp_ranks_train_a_library_model_to_identical_parameters(shapes_dir, tmp_path, model):
    run_dir = tmp_path / "ddp"
    ok(run_train(family_args(shapes_dir, run_dir, *model), nproc=2))
    summary = read_json(run_dir / "summary.json")
    assert summary["world_size"] == 2 and len({r["params_sha256"] for r in summary["ranks"]}) == 1
    assert summary["final"]["samples"] == 110


def test_a_killed_vit_run_resumes_bit_exactly_and_exports_to_a_checked_onnx_file(shapes_dir, tmp_path):
    args = (*VIT, "train.epochs=2", "optim.layer_decay=0.75")
    reference = tmp_path / "reference"
    ok(run_train(family_args(shapes_dir, reference, *args)))
    killed = tmp_path / "killed"
    train_until(family_args(shapes_dir, killed, *args), 1, lambda: checkpoint_logged(killed, epoch=1))
    assert "resuming from" in ok(run_train(family_args(shapes_dir, killed, *args))).stderr
    assert_identical_continuation(reference, killed)

    out = tmp_path / "vit.onnx"
    result = subprocess.run([PYTHON, "-m", "visiontrain", "export", str(reference), "--format", "onnx", "--out",
                             str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    contract = json.loads(out.with_name(out.name + ".json").read_text())
    assert contract["export_check"]["max_rel_diff"] <= 1e-4 and contract["input"]["image_size"] == 32


def test_fine_tuning_from_a_hugging_face_snapshot_replaces_the_head(shapes_dir, tmp_path):
    import torch
    from safetensors.torch import save_file

    from visiontrain.config import ModelConfig
    from visiontrain.models import build_model

    torch.manual_seed(5)
    source = build_model(ModelConfig(name="timm/convnext_atto", num_classes=1000))
    snapshot = tmp_path / "hf" / "hub" / "models--timm--convnext_atto.test" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("abc")
    save_file(source.state_dict(), str(snapshot / "model.safetensors"))
    (snapshot / "config.json").write_text(json.dumps({"architecture": "convnext_atto", "num_classes": 1000}))
    run_dir = tmp_path / "finetuned"
    result = ok(run_train(family_args(shapes_dir, run_dir, "model.name=timm/convnext_atto", "train.epochs=1",
                                      "finetune.init_from=hf-hub:timm/convnext_atto.test",
                                      "finetune.freeze=backbone"), env={"HF_HOME": str(tmp_path / "hf")}))
    assert "classifier head replaced: the weights have a 1000-class head, the model 10 classes" in result.stderr
    summary = read_json(run_dir / "summary.json")
    assert summary["init"]["head_replaced"] and summary["init"]["frozen"] > summary["init"]["trainable"] > 0


@pytest.mark.parametrize("extra, message", [
    (["model.name=timm/convnxt_atto"], "timm has no architecture 'convnxt_atto' (closest: convnext_atto"),
    (["model.name=timm/convnext_atto", "model.kwargs.drop_pth_rate=0.1"],
     "'model.kwargs.drop_pth_rate' is invalid: timm/convnext_atto takes no argument 'drop_pth_rate' (closest: "
     "drop_path_rate"),
    (["model.name=torchvision/vit_b_16"], "torchvision/vit_b_16 takes 224 px images: set data.image_size=224, "
                                          "or model.kwargs.image_size=32"),
    (["model.name=timm/convnext_atto", "finetune.freeze=stages:7"], "timm/convnext_atto has 4 stages"),
    # timm states no minimum for Inception v3: the forward pass at the run's size finds it
    (["model.name=timm/inception_v3"], "config key 'data.image_size' = 32 is invalid: timm/inception_v3 fails on "
                                       "one 32 px image"),
])
def test_bad_models_are_one_line_exit_2_and_nothing_written(shapes_dir, tmp_path, extra, message):
    run_dir = tmp_path / "bad"
    result = run_train(family_args(shapes_dir, run_dir, *extra))
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert message in last and "Traceback" not in result.stderr
    assert not run_dir.exists()


def test_the_compatibility_table_trains_resumes_and_exports_an_architecture(tmp_path):
    """As users run it, in a fresh interpreter: the walk forks one child per architecture, and a fork of a
    test worker that already ran torch's and numba's thread pools is not a process users ever have."""
    import subprocess
    import sys

    from tests.helpers import ROOT, read_jsonl

    result = subprocess.run([sys.executable, "-m", "visiontrain", "bench", "models", "--family", "timm", "--match",
                             "resnet10t", "--image-size", "32", "--out", str(tmp_path)],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = read_jsonl(tmp_path / "results.jsonl")
    assert [(r["model"], r["stage"], r["ok"]) for r in rows] == [("timm/resnet10t", "done", True)], rows
    assert rows[0]["max_rel_diff"] <= 1e-4
    assert "| timm | 1 | 1 | 1 | 1 | 1 | 0 |" in (tmp_path / "summary.md").read_text()


def test_a_vit_with_layer_decay_trains_under_zero3_like_ddp_and_exports_weights_timm_loads(shapes_dir, tmp_path):
    """ZeRO-3 partitions the ViT's parameters over two ranks, with one parameter group per layer-decay depth;
    fp32, same seed: every logged loss within 1e-4 (relative) of DDP's, and the consolidated weights load
    strictly into a plain timm model."""
    import timm
    import torch

    from tests.helpers import read_jsonl
    from visiontrain.checkpoint.weights import read_weights

    args = (*VIT, "train.epochs=1", "train.batch_size=16", "train.precision=fp32", "log.every_steps=1",
            "optim.layer_decay=0.75", "model.kwargs.drop_path_rate=0.0")
    ok(run_train(family_args(shapes_dir, tmp_path / "ddp", *args), nproc=2))
    ok(run_train(family_args(shapes_dir, tmp_path / "zero3", *args, "parallel.strategy=deepspeed",
                             "parallel.deepspeed_config=configs/deepspeed/zero3.json"), nproc=2))

    def losses(run):
        return [e["loss"] for e in read_jsonl(run / "metrics.jsonl") if e["event"] == "train"]

    assert read_json(tmp_path / "zero3" / "summary.json")["zero_stage"] == 3
    assert len(losses(tmp_path / "zero3")) == 25 and losses(tmp_path / "zero3") == pytest.approx(
        losses(tmp_path / "ddp"), rel=1e-4)
    plain = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, img_size=32, patch_size=8,
                              depth=2)
    plain.load_state_dict(read_weights(tmp_path / "zero3" / "weights.safetensors"), strict=True)
    assert torch.isfinite(plain(torch.randn(1, 3, 32, 32))).all()
