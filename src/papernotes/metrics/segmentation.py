"""Semantic segmentation metrics from one accumulated confusion matrix: PA, MPA, IoU, mIoU, FWIoU, Dice.

Definitions (Long, Shelhamer & Darrell 2015, "Fully Convolutional Networks for Semantic Segmentation",
arXiv:1411.4038, §5), with n_ij = pixels of true class i predicted as j, t_i = Σ_j n_ij (pixels of class i):

    PA    = Σ_i n_ii / Σ_i t_i                     pixel accuracy
    MPA   = (1/C') Σ_i n_ii / t_i                  mean per-class accuracy (recall)
    IoU_i = n_ii / (t_i + Σ_j n_ji − n_ii)
    mIoU  = (1/C') Σ_i IoU_i
    FWIoU = Σ_i t_i · IoU_i / Σ_i t_i              frequency-weighted IoU
    Dice_i = 2 n_ii / (t_i + Σ_j n_ji)             (= F1 of class i)

Conventions, as mmsegmentation does them: pixels whose ground truth is ``ignore_index`` (255) are dropped
from both maps; a class absent from both prediction and ground truth has NaN IoU/Dice/accuracy and is left
out of the means (C' counts the others); a label outside 0..C−1 (other than ignore_index) is an error.
The pitfall the notes stress: PA is high when the background dominates, whatever happens to small classes.

The matrix is accumulated with one ``bincount`` per batch and can be merged across workers (``merge``) or
processes (``all_reduce``).
"""

from __future__ import annotations

from typing import Any

import torch

from papernotes.errors import ConfigError, DataError


class SegmentationMetrics:
    """Streaming confusion matrix over label maps; ``compute()`` gives every metric."""

    def __init__(self, num_classes: int, ignore_index: int | None = 255):
        if num_classes < 1:
            raise ConfigError(f"num_classes must be >= 1, got {num_classes}")
        if ignore_index is not None and 0 <= ignore_index < num_classes:
            raise ConfigError(f"ignore_index {ignore_index} is a real class (0..{num_classes - 1})")
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)  # rows true, cols predicted

    def reset(self) -> None:
        self.confusion.zero_()

    def update(self, pred: Any, target: Any) -> None:
        """Add a batch: ``pred`` is a label map of ``target``'s shape, or scores with a class dimension at
        axis 1 (N, C, ...) or 0 (C, ...) that is arg-maxed."""
        pred, target = torch.as_tensor(pred), torch.as_tensor(target)
        if pred.shape != target.shape:
            pred = self._argmax(pred, target.shape)
        if pred.is_floating_point() or target.is_floating_point():
            raise DataError(
                "label maps must hold integers (give scores with a class dimension to arg-max them)"
            )
        pred, target = pred.reshape(-1).long(), target.reshape(-1).long()
        if self.ignore_index is not None:
            keep = target != self.ignore_index  # mmseg: ignored ground truth drops the pixel from both maps
            pred, target = pred[keep], target[keep]
        C = self.num_classes
        for name, values in (("target", target), ("prediction", pred)):
            bad = (values < 0) | (values >= C)
            if bad.any():
                raise DataError(
                    f"{name} label {values[bad][0].item()} is outside 0..{C - 1} (and not ignore_index)"
                )
        counts = torch.bincount(target * C + pred, minlength=C * C)  # one pass over the pixels
        self.confusion += counts.view(C, C).to(self.confusion.device)

    def _argmax(self, scores: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        if scores.dim() == len(shape) + 1:
            for axis in (1, 0):
                rest = scores.shape[:axis] + scores.shape[axis + 1 :]
                if rest == shape and scores.shape[axis] == self.num_classes:
                    return scores.argmax(dim=axis)
        raise DataError(
            f"prediction {tuple(scores.shape)} is neither a label map of the target's shape {tuple(shape)} "
            f"nor scores with {self.num_classes} classes at axis 1 or 0"
        )

    def merge(self, other: SegmentationMetrics) -> SegmentationMetrics:
        """Add another accumulator's counts (DataLoader workers, shards)."""
        if other.num_classes != self.num_classes or other.ignore_index != self.ignore_index:
            raise ConfigError("cannot merge metrics with different num_classes or ignore_index")
        self.confusion += other.confusion
        return self

    def all_reduce(self) -> None:
        """Sum the counts over the processes of an initialised torch.distributed group."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.confusion)

    def compute(self) -> dict[str, Any]:
        """{"PA", "MPA", "mIoU", "FWIoU", "mDice", "IoU", "Dice", "Acc" (per class, NaN when absent),
        "num_pixels"}."""
        n = self.confusion.double()
        total = n.sum()
        if total == 0:
            raise DataError("no pixels were counted (all ignored, or update() never called)")
        tp = n.diagonal()
        true = n.sum(dim=1)  # t_i
        predicted = n.sum(dim=0)
        present = (true + predicted) > 0  # absent from both maps: NaN, left out of the means
        nan = torch.tensor(float("nan"), dtype=torch.float64)
        iou = torch.where(present, tp / (true + predicted - tp).clamp(min=1), nan)
        dice = torch.where(present, 2 * tp / (true + predicted).clamp(min=1), nan)
        acc = torch.where(true > 0, tp / true.clamp(min=1), nan)
        return {
            "PA": (tp.sum() / total).item(),
            "MPA": _nanmean(acc),
            "mIoU": _nanmean(iou),
            "FWIoU": (torch.nan_to_num(iou) * true).sum().item() / total.item(),
            "mDice": _nanmean(dice),
            "IoU": iou.tolist(),
            "Dice": dice.tolist(),
            "Acc": acc.tolist(),
            "num_pixels": int(total.item()),
        }


def _nanmean(values: torch.Tensor) -> float:
    finite = values[~torch.isnan(values)]
    return finite.mean().item() if len(finite) else float("nan")


def segmentation_metrics(pred: Any, target: Any, num_classes: int, ignore_index: int | None = 255) -> dict:
    """One-shot helper: the metrics of a single batch of label maps."""
    metrics = SegmentationMetrics(num_classes, ignore_index)
    metrics.update(pred, target)
    return metrics.compute()
