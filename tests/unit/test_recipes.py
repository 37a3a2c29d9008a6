"""The recipe table's arithmetic and its refusals (the runs themselves: tests/integration/test_recipe_table.py)."""

from __future__ import annotations

import pytest

from visiontrain.bench.cli import main as bench_main
from visiontrain.bench.recipes import aggregate, markdown, seeds_per_config
from visiontrain.infra.errors import UsageError, run_cli


def _run(seed: int, top1: float, train_s: float, process_s: float) -> dict:
    return {"seed": seed, "top1": top1, "train_s": train_s, "process_s": process_s, "cores": 1.9, "epochs": 10,
            "model": "cifar_fast", "world_size": 1, "samples": 5000, "train_samples": 45000}


def test_rows_are_mean_and_sample_std_over_the_seeds_computed_by_hand():
    row = aggregate("fast", [_run(0, 94.0, 3.0, 10.0), _run(1, 94.2, 3.2, 11.0), _run(2, 93.8, 2.8, 12.0)])
    # mean 94.0; deviations 0, 0.2, -0.2 -> sample variance (0.04 + 0.04) / 2 = 0.04 -> std 0.2
    assert row["top1_mean"] == pytest.approx(94.0) and row["top1_std"] == pytest.approx(0.2)
    assert (row["top1_min"], row["top1_max"], row["runs"]) == (93.8, 94.2, 3)
    assert row["train_s_mean"] == pytest.approx(3.0) and row["process_s_mean"] == pytest.approx(11.0)
    assert aggregate("fast", [_run(0, 50.0, 1.0, 2.0)])["top1_std"] == 0.0
    table = markdown([row], "NVIDIA H100, driver 1; torch 2", "1 GPU", "python -m visiontrain bench recipes")
    assert "| fast | cifar_fast | 10 | 1 | 94.00 ± 0.20 % | 3 | 93.80-94.20 | 3.00 | 11.0 | 1.90 |" in table
    assert "Validation: 5,000 images, training: 45,000 images per epoch" in table


def test_seed_counts_default_per_config_and_refuse_nonsense():
    assert seeds_per_config(["fast", "resnet9"], []) == {"fast": 20, "resnet9": 10}
    assert seeds_per_config(["fast"], ["fast=3"]) == {"fast": 3}
    for configs, seeds, message in ((["resnet50"], [], "--configs resnet50: unknown; allowed: fast, resnet9, resnet18"),
                                    (["fast"], ["resnet9=2"], "--seeds 'resnet9=2'"),
                                    (["fast"], ["fast=0"], "N >= 1"), (["fast"], ["fast"], "CONFIG=N")):
        with pytest.raises(UsageError, match=message):
            seeds_per_config(configs, seeds)


def test_bad_input_is_one_line_and_exit_2_before_any_run(tmp_path, capsys):
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(b"not a tar archive")
    cases = ((["--configs", "vit"], "--configs vit: unknown"),
             (["--data", str(tmp_path / "none"), "--configs", "fast"], "not a directory"),
             (["--data", str(tmp_path), "--configs", "fast", "train.epochs=1"], "schedule.warmup_epochs"),
             (["--data", str(tmp_path), "run.seed=3"], "run.seed=3: the table sets run.seed, run.dir, data.path"),
             (["--configs", "fast,resnet50"], "--configs resnet50: unknown"),
             (["--seeds", "fast=two"], "--seeds 'fast=two'"),
             (["--cifar-jpegs", str(tmp_path / "missing.tar.gz"), "--work", str(tmp_path / "w")], "not found"),
             (["--cifar-jpegs", str(broken), "--work", str(tmp_path / "w")], "not a readable tar archive"))
    for args, message in cases:
        assert run_cli(bench_main, ["recipes", *args, "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "w").exists() or not any((tmp_path / "w").iterdir())  # no half-extracted folder
