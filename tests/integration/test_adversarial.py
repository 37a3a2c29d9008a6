"""Adversarial training end to end: exact resume, DDP, the collapse stop, evaluate --attack, bad settings."""

from __future__ import annotations

import json
import subprocess
import textwrap

import pytest
import torch

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

pytestmark = [pytest.mark.slow]

FGSM = ("adversarial.method=fgsm_rs", "adversarial.check_images=60", "adversarial.check_steps=3",
        "train.epochs=2", "checkpoint.every_steps=4", "augment.mixup_alpha=0.2")


@pytest.fixture(scope="session")
def fgsm_reference(shapes_dir, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("adversarial") / "reference"
    ok(run_train(tiny_args(shapes_dir, run_dir, *FGSM)))
    return run_dir


def test_fgsm_training_logs_the_robustness_check_and_keeps_the_best_robust_checkpoint(fgsm_reference):
    vals = [e for e in read_jsonl(fgsm_reference / "metrics.jsonl") if e["event"] == "val"]
    assert len(vals) == 2 and all(0 <= v["robust_top1"] <= v["robust_clean_top1"] <= 100 for v in vals)
    assert all(v["robust_samples"] in range(50, 71) for v in vals)  # about check_images, per class
    summary = read_json(fgsm_reference / "summary.json")
    assert summary["monitor"] == "robust_top1"  # train.monitor=auto with the check on
    config = (fgsm_reference / "config.yaml").read_text()
    assert "monitor: robust_top1" in config and "method: fgsm_rs" in config


def test_a_killed_adversarial_run_resumes_bit_exactly(shapes_dir, fgsm_reference, tmp_path):
    killed = tmp_path / "killed"
    train_until(tiny_args(shapes_dir, killed, *FGSM), 1, lambda: checkpoint_logged(killed, step=4))
    result = ok(run_train(tiny_args(shapes_dir, killed, *FGSM)))
    assert "(epoch 0, step 4, 4 micro-batches into the epoch)" in result.stderr
    assert_identical_continuation(fgsm_reference, killed)

    def robust(run):
        return [e["robust_top1"] for e in read_jsonl(run / "metrics.jsonl") if e["event"] == "val"]

    assert robust(killed) == robust(fgsm_reference)


RANK_PARAMETERS = textwrap.dedent("""
    import sys, torch
    from visiontrain.config import load_config
    from visiontrain.train.run import build_run
    run = build_run(load_config("configs/demo/train.yaml", sys.argv[2:]))
    run.trainer.fit()
    flat = torch.cat([p.detach().flatten() for p in run.trainer.model.parameters()])
    torch.save(flat, f"{sys.argv[1]}/rank{run.runtime.rank}.pt")
    torch.distributed.destroy_process_group()
""")


def test_pgd_training_under_two_processes_keeps_the_parameters_equal_across_ranks(shapes_dir, tmp_path):
    script = tmp_path / "rank_parameters.py"
    script.write_text(RANK_PARAMETERS)
    args = tiny_args(shapes_dir, tmp_path / "run", "adversarial.method=pgd", "adversarial.steps=2",
                     "adversarial.check_images=40", "adversarial.check_steps=2", "train.epochs=1")[2:]
    result = subprocess.run([PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             str(script), str(tmp_path), *args],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    assert torch.equal(ranks[0], ranks[1])
    initial = read_weights(tmp_path / "run" / "weights.safetensors")
    assert ranks[0].numel() == sum(v.numel() for k, v in initial.items() if "running" not in k
                                   and "num_batches" not in k)
    val = [e for e in read_jsonl(tmp_path / "run" / "metrics.jsonl") if e["event"] == "val"][-1]
    assert val["world_size"] == 2 and val["robust_samples"] in range(30, 51)


def test_a_collapse_of_robust_accuracy_stops_the_run_with_the_best_robust_weights(shapes_dir, tmp_path):
    from visiontrain.config import load_config
    from visiontrain.parallel.runtime import init_runtime
    from visiontrain.train.run import build_run

    class Scripted:  # robust top-1 per evaluation: rises, falls by 25 points, then the restored best again
        collapse_drop, values = 20.0, iter([30.0, 40.0, 15.0, 40.0])

        def run(self, model, autocast):
            return {"robust_top1": next(self.values), "clean_top1": 60.0, "samples": 100, "seconds": 0.1}

        def collapsed(self, robust, best):
            return best >= 0 and robust < best - self.collapse_drop

    cfg = load_config("configs/demo/train.yaml", tiny_args(shapes_dir, tmp_path / "run", "adversarial.method=fgsm_rs",
                                                           "adversarial.check_images=10", "train.epochs=4",
                                                           "log.tensorboard=false")[2:])
    run = build_run(cfg, runtime=init_runtime("cpu"))
    run.trainer.robust_check = Scripted()
    summary = run.trainer.fit()
    events = read_jsonl(run.run_dir / "metrics.jsonl")
    assert [e["epoch"] for e in events if e["event"] == "collapse"] == [3]
    assert [e["robust_top1"] for e in events if e["event"] == "val"][:3] == [30.0, 40.0, 15.0]
    assert summary["epochs"] == 3 and summary["stopped_early"]
    assert summary["best_epoch"] == 2
    best = [e for e in events if e["event"] == "restore_best"]
    assert len(best) == 1 and best[0]["epoch"] == 2
    # The run ends with the epoch-2 checkpoint's weights.
    from visiontrain.checkpoint import load_checkpoint

    saved = load_checkpoint(best[0]["checkpoint"])["model"]
    final = read_weights(run.run_dir / "weights.safetensors")
    assert all(torch.equal(saved[k], final[k]) for k in final)


def test_evaluate_attack_reports_clean_and_robust_top1_on_the_validation_split(fgsm_reference, tmp_path):
    out = tmp_path / "eval"
    result = ok(visiontrain_cli("evaluate", "--weights", fgsm_reference, "--attack", "pgd", "--attack-steps", "3",
                                "--attack-images", "1000", "--out", out))
    robust = json.loads((out / "robust.json").read_text())
    report = json.loads((out / "eval.json").read_text())
    assert robust["samples"] == report["samples"] == 110  # fewer images than asked: all of them
    assert robust["clean_top1"] == pytest.approx(report["top1"])
    assert 0 <= robust["robust_top1"] <= robust["clean_top1"]
    assert robust["epsilon"] == pytest.approx(8 / 255) and robust["attack"] == "pgd" and robust["seconds"] > 0
    assert "robust top-1" in result.stdout
    apgd = ok(visiontrain_cli("evaluate", "--weights", fgsm_reference, "--attack", "apgd", "--attack-steps", "5",
                              "--attack-images", "22", "--epsilon", "0.05", "--out", tmp_path / "apgd"))
    record = json.loads((tmp_path / "apgd" / "robust.json").read_text())
    assert record["samples"] == 22 and record["losses"] == ["ce", "dlr"] and "apgd eps 0.05" in apgd.stdout


@pytest.mark.parametrize("flags, message", [
    (["--attack", "pgd", "--epsilon", "2"], "--epsilon 2 is invalid: in (0, 1] pixels"),
    (["--attack", "pgd", "--epsilon", "8/0"], "--epsilon='8/0' is not a number"),
    (["--attack", "apgd", "--alpha", "1/255"], "--alpha is the step size of --attack pgd"),
    (["--attack-steps", "5"], "--attack-steps is an option of --attack"),
    (["--attack", "pgd", "--restarts", "0"], "--restarts 0 is invalid: must be >= 1"),
])
def test_bad_attack_options_are_one_line(fgsm_reference, tmp_path, flags, message):
    result = visiontrain_cli("evaluate", "--weights", fgsm_reference, "--out", tmp_path / "e", *flags)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "e").exists()
