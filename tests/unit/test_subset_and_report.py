"""data.classes / data.train_fraction selection, and the evaluation report's numbers and files."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from visiontrain.config import DataConfig
from visiontrain.data.sampling import ResumableDistributedSampler, eval_shard
from visiontrain.data.subset import Relabel, select
from visiontrain.evaluate.metrics import Predictions
from visiontrain.evaluate.report import FILES, summarize, write_report
from visiontrain.infra.errors import UsageError

NAMES = [f"c{i}" for i in range(4)]
TRAIN_LABELS = np.repeat(np.arange(4), 50)  # 50 per class
VAL_LABELS = np.repeat(np.arange(4), 10)


def test_classes_and_fraction_select_a_stratified_relabelled_subset():
    d = DataConfig(classes=[3, 1], train_fraction=0.1, subset_seed=5)
    chosen = select(d, NAMES, TRAIN_LABELS, VAL_LABELS)
    assert chosen.class_names == ["c3", "c1"]
    picked = TRAIN_LABELS[chosen.train_indices]
    assert sorted(picked.tolist()) == [1] * 5 + [3] * 5  # 10% of each kept class
    assert set(VAL_LABELS[chosen.val_indices].tolist()) == {1, 3} and len(chosen.val_indices) == 20
    relabel = Relabel(chosen.label_map, torch.device("cpu"))
    assert relabel(torch.tensor([3, 1, 3])).tolist() == [0, 1, 0]
    # Independent of everything but subset_seed; another seed picks other samples.
    assert select(d, NAMES, TRAIN_LABELS, VAL_LABELS).train_indices == chosen.train_indices
    other = select(DataConfig(classes=[3, 1], train_fraction=0.1, subset_seed=6), NAMES, TRAIN_LABELS, VAL_LABELS)
    assert other.train_indices != chosen.train_indices


def test_whole_dataset_is_the_identity():
    chosen = select(DataConfig(), NAMES, TRAIN_LABELS, VAL_LABELS)
    assert chosen.train_indices == list(range(200)) and chosen.label_map is None
    assert Relabel(None, torch.device("cpu"))(torch.tensor([2])).tolist() == [2]


def test_unknown_class_index_is_refused():
    with pytest.raises(UsageError, match="class 7 does not exist; the dataset has classes 0..3"):
        select(DataConfig(classes=[0, 7]), NAMES, TRAIN_LABELS, VAL_LABELS)


def test_samplers_draw_only_from_the_subset_and_cover_it_once_per_epoch():
    pool = list(range(100, 200, 3))  # 34 dataset indices
    ranks = [ResumableDistributedSampler(pool, 2, r, seed=1) for r in range(2)]
    for sampler in ranks:
        sampler.set_epoch(0)
    seen = [i for sampler in ranks for i, _, _ in sampler]
    assert sorted(seen) == pool
    shards = [eval_shard(pool[:33], 2, r) for r in range(2)]
    valid = [i for indices, flags in shards for i, ok in zip(indices, flags) if ok]
    assert sorted(valid) == pool[:33]


def predictions() -> Predictions:
    # 3 classes; true labels 0,0,0,1,1,2; predicted 0,0,1,1,1,0
    logits = torch.full((6, 3), -5.0)
    for row, pred in enumerate([0, 0, 1, 1, 1, 0]):
        logits[row, pred] = 5.0
    return Predictions(torch.tensor([5, 1, 2, 3, 4, 0]), torch.tensor([0, 0, 0, 1, 1, 2]), logits)


def test_report_numbers_match_a_hand_computed_case():
    result = summarize(predictions(), ["a", "b", "c"])
    assert result["confusion_matrix"] == [[2, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert result["top1"] == pytest.approx(400 / 6)
    per = {c["class"]: c for c in result["per_class"]}
    assert per["a"]["precision"] == pytest.approx(2 / 3) and per["a"]["recall"] == pytest.approx(2 / 3)
    assert per["b"]["precision"] == pytest.approx(2 / 3) and per["b"]["recall"] == pytest.approx(1.0)
    assert per["b"]["f1"] == pytest.approx(0.8)
    assert per["c"]["precision"] == 0 and per["c"]["recall"] == 0 and per["c"]["support"] == 1
    assert result["macro_avg"]["recall"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert result["weighted_avg"]["recall"] == pytest.approx(4 / 6)


def test_report_files(tmp_path):
    result = write_report(tmp_path / "eval", predictions(), ["a", "b", "c"], {"weights": "w", "tta": "none"})
    out = tmp_path / "eval"
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)
    assert json.loads((out / "eval.json").read_text())["top1"] == pytest.approx(result["top1"])
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    assert [r["index"] for r in rows] == ["5", "1", "2", "3", "4", "0"]
    assert rows[2]["label_name"] == "a" and rows[2]["predicted_name"] == "b"
    assert float(rows[0]["confidence"]) == pytest.approx(torch.softmax(torch.tensor([5.0, -5, -5]), 0)[0].item(),
                                                         abs=1e-6)
    report = (out / "report.md").read_text()
    assert "| a | b | 1 |" in report  # most frequent confusions
    for png in ("confusion.png", "per_class.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
