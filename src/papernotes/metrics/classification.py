"""Classification metrics: top-k accuracy, the confusion matrix, mean class accuracy, and a confusion figure.

Not a paper method. The conventions are scikit-learn's, which the tests hold these to:
``top_k_accuracy_score``, ``confusion_matrix`` (rows are true classes, columns predicted classes) and
``balanced_accuracy_score`` (the mean of per-class recalls, which action-recognition papers report as
"mean class accuracy").

Inputs are tensors or arrays: logits / scores (N, C), integer labels (N,).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from papernotes.core.files import atomic_write_file
from papernotes.errors import ConfigError, DataError


def _scores_and_labels(scores: Any, labels: Any) -> tuple[torch.Tensor, torch.Tensor]:
    scores, labels = torch.as_tensor(scores), torch.as_tensor(labels).long()
    if scores.dim() != 2 or labels.shape != scores.shape[:1]:
        raise DataError(
            f"expected scores (N, C) and labels (N,), got {tuple(scores.shape)} and {tuple(labels.shape)}"
        )
    if not len(labels):
        raise DataError("no samples to score")
    _check_range(labels, scores.shape[1], "label")
    return scores, labels


def _check_range(values: torch.Tensor, num_classes: int, what: str) -> None:
    bad = values[(values < 0) | (values >= num_classes)]
    if len(bad):
        raise DataError(f"{what} {bad[0].item()} is outside 0..{num_classes - 1}")


def topk_accuracy(scores: Any, labels: Any, k: int = 1) -> float:
    """Fraction of samples whose label is among the ``k`` highest scores."""
    scores, labels = _scores_and_labels(scores, labels)
    if not 1 <= k <= scores.shape[1]:
        raise ConfigError(f"top-k accuracy needs 1 <= k <= number of classes, got k={k}, C={scores.shape[1]}")
    top = scores.topk(k, dim=1).indices  # (N, k)
    return (top == labels[:, None]).any(dim=1).float().mean().item()


def confusion_matrix(preds: Any, labels: Any, num_classes: int) -> torch.Tensor:
    """(C, C) counts: entry [i, j] = samples of true class i predicted as j."""
    preds, labels = torch.as_tensor(preds).long().flatten(), torch.as_tensor(labels).long().flatten()
    if preds.shape != labels.shape:
        raise DataError(f"predictions {tuple(preds.shape)} and labels {tuple(labels.shape)} differ in length")
    _check_range(labels, num_classes, "label")
    _check_range(preds, num_classes, "prediction")
    flat = labels * num_classes + preds  # one bincount instead of a Python loop
    return torch.bincount(flat, minlength=num_classes * num_classes).view(num_classes, num_classes)


def mean_class_accuracy(confusion: Any) -> float:
    """Mean over classes of diag / row sum (per-class recall). Classes without samples are left out."""
    confusion = torch.as_tensor(confusion).double()
    support = confusion.sum(dim=1)
    present = support > 0
    if not present.any():
        raise DataError("the confusion matrix holds no samples")
    return (confusion.diagonal()[present] / support[present]).mean().item()


def classification_summary(
    scores: Any, labels: Any, num_classes: int, topk: Sequence[int] = (1, 5)
) -> dict[str, Any]:
    """{"top1", "top5" (k <= C only), "mean_class_accuracy", "confusion" (list of lists), "num_samples"}."""
    scores, labels = _scores_and_labels(scores, labels)
    if scores.shape[1] != num_classes:
        raise DataError(f"scores have {scores.shape[1]} classes, expected {num_classes}")
    confusion = confusion_matrix(scores.argmax(dim=1), labels, num_classes)
    summary: dict[str, Any] = {f"top{k}": topk_accuracy(scores, labels, k) for k in topk if k <= num_classes}
    summary["mean_class_accuracy"] = mean_class_accuracy(confusion)
    summary["confusion"] = confusion.tolist()
    summary["num_samples"] = len(labels)
    return summary


def plot_confusion(
    confusion: Any,
    class_names: Sequence[str],
    path: str | Path,
    title: str | None = None,
    normalize: bool = True,
) -> Path:
    """Write a confusion-matrix heat map (rows normalised to recall by default) as an image, atomically."""
    from matplotlib.figure import Figure  # lazy: matplotlib is slow to import and only figures need it

    matrix = np.asarray(torch.as_tensor(confusion).double())
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or len(class_names) != matrix.shape[0]:
        raise DataError(f"confusion {matrix.shape} does not match {len(class_names)} class names")
    if normalize:
        matrix = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    n = len(class_names)
    side = max(4.0, 0.35 * n + 2)
    fig = Figure(figsize=(side + 1, side))
    ax = fig.subplots()
    image = ax.imshow(matrix, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    fig.colorbar(image, ax=ax, fraction=0.046, label="fraction of the true class" if normalize else "count")
    ax.set_xticks(range(n), class_names, rotation=90, fontsize=7)
    ax.set_yticks(range(n), class_names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    path = Path(path)
    with atomic_write_file(path) as tmp:
        fig.savefig(tmp, dpi=110)
    return path
