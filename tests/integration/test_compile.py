"""model.compile=true: a compiled model trains like the eager one (two training runs)."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import ok, read_jsonl, run_train, tiny_args
from visiontrain.checkpoint.weights import read_weights

pytestmark = pytest.mark.slow


def test_compiled_model_trains_like_eager(shapes_dir, tmp_path):
    """Same losses step by step (compiled kernels reorder float sums: tiny, growing differences)."""
    args = ("train.epochs=1", "schedule.warmup_epochs=0", "data.num_workers=0", "optim.lr=0.05",
            "log.every_steps=1")
    ok(run_train(tiny_args(shapes_dir, tmp_path / "eager", *args)))
    ok(run_train(tiny_args(shapes_dir, tmp_path / "compiled", *args, "model.compile=true"), timeout=600))
    losses = [[e["loss"] for e in read_jsonl(tmp_path / name / "metrics.jsonl") if e["event"] == "train"]
              for name in ("eager", "compiled")]
    assert len(losses[0]) == len(losses[1]) == 6
    assert losses[1][0] == pytest.approx(losses[0][0], rel=1e-5)  # the first forward pass
    assert losses[1] == pytest.approx(losses[0], rel=1e-3)
    eager, compiled = (read_weights(tmp_path / name / "weights.safetensors") for name in ("eager", "compiled"))
    assert set(eager) == set(compiled)  # plain module names, no _orig_mod prefix
    floats = [k for k in eager if eager[k].is_floating_point()]
    a, b = (torch.cat([w[k].flatten() for k in floats]) for w in (eager, compiled))
    assert float((a - b).norm() / a.norm()) < 1e-2  # all weights together: near-zero BN biases vary more
