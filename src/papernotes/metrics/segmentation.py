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

Speed: a confusion matrix is one pass of integer arithmetic and one ``bincount``, so its limit is memory
bandwidth. ``update`` keeps label maps in their own dtype (uint8 maps stay uint8), computes the pair index
t·P + p in int16 where it fits (int32 otherwise), without boolean masks, in cache-sized chunks spread over
one thread per core (a histogram is a serial loop). The ignored row and any out-of-range label land in
their own bins, so validity is read off the histogram: no extra pass. Only when a bad label is present is
the plain (slow) path run, to name the first one as before. ``benchmarks/segmentation.py`` measures it
against one read of the same bytes.

The matrix can be merged across workers (``merge``) or processes (``all_reduce``).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
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
        pred, target = _integer_view(pred.reshape(-1)), _integer_view(target.reshape(-1))
        counts = _count_pairs(target, pred, self.num_classes, self.ignore_index)
        if counts is None:  # a label out of range (or too far out for the histogram): name it, as always
            counts = plain_counts(target, pred, self.num_classes, self.ignore_index)
        self.confusion += counts.to(self.confusion.device)

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


# ---- counting ------------------------------------------------------------------------------------------
# Shapes: N pixels in a flat label map; a chunk is a slice (n,) of it; T x P is a chunk's histogram box
# (every target value it holds x every prediction value); C x C the confusion matrix.
#
# On the CPU a chunk is counted with NumPy, which is single-threaded: the parallelism is ours, one thread
# per core over the chunks. Torch's own ops would open an OpenMP parallel region per op, and where the
# cores are busy (DataLoader workers, other jobs) each region waits for a descheduled thread: measured on
# a loaded 2-core machine, 100 ms for one 512 x 1024 update instead of 2 ms.

CHUNK_PIXELS = 1 << 17  # 128 K pixels: the int16 index and the histogram stay in the L2 cache
MAX_BINS = 1 << 22  # a wider box (labels far out of range) goes to the plain path, which names them
_INT16, _INT32 = (-(2**15), 2**15 - 1), (-(2**31), 2**31 - 1)


def _integer_view(labels: torch.Tensor) -> torch.Tensor:
    """Labels in a dtype that the counting supports, never wider than needed."""
    if labels.dtype == torch.bool:
        return labels.view(torch.uint8)
    if labels.dtype == torch.uint16:  # few torch ops exist for the unsigned wide types
        return labels.to(torch.int32)
    if labels.dtype in (torch.uint32, torch.uint64):
        return labels.to(torch.int64)  # uint64 above 2^63 wraps negative: still refused as out of range
    return labels


def _box(tmin: int, tmax: int, pmin: int, pmax: int) -> tuple[int, int, int, bool] | None:
    """(T, P, offset, fits int16) of the box of label pairs, the pair (t, p) at bin t·P + p − offset; None
    when the box is too wide to histogram."""
    T, P = tmax - tmin + 1, pmax - pmin + 1
    offset = tmin * P + pmin
    extremes = (tmin, tmax, pmin, pmax, offset, tmax * P + pmax, T * P - 1)
    if T * P > MAX_BINS or not all(_INT32[0] <= v <= _INT32[1] for v in extremes):
        return None
    return T, P, offset, all(_INT16[0] <= v <= _INT16[1] for v in extremes)


def _fold(
    box: torch.Tensor, tmin: int, pmin: int, C: int, ignore_index: int | None
) -> tuple[torch.Tensor, int]:
    """A (T, P) box histogram -> (C, C) counts and how many of its pixels hold a label that is neither a
    class nor ignored."""
    T, P = box.shape
    counts = torch.zeros(C, C, dtype=torch.int64)
    r0, r1, c0, c1 = max(tmin, 0), min(tmin + T, C), max(pmin, 0), min(pmin + P, C)
    valid = 0
    if r0 < r1 and c0 < c1:
        block = box[r0 - tmin : r1 - tmin, c0 - pmin : c1 - pmin]
        counts[r0:r1, c0:c1] = block
        valid = int(block.sum())
    ignored = 0
    if ignore_index is not None and tmin <= ignore_index < tmin + T:
        ignored = int(box[ignore_index - tmin].sum())  # mmseg: an ignored truth drops the pixel, whatever p
    return counts, int(box.sum()) - valid - ignored


def _chunk_counts_numpy(
    target: np.ndarray, pred: np.ndarray, C: int, ignore_index: int | None
) -> tuple[torch.Tensor, int] | None:
    """(C, C) counts of one chunk and its number of invalid labels; None when the box is too wide."""
    tmin, tmax, pmin, pmax = int(target.min()), int(target.max()), int(pred.min()), int(pred.max())
    box = _box(tmin, tmax, pmin, pmax)
    if box is None:
        return None
    T, P, offset, narrow = box
    index = target.astype(np.int16 if narrow else np.int32)  # (n,) a copy, 2 bytes a pixel where it fits
    index *= P
    np.add(index, pred, out=index, casting="unsafe")  # t·P + p: the box check above guarantees no overflow
    if offset:
        index -= offset
    histogram = np.bincount(index, minlength=T * P)
    return _fold(torch.from_numpy(histogram).view(T, P), tmin, pmin, C, ignore_index)


def _chunk_counts_torch(
    target: torch.Tensor, pred: torch.Tensor, C: int, ignore_index: int | None
) -> tuple[torch.Tensor, int] | None:
    """The same on a device (CUDA, MPS), where the tensor stays."""
    (tmin, tmax), (pmin, pmax) = ([int(v) for v in torch.aminmax(x)] for x in (target, pred))
    box = _box(tmin, tmax, pmin, pmax)
    if box is None:
        return None
    T, P, offset, narrow = box
    index = target.to(torch.int16 if narrow else torch.int32, copy=True)  # never the input itself
    torch.add(pred.to(index.dtype), index, alpha=P, out=index)  # in place: t·P + p
    if offset:
        index.sub_(offset)
    histogram = torch.bincount(index, minlength=T * P).cpu()
    return _fold(histogram.view(T, P), tmin, pmin, C, ignore_index)


def _count_pairs(
    target: torch.Tensor, pred: torch.Tensor, C: int, ignore_index: int | None
) -> torch.Tensor | None:
    """(C, C) counts of flat label maps, or None when some label is out of range (the caller names it)."""
    if target.numel() == 0:
        return torch.zeros(C, C, dtype=torch.int64)
    if target.device.type != "cpu":  # one chunk: the device's bincount is parallel already
        result = _chunk_counts_torch(target, pred, C, ignore_index)
        return result[0] if result is not None and result[1] == 0 else None
    target_np, pred_np = target.numpy(), pred.numpy()  # views of the same memory
    starts = range(0, target.numel(), CHUNK_PIXELS)
    workers = min(len(starts), torch.get_num_threads(), os.cpu_count() or 1)

    def count(share: int) -> tuple[torch.Tensor, int] | None:
        total, stray = torch.zeros(C, C, dtype=torch.int64), 0
        for start in starts[share::workers]:
            chunk = slice(start, start + CHUNK_PIXELS)
            result = _chunk_counts_numpy(target_np[chunk], pred_np[chunk], C, ignore_index)
            if result is None:
                return None
            total += result[0]
            stray += result[1]
        return total, stray

    if workers > 1:  # NumPy releases the GIL in these loops: one thread per core, each over its own chunks
        with ThreadPoolExecutor(workers) as pool:
            results = list(pool.map(count, range(workers)))
    else:
        results = [count(0)]
    if any(r is None or r[1] for r in results):
        return None
    return sum(r[0] for r in results)


def plain_counts(target: torch.Tensor, pred: torch.Tensor, C: int, ignore_index: int | None) -> torch.Tensor:
    """The plain path (int64, a boolean mask): raises the error that names the first out-of-range label."""
    target, pred = target.long(), pred.long()
    if ignore_index is not None:
        keep = target != ignore_index  # mmseg: ignored ground truth drops the pixel from both maps
        pred, target = pred[keep], target[keep]
    for name, values in (("target", target), ("prediction", pred)):
        bad = (values < 0) | (values >= C)
        if bad.any():
            raise DataError(
                f"{name} label {values[bad][0].item()} is outside 0..{C - 1} (and not ignore_index)"
            )
    return torch.bincount(target * C + pred, minlength=C * C).view(C, C)
