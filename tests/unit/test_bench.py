"""The throughput benchmark's parts: sweeps, FLOPs and MFU, timing, scaling, CLI checks."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.helpers import ROOT
from visiontrain.bench import flops, runner
from visiontrain.bench.cli import main as bench_main
from visiontrain.bench.sweep import expand
from visiontrain.bench.throughput import TimedLoader, _per_step, _percentile
from visiontrain.infra.errors import UsageError, run_cli


def test_sweep_is_the_cartesian_product_in_order_with_fixed_overrides_first():
    points = expand(["model.name=resnet9"], ["train.precision=fp32,bf16", "model.channels_last=false,true"])
    assert [p.label for p in points] == [
        "train.precision=fp32 model.channels_last=false", "train.precision=fp32 model.channels_last=true",
        "train.precision=bf16 model.channels_last=false", "train.precision=bf16 model.channels_last=true"]
    assert all(p.overrides[0] == "model.name=resnet9" and len(p.overrides) == 3 for p in points)
    assert [p.label for p in expand([], [])] == ["default"]


@pytest.mark.parametrize("fixed, sweep, message", [
    ([], ["train.precision"], "not of the form"),
    ([], ["train.precision=fp32,"], "not of the form"),
    ([], ["a.b=1", "a.b=2"], "twice"),
    (["train.precision=bf16"], ["train.precision=fp32,bf16"], "also swept"),
])
def test_sweep_rejects_malformed_items(fixed, sweep, message):
    with pytest.raises(UsageError, match=message):
        expand(fixed, sweep)


def test_flops_of_a_linear_layer_are_counted_exactly_and_tripled_for_training():
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5, bias=False))
    assert flops.forward_flops(model, torch.randn(2, 3, 4, 4)) == 2 * 2 * 48 * 5
    per_image = flops.train_flops_per_image(model, 4, torch.device("cpu"))
    assert per_image == 3 * 2 * 48 * 5
    # 1e9 images/s x 1440 FLOPs = 1.44 TFLOP/s on a 2.88 TFLOP/s device: half its peak.
    assert flops.mfu(1e9, per_image, 2.88) == pytest.approx(0.5)
    assert flops.mfu(1e9, per_image, None) is None


def test_peak_table_matches_device_names_and_precisions():
    assert flops.peak_tflops("NVIDIA H100 80GB HBM3", "bf16") == 989.0
    assert flops.peak_tflops("NVIDIA H100 PCIe", "bf16") == 756.0
    assert flops.peak_tflops("NVIDIA H200", "fp16") == 989.0
    assert torch.backends.cudnn.allow_tf32  # PyTorch's default: fp32 convolutions run as TF32
    assert flops.peak_tflops("NVIDIA A100-SXM4-80GB", "fp32") == 156.0
    assert flops.peak_tflops("Tesla V100-SXM2-32GB", "bf16") is None
    assert flops.peak_tflops("Some Future GPU", "bf16") is None
    assert flops.peak_tflops(None, "bf16") is None


def test_strategy_aliases_name_the_deepspeed_configs():
    assert runner.expand_aliases(["strategy=ddp", "optim.lr=0.1"]) == ["parallel.strategy=ddp", "optim.lr=0.1"]
    name, config = runner.expand_aliases(["strategy=zero2"])
    assert name == "parallel.strategy=deepspeed" and config.endswith("zero2.json")
    assert runner.DEEPSPEED_CONFIGS.joinpath("zero2.json").is_file()
    with pytest.raises(UsageError, match="zero5.*allowed: ddp, zero0, zero1, zero2, zero3"):
        runner.expand_aliases(["strategy=zero5"])


def test_old_backend_alias_still_works_with_a_warning_naming_strategy():
    with pytest.warns(FutureWarning, match="backend=zero2 is deprecated.*use strategy=zero2"):
        assert runner.expand_aliases(["backend=zero2"]) == runner.expand_aliases(["strategy=zero2"])


def test_process_counts_parse_and_refuse_nonsense():
    assert runner.parse_nproc("4,1,2,2") == [1, 2, 4]
    for bad in ("0", "a,b", "", "1,-2"):
        with pytest.raises(UsageError, match="--nproc"):
            runner.parse_nproc(bad)


def test_scaling_efficiency_is_per_process_throughput_relative_to_the_smallest_count():
    records = [{"label": "a", "world_size": 1, "images_per_s": 100.0},
               {"label": "a", "world_size": 4, "images_per_s": 300.0},
               {"label": "b", "world_size": 2, "images_per_s": 50.0},
               {"label": "b", "world_size": 4, "images_per_s": 100.0},
               {"label": "a", "world_size": 8, "error": "out of memory"}]
    runner.add_scaling_efficiency(records)
    assert [r.get("scaling_efficiency") for r in records] == [1.0, 0.75, 1.0, 1.0, None]
    assert records[3]["scaling_base_world_size"] == 2


def test_the_step_table_gives_each_attack_its_step_time_over_a_plain_step():
    from visiontrain.bench.results import table

    def record(label, adversarial, ips):
        return {"label": label, "world_size": 1, "images_per_s": ips, "images_per_s_min": ips,
                "images_per_s_max": ips, "images_per_s_per_device": ips, "step_ms_p50": 1.0, "step_ms_p90": 1.0,
                "data_wait_fraction": 0.0, "peak_memory_mib": 1.0, "train_gflops_per_image": 1.0,
                "achieved_tflops_per_device": 1.0, "mfu": None, "trainer_vs_bare": None, "adversarial": adversarial}

    rows = table([record("none", "none", 800.0), record("fgsm", "fgsm_rs", 400.0),
                  record("pgd", "pgd", 100.0)]).splitlines()
    assert rows[0].endswith("| step time vs plain |")
    assert [row.rsplit("|", 2)[-2].strip() for row in rows[2:]] == ["1.00x", "2.00x", "8.00x"]
    assert "vs plain" not in table([record("none", "none", 800.0)])


class _SlowLoader:
    """3 batches per epoch, each taking 10 ms to produce."""

    steps_per_epoch, micro_batch, batches_per_epoch = 3, 2, 3

    def __init__(self):
        self.epochs = []

    def set_epoch(self, epoch, start=0):
        self.epochs.append(epoch)

    def __iter__(self):
        for i in range(3):
            time.sleep(0.01)
            yield torch.full((2,), float(i)), torch.zeros(2)


def test_timed_loader_spans_epochs_and_records_handoffs_and_waiting():
    inner = _SlowLoader()
    loader = TimedLoader(inner, torch.device("cpu"))
    loader.plan(4)
    assert [int(images[0]) for images, _ in loader] == [0, 1, 2, 0]
    assert len(loader.step_seconds()) == 4 and loader.wait_s >= 0.04
    loader.plan(3)  # the next repeat continues the same iteration: no restart at batch 0
    assert [int(images[0]) for images, _ in loader] == [1, 2, 0]
    assert inner.epochs == [0, 1, 2]
    assert all(s >= 0 for s in loader.step_seconds())


def test_step_times_sum_micro_batches_and_percentiles_interpolate():
    assert _per_step([1.0, 2.0, 3.0, 4.0], 2) == [3.0, 7.0]
    assert _per_step([1.0, 2.0], 1) == [1.0, 2.0]
    assert _percentile([4.0, 1.0, 3.0, 2.0], 0.5) == 2.5
    assert _percentile([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0], 0.9) == pytest.approx(9.1)


@pytest.mark.parametrize("argv, message", [
    (["step", "optim.lrr=0.1"], "optim.lrr"),
    (["step", "--sweep", "train.precision=fp8"], "fp8"),
    (["step", "--nproc", "1,2"], "scaling mode"),
    (["scaling", "--nproc", "0"], "--nproc"),
    (["step", "--steps", "0"], "--steps"),
    (["step", "batch_per_device=0"], "batch_per_device='0' is invalid"),
    (["step", "train.batch_size=64", "batch_per_device=8"], "give one of them"),
    (["e2e", "-c", "missing.yaml"], "missing.yaml"),
    (["step", "run.device=cuda"], "cuda"),
])
def test_bad_benchmark_input_is_one_line_and_exit_2_before_any_run(argv, message, tmp_path, capsys):
    if "run.device=cuda" in argv and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert run_cli(bench_main, argv + ["--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert not (tmp_path / "out").exists()


class _SlowNormalizer:
    """Burns ~20 ms of CPU per batch in the calling thread, then converts to float."""

    device = torch.device("cpu")

    def __call__(self, images):
        end = time.process_time() + 0.02
        while time.process_time() < end:
            pass
        return images.float()


class _Uint8Loader:
    """4 uint8 batches of 8 images per epoch, handed through `normalize` as the file loaders do."""

    def __init__(self):
        self.normalize = _SlowNormalizer()

    def set_epoch(self, epoch, start=0):
        pass

    def __iter__(self):
        for _ in range(4):
            yield self.normalize(torch.zeros(8, 3, 4, 4, dtype=torch.uint8)), torch.zeros(8)


def test_loader_bench_times_each_loader_with_and_without_normalization_and_splits_its_cpu_time():
    from types import SimpleNamespace

    from visiontrain.bench.loader import epoch_timings

    loader = _Uint8Loader()
    normalize = loader.normalize
    timings = epoch_timings({"a": SimpleNamespace(train=loader)}, epochs=2, uint8=("a",))
    assert sorted(timings) == ["a", "a/uint8"] and all(len(runs) == 2 for runs in timings.values())
    assert loader.normalize is normalize  # put back after the uint8 epochs
    for runs in timings.values():
        assert all(t["img_per_s"] > 0 and set(t["cpu_us_per_img"]) == {"main", "threads", "workers"} for t in runs)
    # 4 batches x 20 ms over 32 images: ~2500 us of main-thread CPU per image, only where it normalizes.
    assert min(t["cpu_us_per_img"]["main"] for t in timings["a"]) > 1500
    assert max(t["cpu_us_per_img"]["main"] for t in timings["a/uint8"]) < 1000


def _timing(img_per_s, main, threads, workers):
    return {"img_per_s": img_per_s, "cores_busy": 1.5, "cpu_us_per_img": {"main": main, "threads": threads,
                                                                         "workers": workers}}


def test_loader_bench_rows_carry_the_per_stage_profile_and_the_report_prints_it():
    from visiontrain.bench.loader import _loop_profile, _row, report

    timings = {"ffcv": [_timing(2000, 60, 440, 0)] * 3, "ffcv/uint8": [_timing(2400, 5, 400, 0)] * 3,
               "resized": [_timing(1000, 90, 0, 700)] * 3, "resized/uint8": [_timing(1200, 10, 0, 800)] * 3}
    row = _row("imagenet-like, 5000 samples, res 160", timings, 2, {"ffcv": "ffcv", "resized": "torchvision"},
               baseline="resized")
    row["profile"] = {"stages_us_per_img_one_core": {
        "ffcv": {"jpeg_decode": 160.0, "crop_resize": 110.0, "flip": 50.0},
        "torchvision": {"read_decode": 400.0, "crop_resize_flip": 300.0},
        "normalization": {"normalize": 35.0, "torch_formula": 240.0}}, **_loop_profile(timings, "ffcv", "resized")}
    assert row["ffcv_speedup"] == 2.0 and row["loaders"]["ffcv"]["img_per_s_per_decoding_core"] == 1e6 / 440
    assert row["ffcv_cpu_speedup"] == 790 / 500  # all CPU per image: main thread + threads + workers
    loop = row["profile"]["loop"]
    assert loop["ffcv"]["uint8"]["img_per_s"] == 2400 and loop["ffcv"]["decode_img_per_s_per_core"] == 2500
    assert loop["resized"]["main_thread_normalize_us_per_img"] == 80
    assert row["profile"]["uint8_speedup"] == 2.0 and row["profile"]["decode_cpu_ratio"] == 2.0
    text = report([row])
    assert "| ffcv | 2000 | **2.0x** (1.6x) | 1.50 | 440 / 60 | 2273 |" in text
    assert "Profile, res 160" in text and "| ffcv | 2400 / 2000 | 400 | 5 / 60 |" in text
    assert "ffcv JPEG decode 160 + crop/resize 110 + flip 50 (decode 50%)" in text
    assert "normalize 35 (torch formula 240)" in text and "decoding-side CPU per image" in text


def test_the_stock_torchvision_pipeline_hands_over_normalized_float_batches_in_a_seeded_order(tmp_path):
    from PIL import Image

    from visiontrain.bench.stock_loader import StockTorchvisionTrain

    for k in range(8):
        folder = tmp_path / f"class{k % 2}"
        folder.mkdir(exist_ok=True)
        Image.new("RGB", (40 + 7 * k, 30 + 5 * k), (30 * k, 255, 0)).save(folder / f"{k}.jpg", quality=95)
    loader = StockTorchvisionTrain(tmp_path, res=16, batch=4, workers=0, mean=[0.5] * 3, std=[0.25] * 3)
    loader.set_epoch(3)
    first = [(images.clone(), labels.clone()) for images, labels in loader]
    loader.set_epoch(3)
    again = list(loader)
    assert len(first) == 2 and all(images.shape == (4, 3, 16, 16) and images.dtype == torch.float32
                                   for images, _ in first)
    # (255 / 255 - 0.5) / 0.25 = 2 in the green channel of every image: scaled to [0, 1], then normalized
    torch.testing.assert_close(first[0][0][:, 1], torch.full((4, 16, 16), 2.0), atol=0.05, rtol=0)
    assert all(torch.equal(a[1], b[1]) for a, b in zip(first, again))  # the epoch's seed fixes the order


def test_the_loader_report_states_ffcv_against_the_stock_pipeline():
    from visiontrain.bench.loader import _row, _versus, report

    timings = {"ffcv": [_timing(2000, 60, 440, 0)] * 3, "stock": [_timing(500, 50, 0, 3500)] * 3}
    row = _row("imagenet-like, 5000 samples, res 160", timings, 2, {"ffcv": "ffcv", "stock": "stock"},
               baseline="stock")
    row.update(_versus(timings, "ffcv", "stock", "ffcv_vs_stock"))
    assert row["ffcv_vs_stock_speedup"] == 4.0 and row["ffcv_vs_stock_cpu_speedup"] == 3550 / 500
    assert "stock torchvision reference pipeline on the original photos: **4.0x** img/s, 7.1x per CPU-second" \
        in report([row])


def test_prep_bench_replicates_the_photos_and_reports_the_ratio_and_the_projection(tmp_path):
    import tarfile

    from PIL import Image

    from visiontrain.bench import prep_writer

    shared = tmp_path / "shared"
    shared.mkdir()
    with tarfile.open(shared / "imagenet-sample-200.tar", "w") as tar:
        for wnid in ("n01", "n02", "n03"):
            path = tmp_path / f"{wnid}_x.JPEG"
            Image.new("RGB", (20, 10)).save(path)
            tar.add(path, f"imagenet-sample/{wnid}/{wnid}_x.JPEG")
    train, val = prep_writer.replicate(shared, tmp_path / "work", samples=7)
    assert sorted(len(list(d.iterdir())) for d in train.iterdir()) == [2, 2, 3]  # 7 spread over 3 classes
    assert len(list(val.glob("*/*"))) == 3 and all(p.is_symlink() for p in train.glob("*/*"))
    commands = prep_writer.commands(train, val, tmp_path / "out", 2, 256, 90)
    assert commands["visiontrain"][3:5] == ["prep", "imagenet"] and "visiontrain.bench.ffcv_writer" in commands["ffcv"]
    assert all(c[c.index("--workers") + 1] == "2" and c[c.index("--max-res") + 1] == "256" for c in commands.values())

    def row(workers, ours, theirs):
        return {"workers": workers, "images": 8200, "img_per_s": 8200 / ours, "speed_vs_ffcv": theirs / ours,
                "median": {"visiontrain": {"wall_s": ours, "cpu_s": 40.0}, "ffcv": {"wall_s": theirs, "cpu_s": 41.0}}}

    text = prep_writer.report({"max_res": 256, "jpeg_quality": 90, "repeats": 2,
                               "rows": [row(1, 41.0, 41.0), row(2, 20.5, 24.6)]})
    assert "| 2 | 20.5 | 24.6 | **1.20x** | 40.0 / 41.0 |" in text
    assert "1 -> 2 workers: 2.00x faster" in text and "200 images/s per worker" in text
    assert f"about {1_281_167 / (200 * 32) / 3600:.2f} h" in text


def test_the_robustness_table_states_each_method_against_standard_training(tmp_path, capsys):
    from visiontrain.bench.robustness import markdown

    def row(method, seconds, collapse=None):
        return {"method": method, "train_seconds": seconds, "clean_top1": 80.0, "pgd_top1": 40.0, "pgd_images": 1000,
                "apgd_top1": 38.5, "apgd_images": 300, "check": [30.0, 41.5], "collapse_epoch": collapse}

    lines = markdown({"command": "python -m visiontrain bench robustness --data d",
                      "rows": [row("standard", 60), row("fgsm_rs", 120), row("pgd7", 480, collapse=3)]}).splitlines()
    assert lines[0] == "`python -m visiontrain bench robustness --data d`"
    assert lines[5] == ("| fgsm_rs | 80.00 % | 40.00 % (1000) | 38.50 % (300) | 2.0 min | 2.0x | 30.0, 41.5 | - |")
    assert lines[6].endswith("| 8.0x | 30.0, 41.5 | epoch 3 |")
    # Each single-step method against PGD-7 (collapse runs at another epsilon left out): robust top-1, time
    lines = markdown({"command": "c", "rows": [row("fgsm_rs", 120), row("n_fgsm", 160), row("fgsm_rs_eps16_255", 60),
                                               {**row("pgd7", 480), "pgd_top1": 41.25, "apgd_top1": 38.0}]})
    assert lines.splitlines()[-2:] == [
        "fgsm_rs against pgd7: PGD-20 -1.25 points, APGD +0.50 points, training time 4.0x shorter",
        "n_fgsm against pgd7: PGD-20 -1.25 points, APGD +0.50 points, training time 3.0x shorter"]
    assert "fgsm_rs_eps16_255 against" not in lines
    assert not [line for line in markdown({"command": "c", "rows": [row("fgsm_rs", 1)]}).splitlines()
                if "against" in line]
    assert run_cli(bench_main, ["robustness", "--data", str(tmp_path)]) == 2
    assert "no meta.json" in capsys.readouterr().err


def test_the_robustness_bench_defaults_are_a_valid_run_of_its_default_config():
    import argparse

    from visiontrain.bench.robustness import add_arguments
    from visiontrain.config import load_config

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--data", "d"])
    cfg = load_config(ROOT / args.config, [f"train.epochs={args.epochs}"])
    assert (cfg.model.name, cfg.train.epochs, cfg.schedule.warmup_epochs) == ("resnet9", 15, 7.5)


def test_the_pruning_benchmark_runs_one_spec_twice_with_the_same_draws_and_two_pruners(tmp_path, monkeypatch):
    import argparse

    from visiontrain.bench.pruning import markdown, study_specs

    monkeypatch.chdir(ROOT)
    data = tmp_path / "cifar"
    data.mkdir()
    (data / "meta.json").write_text('{"splits": {"train": {"samples": 45000}}}')
    args = argparse.Namespace(data=data, spec=Path("configs/sweeps/cifar10_fast.yaml"), train_images=5000, trials=9,
                              epochs=9, seed=4, overrides=["model.width=32"])
    specs = study_specs(args)
    assert specs["random"]["sampler"] == specs["halving"]["sampler"] == {"name": "random", "seed": 4}
    assert specs["random"]["pruner"] == {"name": "none"}
    assert specs["halving"]["pruner"] == {"name": "successive_halving", "min_resource": 1, "reduction_factor": 3}
    assert specs["random"]["overrides"] == specs["halving"]["overrides"]
    assert {"data.train_fraction=0.111111", "train.epochs=9", "model.width=32", f"data.path={data}"} <= set(
        specs["halving"]["overrides"])
    assert specs["halving"]["space"] == specs["random"]["space"] and specs["halving"]["trials"] == 9
    doc = {"command": "bench pruning", "studies": {
        "random": {"best_top1": 80.0, "cpu_hours": 3.0, "complete": 9, "pruned": 0, "epochs_trained": 81},
        "halving": {"best_top1": 79.5, "cpu_hours": 1.0, "complete": 2, "pruned": 7, "epochs_trained": 27}}}
    table = markdown(doc)
    assert "| halving | 2 / 7 | 27 | 79.50 % | 1.000 | 3.00x less |" in table
    assert "| random | 9 / 0 | 81 | 80.00 % | 3.000 | - |" in table
