"""DeepSpeed ZeRO 0-3 under the same train.py: equal to DDP, resumable, exportable, strict about its JSON."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import torchvision

from tests.helpers import (
    PYTHON,
    ROOT,
    assert_identical_continuation,
    checkpoint_logged,
    ok,
    read_json,
    read_jsonl,
    run_train,
    tiny_args,
    train_until,
    visiontrain_cli,
)
from visiontrain.checkpoint.weights import read_weights

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("accelerate")]

# 400 samples, global batch 16 over 2 ranks: 25 optimizer steps in one epoch, one loss logged per step.
EQUIVALENCE = ("train.epochs=1", "train.batch_size=16", "schedule.warmup_epochs=0.2", "optim.lr=0.1",
               "log.every_steps=1", "train.precision=fp32", "data.cutout=4")


def deepspeed(stage: int) -> tuple[str, str]:
    return "parallel.strategy=deepspeed", f"parallel.deepspeed_config=configs/deepspeed/zero{stage}.json"


def losses(run_dir: Path) -> list[float]:
    return [e["loss"] for e in read_jsonl(run_dir / "metrics.jsonl") if e["event"] == "train"]


def parameters(run_dir: Path) -> dict[str, torch.Tensor]:
    weights = read_weights(run_dir / "weights.safetensors")
    return {k: v for k, v in weights.items() if "running_" not in k and "num_batches" not in k}


@pytest.fixture(scope="session")  # once per test process: xdist may interleave other modules
def ddp_reference(shapes_dir, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("ds") / "ddp"
    ok(run_train(tiny_args(shapes_dir, run_dir, *EQUIVALENCE), nproc=2))
    return run_dir


@pytest.fixture(scope="session")  # once per test process: xdist may interleave other modules
def zero_runs(shapes_dir, tmp_path_factory) -> dict[int, Path]:
    runs = {}
    for stage in (0, 1, 2, 3):
        run_dir = tmp_path_factory.mktemp("ds") / f"zero{stage}"
        ok(run_train(tiny_args(shapes_dir, run_dir, *EQUIVALENCE, *deepspeed(stage)), nproc=2))
        runs[stage] = run_dir
    return runs


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_zero_stage_trains_exactly_like_ddp(ddp_reference, zero_runs, stage):
    """Same seed, fp32, 25 steps, 2 processes: the loss of every step within 1e-4 (relative) and every final
    parameter within 1e-5 of DDP's, at every ZeRO stage (ZeRO-3 included; on CPU they come out identical)."""
    run = zero_runs[stage]
    summary = read_json(run / "summary.json")
    assert (summary["strategy"], summary["zero_stage"], summary["world_size"]) == ("deepspeed", stage, 2)
    reference, ours = losses(ddp_reference), losses(run)
    assert len(ours) == len(reference) == 25
    assert ours == pytest.approx(reference, rel=1e-4)
    ref_params, our_params = parameters(ddp_reference), parameters(run)
    assert set(ref_params) == set(our_params)
    assert max(float((ref_params[k] - our_params[k]).abs().max()) for k in ref_params) <= 1e-5


def test_accumulation_and_clipping_mean_the_same_as_under_ddp(shapes_dir, tmp_path):
    """One value each in the run config (a clip norm this small is active on every step).

    ZeRO-2 reduces every micro-batch and sums the reduced halves, DDP sums locally and
    reduces once: the same sum in another order. The first steps agree to rounding
    (a different meaning would show at once); later steps drift by amplified rounding.
    """
    args = (*EQUIVALENCE, "train.grad_accum_steps=2", "train.grad_clip_norm=0.05")
    ok(run_train(tiny_args(shapes_dir, tmp_path / "ddp", *args), nproc=2))
    ok(run_train(tiny_args(shapes_dir, tmp_path / "zero2", *args, *deepspeed(2)), nproc=2))
    reference, ours = losses(tmp_path / "ddp"), losses(tmp_path / "zero2")
    assert len(ours) == len(reference) == 25
    assert ours[:10] == pytest.approx(reference[:10], rel=1e-6)
    assert ours == pytest.approx(reference, rel=1e-4)
    ref, got = parameters(tmp_path / "ddp"), parameters(tmp_path / "zero2")
    assert max(float((ref[k] - got[k]).abs().max()) for k in ref) <= 2e-4


def test_zero2_sigkill_then_restart_is_bit_exact(shapes_dir, zero_runs, tmp_path):
    args = tiny_args(shapes_dir, tmp_path / "killed", *EQUIVALENCE, *deepspeed(2), "checkpoint.every_steps=10")
    killed = tmp_path / "killed"
    train_until(args, 2, lambda: checkpoint_logged(killed, step=10))
    result = ok(run_train(args, nproc=2))
    assert "resuming from" in result.stderr and "step_000000010" in result.stderr
    assert_identical_continuation(zero_runs[2], killed)


# A model without BatchNorm (per-process batch statistics would differ at another process count), AdamW with
# one parameter group per layer-decay depth (ZeRO-3's universal load must keep each group's own values).
# A global batch of 24 splits over 1, 2 and 3 processes: 16 steps per epoch.
RESHARD = ("model.name=timm/vit_tiny_patch16_224", "model.width=64", "model.kwargs.img_size=16",
           "model.kwargs.patch_size=8", "model.kwargs.depth=2", "data.image_size=16", "data.val_image_size=16",
           "optim.name=adamw", "optim.lr=0.002", "optim.weight_decay=0.05", "optim.layer_decay=0.75",
           "train.batch_size=24", "train.epochs=2", "schedule.warmup_epochs=0.5", "train.precision=fp32",
           "log.every_steps=1", "log.report=false")


@pytest.mark.parametrize("stage, saved_world, new_worlds", [(1, 2, (1, 3)), (2, 2, (1, 3)), (3, 2, (1, 3)),
                                                           (2, 3, (2,))])
def test_zero_shards_resume_at_another_process_count(shapes_dir, tmp_path, stage, saved_world, new_worlds):
    """Stopped after epoch 1 at one process count, resumed at another through DeepSpeed's universal checkpoint:
    the loaded fp32 weights are bit-identical to the saved ones, and the second epoch's losses follow the
    uninterrupted run within 1e-6 relative (the same global batch, summed over another number of processes)."""
    def args(run_dir, *extra):
        return tiny_args(shapes_dir, run_dir, *RESHARD, *deepspeed(stage), *extra)

    reference = tmp_path / "reference"
    ok(run_train(args(reference), nproc=saved_world))
    stopped = tmp_path / "stopped"
    train_until(args(stopped), saved_world, lambda: checkpoint_logged(stopped, epoch=1))
    ok(visiontrain_cli("checkpoint", "export", stopped, "--out", tmp_path / "saved.safetensors"))  # epoch 1's
    saved = read_weights(tmp_path / "saved.safetensors")
    for world in new_worlds:
        resumed, loaded = tmp_path / f"resumed{world}", tmp_path / f"loaded{world}"
        shutil.copytree(stopped, resumed)
        result = ok(run_train(args(resumed), nproc=world))
        assert f"resumed ZeRO-{stage} shards of {saved_world} processes on {world}" in result.stderr
        assert read_json(resumed / "summary.json")["world_size"] == world
        assert not (resumed / "checkpoints" / ".universal").exists()
        assert len(losses(resumed)) == len(losses(reference)) == 32
        assert losses(resumed)[16:] == pytest.approx(losses(reference)[16:], rel=1e-6)
        if world != max(new_worlds):
            continue  # the bare load is checked once per stage, at the largest count (uneven, padded partitions)
        shutil.copytree(stopped, loaded)
        ok(run_train(args(loaded, "train.epochs=1"), nproc=world))  # loads epoch 1's checkpoint, trains nothing
        after_load = read_weights(loaded / "weights.safetensors")
        assert saved.keys() == after_load.keys() and all(torch.equal(saved[k], after_load[k]) for k in saved)


def test_zero3_resumed_at_another_process_count_keeps_the_batchnorm_statistics(shapes_dir, tmp_path):
    """The universal load sets only what the optimizer holds: BatchNorm's running statistics (and its counters)
    come from the checkpoint itself, bit-identical."""
    run_dir = tmp_path / "run"
    args = (*EQUIVALENCE, "optim.name=adamw", "optim.lr=0.002", "log.report=false", *deepspeed(3))
    ok(run_train(tiny_args(shapes_dir, run_dir, *args), nproc=2))
    ok(visiontrain_cli("checkpoint", "export", run_dir, "--out", tmp_path / "saved.safetensors"))
    saved = read_weights(tmp_path / "saved.safetensors")
    assert any("running_mean" in k for k in saved)
    (run_dir / "weights.safetensors").unlink()
    result = ok(run_train(tiny_args(shapes_dir, run_dir, *args), nproc=1))  # resumes after its last epoch
    assert "resumed ZeRO-3 shards of 2 processes on 1" in result.stderr
    after_load = read_weights(run_dir / "weights.safetensors")
    assert saved.keys() == after_load.keys() and all(torch.equal(saved[k], after_load[k]) for k in saved)


@pytest.mark.parametrize("stage", [2, 3])
def test_frozen_parameters_resumed_at_another_process_count_are_the_checkpoints(shapes_dir, tmp_path, stage):
    """Frozen parameters are not the optimizer's, so the universal load leaves them as built: resumed with
    another seed (another initialization), they must still come back from the checkpoint, bit-identical."""
    run_dir = tmp_path / "run"
    args = (*EQUIVALENCE, "optim.name=adamw", "optim.lr=0.002", "log.report=false", "finetune.freeze=backbone",
            *deepspeed(stage))
    ok(run_train(tiny_args(shapes_dir, run_dir, *args), nproc=2))
    ok(visiontrain_cli("checkpoint", "export", run_dir, "--out", tmp_path / "saved.safetensors"))
    saved = read_weights(tmp_path / "saved.safetensors")
    (run_dir / "weights.safetensors").unlink()
    ok(run_train(tiny_args(shapes_dir, run_dir, *args, "run.seed=1"), nproc=1))  # resumes after its last epoch
    after_load = read_weights(run_dir / "weights.safetensors")
    assert saved.keys() == after_load.keys() and all(torch.equal(saved[k], after_load[k]) for k in saved)


def test_a_damaged_newest_checkpoint_at_another_process_count_falls_back_to_the_previous_one(shapes_dir, tmp_path):
    """The conversion of the newest checkpoint fails on rank 0 (a truncated shard): every rank agrees it is
    unreadable, and the run resumes from the checkpoint before it, at the new count."""
    run_dir = tmp_path / "run"
    ok(run_train(tiny_args(shapes_dir, run_dir, *RESHARD, *deepspeed(2)), nproc=2))
    shard = next((run_dir / "checkpoints" / "step_000000032").glob("*optim_states.pt"))
    shard.write_bytes(shard.read_bytes()[:100])
    result = ok(run_train(tiny_args(shapes_dir, run_dir, *RESHARD, *deepspeed(2), "train.epochs=3"), nproc=3))
    assert "step_000000032" in result.stderr and "resumed ZeRO-2 shards of 2 processes on 3" in result.stderr
    (resume,) = [e for e in read_jsonl(run_dir / "metrics.jsonl") if e["event"] == "resume"]
    assert resume["step"] == 16 and read_json(run_dir / "summary.json")["world_size"] == 3


def test_zero_shards_of_another_process_count_with_sgd_are_refused_in_one_line(shapes_dir, zero_runs, tmp_path):
    """DeepSpeed's universal conversion carries Adam-family states only."""
    copy = tmp_path / "zero2"
    shutil.copytree(zero_runs[2], copy)
    result = run_train(tiny_args(shapes_dir, copy, *EQUIVALENCE, *deepspeed(2), "train.epochs=2"))
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert "holds ZeRO-2 shards of 2 processes; this run has 1" in last and "(this optimizer is SGD)" in last


@pytest.mark.parametrize("stage", [None, 0, 1, 2, 3])
def test_export_works_on_every_strategy_and_loads_into_the_plain_model(ddp_reference, zero_runs, stage, tmp_path):
    """python -m visiontrain checkpoint export on DDP (channels-last weights) and ZeRO 0-3 runs: the file loads
    strictly into a freshly built model and equals the weights the run exported at its end."""
    from visiontrain.checkpoint.cli import main as checkpoint_main
    from visiontrain.config import load_config
    from visiontrain.infra.errors import run_cli
    from visiontrain.models import build_model

    run = ddp_reference if stage is None else zero_runs[stage]
    out = tmp_path / "exported.safetensors"
    assert run_cli(checkpoint_main, ["export", str(run), "--out", str(out)]) == 0
    exported, final = read_weights(out), read_weights(run / "weights.safetensors")
    build_model(load_config(run / "config.yaml").model).load_state_dict(exported, strict=True)
    assert set(exported) == set(final) and all(torch.equal(exported[k], final[k]) for k in final)


def test_zero3_exports_consolidated_weights_that_torchvision_loads(shapes_dir, tmp_path):
    run_dir = tmp_path / "zero3"
    ok(run_train(tiny_args(shapes_dir, run_dir, "model.name=resnet18", "model.width=64", "train.epochs=1",
                           "train.batch_size=32", *deepspeed(3)), nproc=2))
    live = read_weights(run_dir / "weights.safetensors")
    model = torchvision.models.resnet18(num_classes=10)
    model.load_state_dict(live, strict=True)  # plain torchvision, no visiontrain classes
    assert read_json(run_dir / "summary.json")["ranks"][0]["params_sha256"] == \
        read_json(run_dir / "summary.json")["ranks"][1]["params_sha256"]
    result = subprocess.run([PYTHON, "-m", "visiontrain", "checkpoint", "export", str(run_dir), "--out",
                             str(tmp_path / "offline.safetensors")], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    offline = read_weights(tmp_path / "offline.safetensors")
    assert set(offline) == set(live) and all(torch.equal(offline[k], live[k]) for k in live)


def test_accelerate_launch_with_the_deepspeed_config_runs_bf16_and_ema(shapes_dir, tmp_path):
    run_dir = tmp_path / "acc"
    ok(run_train(tiny_args(shapes_dir, run_dir, "train.epochs=1", "schedule.warmup_epochs=0.5", "train.precision=bf16",
                           "train.ema=true", "train.ema_decay=0.9"),
                 launcher="accelerate --config_file configs/accelerate/deepspeed_zero2.yaml --num_processes 2"))
    summary = read_json(run_dir / "summary.json")
    assert (summary["strategy"], summary["zero_stage"], summary["world_size"], summary["precision"]) == \
        ("deepspeed", 2, 2, "bf16")
    assert [e["event"] for e in read_jsonl(run_dir / "metrics.jsonl")].count("val_ema") == 1
    assert (run_dir / "weights_ema.safetensors").is_file()


BAD_JSON_CASES = {
    "missing": (None, "does not exist"),
    "not_json": ("{ zero: 2", "is not valid JSON"),
    "typo_top_level": ({"zero_optimisation": {"stage": 2}}, "unknown key 'zero_optimisation' (DeepSpeed would ignore "
                                                           "it); did you mean 'zero_optimization'?"),
    "rejected_nested": ({"zero_optimization": {"stage": 2, "overlap_comms": True}}, "is rejected by DeepSpeed"),
    "auto": ({"zero_optimization": {"stage": 2, "reduce_bucket_size": "auto"}},
             "'zero_optimization.reduce_bucket_size' is \"auto\""),
    "optimizer": ({"optimizer": {"type": "Adam"}}, "remove 'optimizer'"),
    "precision": ({"bf16": {"enabled": True}}, "remove 'bf16': precision is set by train.precision"),
    "batch": ({"train_batch_size": 128}, "'train_batch_size' = 128 contradicts train.batch_size"),
    "clipping": ({"gradient_clipping": 1.0}, "contradicts train.grad_clip_norm"),
    "zero3_ema": ({"zero_optimization": {"stage": 3}}, "train.ema=true is not supported with ZeRO stage 3"),
}
_CHECKER = """
import json, sys
from visiontrain.config import ParallelConfig, load_config
from visiontrain.parallel.batch_plan import BatchPlan
from visiontrain.parallel.deepspeed_config import build
from visiontrain.parallel.runtime import init_runtime
from visiontrain.infra.errors import UsageError
init_runtime("cpu", ParallelConfig(strategy="deepspeed"))
for name, path, extra in json.loads(sys.argv[1]):
    cfg = load_config(None, ["parallel.strategy=deepspeed", f"parallel.deepspeed_config={path}", *extra])
    try:
        build(cfg, BatchPlan.for_world(cfg.train, 1))
        print("CASE " + json.dumps([name, None]))
    except UsageError as err:
        print("CASE " + json.dumps([name, str(err)]))
"""


def test_bad_deepspeed_configs_are_one_line_usage_errors(tmp_path):
    cases = []
    for name, (content, _) in BAD_JSON_CASES.items():
        path = tmp_path / f"{name}.json"
        if content is not None:
            path.write_text(content if isinstance(content, str) else json.dumps(content))
        cases.append([name, str(path), ["train.ema=true"] if name == "zero3_ema" else []])
    result = subprocess.run([PYTHON, "-c", _CHECKER, json.dumps(cases)], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    messages = dict(json.loads(line[5:]) for line in result.stdout.splitlines() if line.startswith("CASE "))
    for name, (_, expected) in BAD_JSON_CASES.items():
        assert messages[name] is not None and expected in messages[name], (name, messages[name])
        assert "\n" not in messages[name]


@pytest.mark.parametrize("extra, expected", [
    (("parallel.deepspeed_config=configs/deepspeed/zero9.json",),
     "parallel.deepspeed_config=configs/deepspeed/zero9.json does not exist"),
    (("parallel.deepspeed_config=configs/deepspeed/zero2.json", "model.compile=true"),
     "config key 'model.compile' = True is invalid: not supported with parallel.strategy=deepspeed; use ddp"),
])
def test_train_py_refuses_bad_deepspeed_input_with_exit_2_writing_nothing(shapes_dir, tmp_path, extra, expected):
    run_dir = tmp_path / "run"
    result = run_train(tiny_args(shapes_dir, run_dir, "parallel.strategy=deepspeed", *extra))
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1] == f"error: {expected}"
    assert not run_dir.exists()
