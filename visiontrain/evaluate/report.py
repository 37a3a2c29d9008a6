"""An evaluation report a person can read: from per-sample predictions to files.

`write_report(out_dir, predictions, class_names, about)` writes:
- eval.json: top-1/top-5/loss, per-class precision/recall/F1/support, macro and
  weighted averages, the confusion matrix (rows: true class, columns: predicted);
- report.md: the same as tables, plus the most frequent confusions;
- confusion.png (row-normalized heatmap), per_class.png (per-class accuracy);
- predictions.csv: index, label, predicted, confidence (softmax of the prediction), names;
- curves.png: the training curves, when the metrics of a run are given (`plot_curves`
  also draws a run's own curves.png).
Every file is written atomically (visiontrain.infra.fileio), so each is whole or absent.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from visiontrain.evaluate.metrics import Predictions, topk_correct
from visiontrain.infra import fileio

FILES = ("eval.json", "report.md", "confusion.png", "per_class.png", "predictions.csv")


def confusion_matrix(labels: torch.Tensor, predicted: torch.Tensor, num_classes: int) -> torch.Tensor:
    flat = labels * num_classes + predicted
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def summarize(predictions: Predictions, class_names: list[str]) -> dict[str, Any]:
    """Every number of the report (plain Python types, ready for JSON)."""
    logits, labels = predictions.logits, predictions.labels
    count = len(labels)
    num_classes = len(class_names)
    predicted = logits.argmax(1)
    matrix = confusion_matrix(labels, predicted, num_classes).double()
    true_pos = matrix.diag()
    support, predicted_count = matrix.sum(1), matrix.sum(0)
    precision = torch.where(predicted_count > 0, true_pos / predicted_count.clamp(min=1), 0.0)
    recall = torch.where(support > 0, true_pos / support.clamp(min=1), 0.0)
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp(min=1e-12), 0.0)
    per_class = [
        {"class": name, "index": i, "precision": precision[i].item(), "recall": recall[i].item(),
         "f1": f1[i].item(), "support": int(support[i])}
        for i, name in enumerate(class_names)
    ]
    present = support > 0
    weights = support / max(count, 1)
    return {
        "samples": count,
        "top1": 100 * topk_correct(logits, labels, 1).mean().item() if count else float("nan"),
        "top5": 100 * topk_correct(logits, labels, 5).mean().item() if count else float("nan"),
        "loss": F.cross_entropy(logits, labels).item() if count else float("nan"),
        "macro_avg": {"precision": precision[present].mean().item(), "recall": recall[present].mean().item(),
                      "f1": f1[present].mean().item()},
        "weighted_avg": {"precision": (precision * weights).sum().item(), "recall": (recall * weights).sum().item(),
                         "f1": (f1 * weights).sum().item()},
        "per_class": per_class,
        "class_names": list(class_names),
        "confusion_matrix": matrix.long().tolist(),
    }


def top_confusions(matrix: list[list[int]], class_names: list[str], k: int = 5) -> list[tuple[str, str, int]]:
    pairs = [(class_names[t], class_names[p], n) for t, row in enumerate(matrix) for p, n in enumerate(row)
             if t != p and n > 0]
    return sorted(pairs, key=lambda pair: -pair[2])[:k]


def write_report(out_dir: Path, predictions: Predictions, class_names: list[str], about: dict[str, Any],
                 metrics_jsonl: Path | None = None) -> dict[str, Any]:
    """Write the report files into `out_dir`; returns eval.json's content."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = {**about, **summarize(predictions, class_names)}
    fileio.write_json(out_dir / "eval.json", result)
    with fileio.atomic_path(out_dir / "predictions.csv") as tmp:
        _write_predictions(tmp, predictions, class_names)
    fileio.write_text(out_dir / "report.md", _markdown(result))
    _plot_confusion(out_dir / "confusion.png", result)
    _plot_per_class(out_dir / "per_class.png", result)
    if metrics_jsonl is not None and metrics_jsonl.is_file():
        plot_curves(metrics_jsonl, out_dir / "curves.png")
    return result


def _write_predictions(path: Path, predictions: Predictions, class_names: list[str]) -> None:
    probabilities = predictions.logits.softmax(1)
    confidence, predicted = probabilities.max(1)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["index", "label", "predicted", "confidence", "label_name", "predicted_name"])
        for index, label, pred, conf in zip(predictions.indices.tolist(), predictions.labels.tolist(),
                                            predicted.tolist(), confidence.tolist()):
            writer.writerow([index, label, pred, f"{conf:.6f}", class_names[label], class_names[pred]])


def _markdown(result: dict[str, Any]) -> str:
    lines = [f"# Evaluation: {result.get('weights', '')}", ""]
    for key in ("data", "split", "tta"):
        if key in result:
            lines.append(f"- {key}: `{result[key]}`")
    lines += [
        f"- samples: {result['samples']}", "",
        "| top-1 | top-5 | loss | macro F1 | weighted F1 |", "|---|---|---|---|---|",
        f"| {result['top1']:.2f}% | {result['top5']:.2f}% | {result['loss']:.4f} | "
        f"{result['macro_avg']['f1']:.4f} | {result['weighted_avg']['f1']:.4f} |", "",
        "## Per class", "", "| class | precision | recall | F1 | support |", "|---|---|---|---|---|",
    ]
    lines += [f"| {c['class']} | {c['precision']:.4f} | {c['recall']:.4f} | {c['f1']:.4f} | {c['support']} |"
              for c in result["per_class"]]
    confusions = top_confusions(result["confusion_matrix"], result["class_names"])
    if confusions:
        lines += ["", "## Most frequent confusions", "", "| true | predicted | count |", "|---|---|---|"]
        lines += [f"| {t} | {p} | {n} |" for t, p, n in confusions]
    lines += ["", "![confusion matrix](confusion.png)", "", "![per-class accuracy](per_class.png)", ""]
    return "\n".join(lines)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display, and no GUI toolkit to import
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    try:
        with fileio.atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=100)
    finally:
        _pyplot().close(fig)


def _plot_confusion(path: Path, result: dict[str, Any]) -> None:
    plt = _pyplot()
    matrix = torch.tensor(result["confusion_matrix"], dtype=torch.float64)
    rows = (matrix / matrix.sum(1, keepdim=True).clamp(min=1)).numpy()
    names, n = result["class_names"], len(result["class_names"])
    size = min(4 + 0.4 * n, 24)
    fig, ax = plt.subplots(figsize=(size, size))
    image = ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, label="fraction of the true class")
    if n <= 50:
        ax.set_xticks(range(n), names, rotation=90)
        ax.set_yticks(range(n), names)
    if n <= 20:
        for t in range(n):
            for p in range(n):
                ax.text(p, t, int(matrix[t, p]), ha="center", va="center", fontsize=8,
                        color="white" if rows[t, p] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"confusion matrix (top-1 {result['top1']:.2f}%)")
    fig.tight_layout()
    _save(fig, path)


def _plot_per_class(path: Path, result: dict[str, Any]) -> None:
    plt = _pyplot()
    per_class = sorted(result["per_class"], key=lambda c: c["recall"])
    fig, ax = plt.subplots(figsize=(8, min(2 + 0.25 * len(per_class), 40)))
    ax.barh([c["class"] for c in per_class], [100 * c["recall"] for c in per_class], color="tab:blue")
    ax.axvline(result["top1"], color="tab:red", linestyle="--", label=f"overall {result['top1']:.2f}%")
    ax.set_xlim(0, 100)
    ax.set_xlabel("accuracy (recall) %")
    ax.legend(loc="lower right")
    fig.tight_layout()
    _save(fig, path)


def plot_curves(metrics_path: Path, out_path: Path) -> None:
    """Training loss by step and val top-1 by epoch, from metrics.jsonl."""
    plt = _pyplot()
    records = fileio.read_jsonl(metrics_path)
    train = [r for r in records if r["event"] == "train"]
    val = [r for r in records if r["event"] == "val"]
    val_ema = [r for r in records if r["event"] == "val_ema"]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    ax_loss.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss")
    ax_loss.plot([r["step"] for r in val], [r["loss"] for r in val], "o-", label="val loss")
    ax_acc.plot([r["step"] for r in train], [r["top1"] for r in train], alpha=0.6, label="train top-1")
    ax_acc.plot([r["step"] for r in val], [r["top1"] for r in val], "o-", label="val top-1")
    if val_ema:
        ax_acc.plot([r["step"] for r in val_ema], [r["top1"] for r in val_ema], "s--", label="val top-1 (EMA)")
    ax_loss.set_ylabel("loss")
    ax_acc.set_ylabel("accuracy (%)")
    for ax in (ax_loss, ax_acc):
        ax.set_xlabel("optimizer step")
        ax.legend()
    fig.tight_layout()
    _save(fig, out_path)
