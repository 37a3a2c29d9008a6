"""The int8 export's pieces: the search grid, the classifier head kept in float, reduce_range from the CPU flags,
calibration images read from the training split through the evaluation preprocessing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from visiontrain.deploy import quantize as q


def test_search_tries_every_method_and_weight_granularity_base_first():
    base = q.QuantSettings("int8", "entropy", "tensor", True, ("Gemm",))
    grid = q.search_space(base)
    assert grid[0] == base and len(grid) == 6 and len(set(grid)) == 6
    assert {(s.method, s.weights) for s in grid} == {(m, w) for m in q.METHODS for w in q.GRANULARITIES}
    assert all(s.reduce_range and s.keep_float == ("Gemm",) for s in grid)
    assert [s.weights for s in q.search_space(q.QuantSettings("dynamic"))] == ["channel", "tensor"]


def test_reduce_range_auto_follows_vnni(monkeypatch):
    monkeypatch.setattr(q, "cpu_has_vnni", lambda: False)
    assert q.reduce_range_for("auto") is True and q.reduce_range_for("off") is False
    monkeypatch.setattr(q, "cpu_has_vnni", lambda: True)
    assert q.reduce_range_for("auto") is False and q.reduce_range_for("on") is True


def test_the_head_from_the_last_matrix_product_to_the_logits_stays_float(tmp_path):
    from visiontrain.config import ModelConfig
    from visiontrain.deploy.export import export_model
    from visiontrain.models import build_model

    path = tmp_path / "m.onnx"
    model = build_model(ModelConfig(name="resnet9", num_classes=10, width=8)).eval()
    export_model(model, "onnx", path, torch.randn(2, 3, 32, 32), True)
    q.prepare(path, tmp_path / "prepared.onnx")
    import onnx

    graph = onnx.load(str(tmp_path / "prepared.onnx")).graph
    ops = {n.name: n.op_type for n in graph.node}
    head = q.head_nodes(tmp_path / "prepared.onnx")
    # ResNet-9 ends in Linear then a constant scale: Gemm <- Mul <- logits.
    assert [ops[name] for name in head] == ["Mul", "Gemm"]
    nodes, op_types = q.resolve_keep_float(tmp_path / "prepared.onnx", ["Conv", head[0]], "int8")
    assert nodes == [head[0]] and "Conv" not in op_types and "Gemm" in op_types


def test_the_eval_loader_reads_a_seeded_fraction_of_the_training_split_as_evaluation_does(shapes_dir):
    """data.train_fraction of each class, drawn with data.subset_seed, through the eval preprocessing: the same
    images, labels and pixels from the image folders and from train.beton."""
    from tests.helpers import cfg_for, single_cpu_runtime
    from visiontrain.data import build_data
    from visiontrain.parallel.batch_plan import BatchPlan

    runtime = single_cpu_runtime()

    def read(loader: str, seed: int):
        cfg = cfg_for(shapes_dir, loader, "data.train_fraction=0.25", f"data.subset_seed={seed}")
        data = build_data(cfg, runtime, BatchPlan.of_micro_batch(16), train=False, eval_split="train")
        batches = list(data.val)
        return data.train_samples, torch.cat([b[1] for b in batches]), torch.cat([b[0] for b in batches])

    count, labels, images = read("torchvision", 0)
    assert count == 100 and np.bincount(labels.numpy()).tolist() == [10] * 10
    assert images.dtype == torch.float32 and images.shape == (100, 3, 16, 16)
    _, ffcv_labels, ffcv_images = read("ffcv", 0)
    assert torch.equal(labels, ffcv_labels) and torch.equal(images, ffcv_images)
    assert not torch.equal(images, read("torchvision", 1)[2])  # another seed, other images
    with pytest.raises(ValueError):
        build_data(cfg_for(shapes_dir, "ffcv"), runtime, BatchPlan.of_micro_batch(16), train=True, eval_split="train")
