"""python -m visiontrain bench step / e2e / scaling on tiny CPU settings: the documented
results.json fields, the sweep's points, MFU arithmetic and scaling efficiency."""

from __future__ import annotations

import json

import pytest
import torch

from visiontrain.bench.cli import main as bench_main
from visiontrain.bench.flops import train_flops_per_image
from visiontrain.config import ModelConfig
from visiontrain.infra.errors import run_cli
from visiontrain.models import build_model

pytestmark = pytest.mark.slow
TINY = ["model.name=resnet9", "model.width=8", "data.image_size=16", "batch_per_device=8", "train.precision=fp32"]
QUICK = ["--steps", "3", "--repeats", "2", "--warmup-steps", "1"]
POINT_FIELDS = {
    "label", "mode", "overrides", "world_size", "device", "model", "image_size", "batch_per_device", "global_batch",
    "precision", "channels_last", "compile", "strategy", "data_loader", "steps", "repeats", "warmup_steps",
    "warmup_s", "images_per_s", "images_per_s_min", "images_per_s_max", "images_per_s_per_device",
    "repeat_images_per_s", "step_ms_p50", "step_ms_p90", "data_wait_fraction", "peak_memory_mib", "memory_kind",
    "train_gflops_per_image", "achieved_tflops_per_device", "peak_tflops_per_device", "mfu", "bare_images_per_s",
    "trainer_vs_bare", "adversarial", "attack_steps",
}


def _results(out) -> dict:
    return json.loads((out / "results.json").read_text())


def _is_png(path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_step_sweep_writes_every_point_with_timing_flops_mfu_and_the_bare_reference(tmp_path):
    out = tmp_path / "step"
    argv = ["step", *TINY, "--sweep", "model.channels_last=false,true", *QUICK, "--peak-tflops", "0.5",
            "--out", str(out)]
    assert run_cli(bench_main, argv) == 0
    doc = _results(out)
    assert doc["schema_version"] == 2 and doc["mode"] == "step"
    assert {"torch", "cuda", "gpu", "driver", "cpu_count", "cpu_model", "hostname", "git_commit", "packages"} \
        <= set(doc["environment"])
    assert doc["environment"]["torch"] == torch.__version__
    points = doc["points"]
    assert [p["label"] for p in points] == ["model.channels_last=false", "model.channels_last=true"]
    assert [p["channels_last"] for p in points] == [False, True]
    # The model's training FLOPs, counted independently: 3x one forward pass.
    expected_flops = train_flops_per_image(build_model(ModelConfig(name="resnet9", width=8)), 16, torch.device("cpu"))
    for p in points:
        assert set(p) == POINT_FIELDS
        assert p["world_size"] == 1 and p["batch_per_device"] == 8 and p["data_loader"] == "random"
        assert len(p["repeat_images_per_s"]) == 2
        assert p["images_per_s_min"] <= p["images_per_s"] <= p["images_per_s_max"] and p["images_per_s"] > 0
        assert 0 < p["step_ms_p50"] <= p["step_ms_p90"]
        assert 0 <= p["data_wait_fraction"] < 0.5  # batches already on the device
        assert p["train_gflops_per_image"] * 1e9 == pytest.approx(expected_flops)
        assert p["achieved_tflops_per_device"] == pytest.approx(p["images_per_s"] * expected_flops / 1e12)
        assert p["mfu"] == pytest.approx(p["achieved_tflops_per_device"] / 0.5)
        assert p["bare_images_per_s"] > 0
        assert p["trainer_vs_bare"] == pytest.approx(p["images_per_s"] / p["bare_images_per_s"])
        assert p["peak_memory_mib"] > 0 and p["memory_kind"] == "host_peak_rss"
    table = (out / "results.md").read_text()
    assert "model.channels_last=false" in table and "model.channels_last=true" in table
    assert _is_png(out / "throughput.png") and not (out / "scaling.png").exists()


def test_scaling_runs_one_and_two_processes_with_a_fixed_per_device_batch(tmp_path):
    out = tmp_path / "scaling"
    assert run_cli(bench_main, ["scaling", *TINY, "--nproc", "1,2", *QUICK, "--no-bare", "--out", str(out)]) == 0
    one, two = _results(out)["points"]
    assert (one["world_size"], two["world_size"]) == (1, 2)
    assert (one["global_batch"], two["global_batch"]) == (8, 16)
    assert one["scaling_efficiency"] == 1.0
    assert two["scaling_efficiency"] == pytest.approx(two["images_per_s"] / 2 / one["images_per_s"])
    assert two["images_per_s_per_device"] == pytest.approx(two["images_per_s"] / 2)
    assert one["bare_images_per_s"] is None and one["trainer_vs_bare"] is None
    assert _is_png(out / "scaling.png")
    assert "scaling eff." in (out / "results.md").read_text()


def test_e2e_reads_the_dataset_through_its_loader_and_reports_the_wait(shapes_dir, tmp_path):
    out = tmp_path / "e2e"
    argv = ["e2e", *TINY, "data.loader=torchvision", f"data.path={shapes_dir}", "data.num_workers=1",
            "data.val_image_size=16", *QUICK, "--out", str(out)]
    assert run_cli(bench_main, argv) == 0
    (point,) = _results(out)["points"]
    assert point["data_loader"] == "torchvision" and point["mode"] == "e2e"
    assert 0 <= point["data_wait_fraction"] <= 1
    assert point["bare_images_per_s"] is None  # the bare reference is a step-mode measurement
    assert point["images_per_s"] > 0


def test_a_missing_dataset_stops_with_exit_2_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["e2e", *TINY, "data.loader=torchvision", f"data.path={tmp_path / 'nowhere'}", *QUICK, "--out", str(out)]
    assert run_cli(bench_main, argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nowhere" in err[0]
    assert not out.exists()
