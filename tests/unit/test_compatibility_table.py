"""bench models: the overrides each architecture is tried with, and the table's counts per family and stage."""

from __future__ import annotations

from visiontrain.bench.compatibility import overrides_for, summary
from visiontrain.config import load_config


def test_fixed_size_models_are_built_for_the_table_size_and_the_config_is_valid(tmp_path):
    vit = load_config(None, overrides_for("timm/vit_tiny_patch16_224", 64, tmp_path / "run", 2))
    assert vit.model.kwargs == {"img_size": 64} and vit.data.image_size == 64 and vit.schedule.name == "constant"
    tv_vit = load_config(None, overrides_for("torchvision/vit_b_16", 64, tmp_path / "run", 1))
    assert tv_vit.model.kwargs == {"image_size": 64} and tv_vit.train.epochs == 1
    convnet = load_config(None, overrides_for("timm/resnet10t", 64, tmp_path / "run", 2))
    assert convnet.model.kwargs == {}


def test_the_summary_counts_each_stage_passed_and_lists_every_failure():
    rows = [{"model": "timm/a", "family": "timm", "stage": "done", "ok": True},
            {"model": "timm/b", "family": "timm", "stage": "export", "ok": False, "reason": "x | y"},
            {"model": "timm/c", "family": "timm", "stage": "train", "ok": False, "reason": "boom"},
            {"model": "timm/d", "family": "timm", "stage": "skipped", "ok": None, "reason": "big"},
            {"model": "torchvision/e", "family": "torchvision", "stage": "build", "ok": False, "reason": "no"}]
    text = summary(rows, 90.0, 64)
    assert "| timm | 3 | 3 | 2 | 2 | 1 | 1 |" in text  # tried, build, train, resume, export, skipped
    assert "| torchvision | 1 | 0 | 0 | 0 | 0 | 0 |" in text
    assert "| timm/b | export | x / y |" in text and "timm/c | train | boom" in text and "Wall time 1.5 min" in text
