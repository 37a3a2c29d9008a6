"""python -m visiontrain bench project: ImageNet time to train projected from measured per-GPU rates.

The arithmetic is checked against rows computed by hand, the interpolation rule against rates that
fall exactly as 1/pixels, and bad input against the one-line exit-2 contract."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from visiontrain.bench.cli import main as bench_main
from visiontrain.bench.projection import (
    FFCV_MAX_RES,
    FFCV_MIN_RES,
    FFCV_PUBLISHED,
    FFCV_RAMPS,
    FFCV_VAL_RES,
    IMAGENET_TRAIN_IMAGES,
    multi_gpu_seconds,
    rate_at,
    schedule,
    training_seconds,
)
from visiontrain.config import load_config
from visiontrain.infra.errors import run_cli

ROOT = Path(__file__).resolve().parents[2]
R50 = ROOT / "configs" / "imagenet" / "resnet50.yaml"
R18 = ROOT / "configs" / "imagenet" / "resnet18.yaml"


def _project(argv: list[str], out: Path) -> dict:
    assert run_cli(bench_main, ["project", *argv, "--out", str(out)]) == 0
    return json.loads((out / "projection.json").read_text())


def test_a_16_epoch_resnet50_row_equals_the_hand_computation(tmp_path):
    # resnet50.yaml stretched to 16 epochs with FFCV's ramp (start 11, end 13), 160 -> 192 px, resolutions
    # rounded down to multiples of 32: epochs 0-11 at 160, epoch 12 mid-ramp (176 -> 160), epochs 13-15 at 192.
    # 1 GPU:  13 x 1,281,167 / 4000 + 3 x 1,281,167 / 2800
    #       = 13 x 320.29175 + 3 x 457.559642857 = 4163.79275 + 1372.678928571 = 5536.471678571 s
    #       = 92.274528 min = 1.537909 h
    # 8 GPUs at 90 %: 5536.471678571 / (8 x 0.9) = 768.954400 s = 12.815907 min
    doc = _project(["--rate", "resnet50:160=4000", "--rate", "resnet50:192=2800", "--epochs", "16",
                    "--config", str(R50)], tmp_path)
    (row,) = doc["rows"]
    assert row["model"] == "resnet50" and row["epochs"] == 16
    assert row["resolutions"] == [160] * 13 + [192] * 3
    assert row["schedule"] == "160 px x 13, 192 px x 3"
    assert row["one_gpu_seconds"] == pytest.approx(5536.471678571, rel=1e-12)
    assert row["one_gpu_hours"] == pytest.approx(1.5379087996, rel=1e-9)
    assert row["multi_gpu_minutes"] == pytest.approx(12.8159066634, rel=1e-9)
    assert row["ffcv_published"]["minutes"] == 14.9 and row["ffcv_published"]["top1_percent"] == 73.8
    assert row["ffcv_published"]["gpus"] == 8
    assert doc["gpus"] == 8 and doc["efficiency"] == 0.9 and doc["images_per_epoch"] == 1_281_167
    md = (tmp_path / "projection.md").read_text()
    assert "| resnet50 | 16 | 160 px x 13, 192 px x 3 | 1.54 | 12.8 | 14.9 (8 x A100) | 73.8 % |" in md


def test_the_88_epoch_schedule_and_its_sum():
    # 88 epochs, ramp 65 -> 76: 160 px up to epoch 75 (176-191 round down), 192 px from epoch 76: 76 + 12 epochs.
    _, resolutions = schedule(R50, 88)
    assert resolutions == [160] * 76 + [192] * 12
    # 76 x 1,281,167 / 4000 + 12 x 1,281,167 / 2800 = 24342.173 + 5490.715714 = 29832.888714 s
    assert training_seconds(resolutions, {160: 4000, 192: 2800}, IMAGENET_TRAIN_IMAGES) == pytest.approx(
        29832.888714286, rel=1e-12)


def test_rates_between_measured_resolutions_fall_as_one_over_pixels():
    # 192 px between 160 and 224: pixels 25,600 / 36,864 / 50,176, fraction (36864-25600)/(50176-25600) = 11/24;
    # seconds per image 1/4000 + 11/24 x (1/2000 - 1/4000) = (1/4000) x 35/24  ->  4000 x 24/35 = 2742.857 img/s
    assert rate_at({160: 4000, 224: 2000}, 192) == pytest.approx(4000 * 24 / 35, rel=1e-12)
    # rates exactly proportional to 1/pixels are reproduced: 4000 x (160/192)^2 = 2777.78 img/s
    assert rate_at({160: 4000, 224: 4000 * (160 / 224) ** 2}, 192) == pytest.approx(4000 * (160 / 192) ** 2)
    # the two nearest measured points are used, and measured points are exact
    assert rate_at({128: 9000, 160: 4000, 224: 2000, 256: 100}, 192) == pytest.approx(4000 * 24 / 35, rel=1e-12)
    assert rate_at({160: 4000, 224: 2000}, 224) == 2000
    for res in (128, 256):
        with pytest.raises(ValueError, match=f"{res} px is outside the measured resolutions 160, 224 px"):
            rate_at({160: 4000, 224: 2000}, res)


def test_an_interpolated_rate_enters_the_row(tmp_path):
    # measured 128 and 224 only: 160 and 192 are interpolated.
    # 160: pixels 16,384 / 25,600 / 50,176: fraction 9216/33792 = 3/11; s/img 1/8000 + 3/11 x (1/2000 - 1/8000)
    #      = 1/8000 x (1 + 9/11) = 20/88000 -> 4400 img/s
    # 192: fraction (36864-16384)/33792 = 20/33; s/img 1/8000 x (1 + 60/33) = 93/264000 -> 2838.7097 img/s
    # 16 epochs: 13 x 1,281,167 / 4400 + 3 x 1,281,167 / 2838.7097 = 3785.2661 + 1353.9606 = 5139.2267 s
    doc = _project(["--rate", "resnet50:128=8000", "--rate", "resnet50:224=2000", "--epochs", "16",
                    "--config", str(R50)], tmp_path)
    assert doc["rows"][0]["one_gpu_seconds"] == pytest.approx(13 * 1281167 / 4400 + 3 * 1281167 * 93 / 264000,
                                                              rel=1e-12)
    assert doc["rows"][0]["one_gpu_seconds"] == pytest.approx(5139.2267, abs=1e-4)
    used = {r["image_size"]: r for r in doc["rates"]}
    assert used[160]["interpolated"] and used[160]["between"] == [128, 224]
    assert used[160]["images_per_s"] == pytest.approx(4400)
    assert not used[128]["interpolated"] and not used[128]["used"]


def test_the_multi_gpu_column_divides_by_gpus_times_efficiency(tmp_path):
    assert multi_gpu_seconds(7200, 8, 1.0) == 900
    assert multi_gpu_seconds(7200, 8, 0.9) == pytest.approx(1000)
    doc = _project(["--rate", "resnet50:160=4000", "--rate", "resnet50:192=2800", "--epochs", "16",
                    "--config", str(R50), "--gpus", "4", "--efficiency", "0.5"], tmp_path)
    (row,) = doc["rows"]
    assert row["multi_gpu_minutes"] * 60 == pytest.approx(row["one_gpu_seconds"] / 2, rel=1e-12)
    assert "projected 4-GPU minutes (50 % eff.)" in (tmp_path / "projection.md").read_text()


def test_without_measurements_the_table_has_ffcvs_figures_and_not_measured(tmp_path):
    doc = _project([], tmp_path)
    assert [(r["model"], r["epochs"]) for r in doc["rows"]] == [
        (m, e) for m in ("resnet50", "resnet18") for e in (16, 24, 32, 40, 56, 88)]
    assert all(r["one_gpu_hours"] is None and not r["measured"] for r in doc["rows"])
    md = (tmp_path / "projection.md").read_text()
    assert "| resnet50 | 88 | 160 px x 76, 192 px x 12 | not measured | not measured | 77.2 (8 x A100) | 78.4 % |" in md
    assert "| resnet18 | 16 | 160 px x 13, 192 px x 3 | not measured | not measured | 35.0 (1 x A100) | 66.9 % |" in md


def test_our_imagenet_configs_are_ffcvs_schedules_at_their_epoch_counts():
    for path, epochs in ((R50, 88), (R18, 16)):
        d, t = (cfg := load_config(path)).data, cfg.train
        assert t.epochs == epochs and d.progressive_resizing
        assert (d.ramp_start_epoch, d.ramp_end_epoch) == FFCV_RAMPS[epochs]
        assert (d.min_res, d.max_res, d.val_image_size) == (FFCV_MIN_RES, FFCV_MAX_RES, FFCV_VAL_RES)
    assert set(FFCV_PUBLISHED["resnet50"]) == set(FFCV_PUBLISHED["resnet18"]) == set(FFCV_RAMPS)


def _point(mode: str, model: str, res: int, rate: float, compile_: bool, wait: float = 0.0) -> dict:
    return {"label": f"data.image_size={res} model.compile={str(compile_).lower()}", "mode": mode, "model": model,
            "image_size": res, "precision": "bf16", "channels_last": True, "compile": compile_,
            "batch_per_device": 128, "world_size": 1, "strategy": "ddp",
            "data_loader": "ffcv" if mode == "e2e" else "random", "images_per_s": rate,
            "images_per_s_per_device": rate, "data_wait_fraction": wait}


def _results(path: Path, mode: str, points: list[dict]) -> None:
    path.mkdir(parents=True)
    env = {"gpu": "NVIDIA H100 80GB HBM3", "gpu_count": 1, "driver": "580.1", "torch": "2.11.0", "cuda": "13.0",
           "cudnn": 91000, "cpu_count": 16, "cpu_model": "x", "packages": {"ffcv": "1.0.2"}}
    (path / "results.json").write_text(json.dumps({"schema_version": 1, "mode": mode, "command": "bench", "created":
                                                   "2026-01-01", "environment": env, "settings": {}, "points": points}))


@pytest.fixture
def results_dir(tmp_path) -> Path:
    root = tmp_path / "bench"
    _results(root / "ffcv_e2e", "e2e", [
        _point("e2e", "resnet50", 160, 3000, False, 0.25), _point("e2e", "resnet50", 160, 3500, True, 0.3),
        _point("e2e", "resnet50", 192, 2100, False), _point("e2e", "resnet50", 192, 2500, True),
        _point("e2e", "resnet18", 160, 9000, False), _point("e2e", "resnet18", 192, 6000, False),
        {"label": "oom", "mode": "e2e", "world_size": 1, "error": "CUDA out of memory", "returncode": 1}])
    _results(root / "ffcv_step", "step", [
        _point("step", "resnet50", 160, 5000, True), _point("step", "resnet50", 192, 3500, True),
        _point("step", "resnet18", 160, 12000, False), _point("step", "resnet18", 192, 8000, False)])
    return root


def test_results_give_the_fastest_point_per_model_and_resolution(results_dir, tmp_path):
    doc = _project([str(results_dir), "--epochs", "16"], tmp_path / "out")
    r50, r18 = doc["rows"]
    # 13 x 1,281,167 / 3500 + 3 x 1,281,167 / 2500 = 4758.620286 + 1537.4004 = 6296.020686 s (compiled points)
    assert r50["one_gpu_seconds"] == pytest.approx(13 * 1281167 / 3500 + 3 * 1281167 / 2500, rel=1e-12)
    assert r50["one_gpu_seconds"] == pytest.approx(6296.020686, abs=1e-5)
    # 13 x 1,281,167 / 9000 + 3 x 1,281,167 / 6000 = 1850.574556 + 640.5835 = 2491.158056 s
    assert r18["one_gpu_seconds"] == pytest.approx(2491.158056, abs=1e-5)
    assert r18["ffcv_published"] == {"top1_percent": 66.9, "minutes": 35.0, "gpus": 1, "gpu": "A100",
                                     "source": r18["ffcv_published"]["source"]}
    used = {(r["model"], r["image_size"]): r for r in doc["rates"]}
    assert used["resnet50", 160]["compile"] is True and used["resnet50", 160]["matching_points"] == 2
    # e2e next to step for the same setting: 3500 / 5000 = 0.70 with the e2e point's data wait
    compared = {(c["model"], c["image_size"], c["compile"]): c for c in doc["comparisons"]}
    assert compared["resnet50", 160, True]["e2e_over_step"] == pytest.approx(0.7)
    assert compared["resnet50", 160, True]["data_wait_fraction"] == 0.3
    assert compared["resnet50", 160, False]["step_images_per_s"] is None  # no eager step point
    assert compared["resnet18", 192, False]["e2e_over_step"] == pytest.approx(0.75)
    assert [s["gpu"] for s in doc["sources"]] == ["NVIDIA H100 80GB HBM3"] * 2
    md = (tmp_path / "out" / "projection.md").read_text()
    assert "NVIDIA H100 80GB HBM3 x1, driver 580.1" in md and "torch 2.11.0, CUDA 13.0" in md
    assert "| resnet50 | 160 | data.image_size=160 model.compile=true | ffcv | 3500.0 | 5000.0 | 0.70 | 30.0 % |" in md


def test_where_selects_points_and_step_projects_the_ceiling(results_dir, tmp_path):
    eager = _project([str(results_dir / "ffcv_e2e" / "results.json"), "--where", "compile=false", "--epochs", "16",
                      "--config", str(R50)], tmp_path / "eager")
    assert eager["rows"][0]["one_gpu_seconds"] == pytest.approx(13 * 1281167 / 3000 + 3 * 1281167 / 2100)
    ceiling = _project([str(results_dir), "--of", "step", "--epochs", "16", "--config", str(R50)], tmp_path / "step")
    assert ceiling["rows"][0]["one_gpu_seconds"] == pytest.approx(13 * 1281167 / 5000 + 3 * 1281167 / 3500)
    # --rate takes precedence over a measured point
    given = _project([str(results_dir), "--rate", "resnet50:192=2800", "--epochs", "16", "--config", str(R50)],
                     tmp_path / "given")
    assert given["rows"][0]["one_gpu_seconds"] == pytest.approx(13 * 1281167 / 3500 + 3 * 1281167 / 2800)


def test_a_resolution_outside_the_measured_range_is_refused_in_one_line(tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["project", "--rate", "resnet50:160=4000", "--rate", "resnet50:176=3000", "--config", str(R50),
            "--out", str(out)]
    assert run_cli(bench_main, argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: resnet50, 16 epochs") and "\n" not in err
    assert "192 px is outside the measured resolutions 160, 176 px" in err
    assert not out.exists()


@pytest.mark.parametrize("argv, message", [
    (["--rate", "resnet50:160"], "--rate 'resnet50:160'"),
    (["--rate", "resnet50:160=-5"], "IMG_S > 0"),
    (["--rate", "resnet50=3000"], "MODEL:RES=IMG_S"),
    (["--efficiency", "0"], "--efficiency 0.0"),
    (["--efficiency", "1.5"], "(0, 1]"),
    (["--gpus", "0"], "--gpus 0"),
    (["--gpus", "two"], "--gpus"),
    (["--epochs", "30"], "--epochs 30"),
    (["--config", "missing.yaml"], "missing.yaml"),
    (["nowhere"], "nowhere"),
    (["--where", "compile=true"], "no field 'compile'"),
])
def test_bad_projection_input_is_one_line_and_exit_2(argv, message, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_cli(bench_main, ["project", *argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err, err
    assert not out.exists()


def test_results_without_the_projected_models_or_unreadable_are_refused(tmp_path, capsys):
    _results(tmp_path / "cifar", "step", [_point("step", "resnet9", 32, 80000, False)])
    assert run_cli(bench_main, ["project", str(tmp_path / "cifar")]) == 2
    err = capsys.readouterr().err.strip()
    assert "no e2e points for resnet18 or resnet50" in err and "step resnet9" in err and "\n" not in err
    bad = tmp_path / "bad" / "results.json"
    bad.parent.mkdir()
    bad.write_text("{not json")
    assert run_cli(bench_main, ["project", str(bad.parent)]) == 2
    err = capsys.readouterr().err.strip()
    assert str(bad) in err and "not valid JSON" in err and "\n" not in err
