"""Evaluation metrics: top-k counts, and the reduction over two real gloo ranks (processes of their own)."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from visiontrain.data.sampling import eval_shard
from visiontrain.evaluate.metrics import RunningStats, topk_correct
from visiontrain.parallel.network import free_port


def test_topk_correct():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.05, 0.1], [0.2, 0.3, 0.5]])
    labels = torch.tensor([1, 2, 0])
    assert topk_correct(logits, labels, 1).tolist() == [1.0, 0.0, 0.0]
    assert topk_correct(logits, labels, 2).tolist() == [1.0, 1.0, 0.0]
    assert topk_correct(logits, labels, 5).tolist() == [1.0, 1.0, 1.0]  # k capped at the class count


# 5 samples, labels 0..4, logits right for samples 0, 1, 2 only: top-1 is exactly 60%.
N = 5
LABELS = torch.arange(N)
LOGITS = torch.eye(N)[[0, 1, 2, 0, 0]] * 10


def _eval_rank(rank: int, world: int, port: int, use_mask: bool, out) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    indices, valid = eval_shard(N, world, rank)
    stats = RunningStats(torch.device("cpu"))
    idx = torch.tensor(indices)
    losses = torch.nn.functional.cross_entropy(LOGITS[idx], LABELS[idx], reduction="none")
    stats.update(losses, LOGITS[idx], LABELS[idx], torch.tensor(valid) if use_mask else None)
    out[rank] = stats.reduce(world)
    dist.destroy_process_group()


@pytest.mark.parametrize("use_mask, samples, top1", [(True, 5, 60.0), (False, 6, 100 * 4 / 6)])
def test_two_rank_reduction_counts_every_sample_exactly_once(use_mask, samples, top1):
    """With the padding mask: 5 samples, 60%. Without it, the padded duplicate is counted (6)."""
    results = mp.Manager().dict()
    mp.spawn(_eval_rank, args=(2, free_port(), use_mask, results), nprocs=2, join=True)
    assert results[0] == results[1]
    assert results[0]["samples"] == samples
    assert results[0]["top1"] == pytest.approx(top1)
