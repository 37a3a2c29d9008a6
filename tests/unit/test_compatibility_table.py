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


def test_architectures_that_need_larger_images_are_tried_at_their_minimum(tmp_path):
    inception = load_config(None, overrides_for("torchvision/inception_v3", 64, tmp_path / "run", 2))
    assert (inception.data.image_size, inception.data.val_image_size) == (75, 75)
    maxvit = load_config(None, overrides_for("torchvision/maxvit_t", 64, tmp_path / "run", 2))
    assert maxvit.data.image_size == 224 and maxvit.model.kwargs == {}  # built for 224 already


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


def test_an_architecture_past_the_timeout_is_a_failed_row_at_its_stage_and_the_walk_goes_on(tmp_path, monkeypatch):
    import argparse
    import json
    import time

    from visiontrain.bench import compatibility

    def slow_then_fine(name, size, work, max_params, progress):
        if name == "timm/slow":
            progress["stage"] = "resume"
            time.sleep(30)  # SIGALRM interrupts it
        return {"model": name, "family": "timm", "stage": "done", "ok": True}

    monkeypatch.setattr(compatibility, "architectures", lambda *args: ["timm/slow", "timm/fine"])
    monkeypatch.setattr(compatibility, "check_one", slow_then_fine)
    args = argparse.Namespace(family=["timm"], match="*", max_params=100.0, limit=0, every=1, image_size=32,
                              timeout=1, out=tmp_path)
    assert compatibility.main(args) == 0
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [(r["model"], r["stage"], r["ok"]) for r in rows] == [("timm/slow", "resume", False),
                                                                 ("timm/fine", "done", True)]
    assert rows[0]["reason"] == "timeout: not done in 1 s" and rows[0]["seconds"] < 5
    assert "| timm | 2 | 2 | 2 | 1 | 1 | 0 |" in (tmp_path / "summary.md").read_text()


def test_an_architecture_that_kills_its_process_is_a_row_and_a_stopped_walk_continues_where_it_was(
        tmp_path, monkeypatch):
    import argparse
    import json
    import os

    from visiontrain.bench import compatibility

    def crash_on_b(name, size, work, max_params, progress):
        if name == "timm/b":
            progress["stage"] = "export"
            os.abort()  # a native fault in an architecture's code (heap corruption, a segfault)
        return {"model": name, "family": "timm", "stage": "done", "ok": True}

    monkeypatch.setattr(compatibility, "check_one", crash_on_b)
    args = argparse.Namespace(family=["timm"], match="*", max_params=100.0, limit=0, every=1, image_size=32,
                              timeout=30, out=tmp_path)
    monkeypatch.setattr(compatibility, "architectures", lambda *a: ["timm/a", "timm/b"])
    assert compatibility.main(args) == 0
    monkeypatch.setattr(compatibility, "architectures", lambda *a: ["timm/a", "timm/b", "timm/c"])
    assert compatibility.main(args) == 0  # the same --out again: only timm/c is new
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [(r["model"], r["stage"], r["ok"]) for r in rows] == [
        ("timm/a", "done", True), ("timm/b", "export", False), ("timm/c", "done", True)]
    assert rows[1]["reason"].startswith("the process died (signal 6")
    assert "| timm | 3 | 3 | 3 | 3 | 2 | 0 |" in (tmp_path / "summary.md").read_text()
