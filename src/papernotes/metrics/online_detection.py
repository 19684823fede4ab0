"""Per-frame metrics of online action detection: THUMOS'14 mAP and TVSeries calibrated mAP (mcAP).

Protocols: De Geest et al. 2016, "Online Action Detection", arXiv:1604.06506 (per-frame AP, and calibrated
AP for TVSeries); the THUMOS'14 per-frame mAP as the TRN, OadTR and LSTR evaluation code computes it:

1. concatenate the test sessions' frames (the caller passes them concatenated);
2. drop frames whose ground truth is the ambiguous class (``ignore_index``);
3. compute AP per class over all remaining frames (non-interpolated, as scikit-learn's
   ``average_precision_score``: Σ_n (R_n − R_{n−1}) · P_n over distinct score thresholds);
4. leave background (column 0) out of the mean;
5. skip classes that have no positive frame.

Calibrated precision (TVSeries, §4): with w = #negatives / #positives of the class,
cPrec = w·TP / (w·TP + FP); cAP = Σ_k cPrec(k) · 1[frame k positive] / #positives over the frames ranked by
descending score (a stable sort: ties keep their frame order). Since w scales the positives to the
negatives' mass, cAP does not change when the negatives are duplicated (tested).

Inputs: scores (N, C+1), targets one-hot (N, C+1) or class indices (N,).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from papernotes.errors import ConfigError, DataError


def frame_average_precision(scores: Any, positives: Any) -> float:
    """Non-interpolated AP of one class (sklearn's definition, ties grouped); NaN without positives."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    positives = np.asarray(positives, dtype=bool).ravel()
    total = positives.sum()
    if total == 0:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    s, p = scores[order], positives[order]
    tp = np.cumsum(p)
    fp = np.cumsum(~p)
    last_of_tie = np.r_[s[1:] != s[:-1], True]  # thresholds: one per distinct score
    tp, fp = tp[last_of_tie], fp[last_of_tie]
    precision = tp / (tp + fp)
    recall = tp / total
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def calibrated_average_precision(scores: Any, positives: Any) -> float:
    """TVSeries calibrated AP of one class (stable ranking); NaN without positives or without negatives."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    positives = np.asarray(positives, dtype=bool).ravel()
    n_pos = positives.sum()
    n_neg = len(positives) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    w = n_neg / n_pos
    p = positives[np.argsort(-scores, kind="stable")]
    tp = np.cumsum(p)
    fp = np.cumsum(~p)
    calibrated = w * tp / (w * tp + fp)
    return float(np.sum(calibrated * p) / n_pos)


def _prepare(scores: Any, targets: Any, ignore_index: int | None) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or not len(scores):
        raise DataError(f"expected scores (N, C+1) with N > 0, got shape {scores.shape}")
    bad = ~np.isfinite(scores).all(axis=1)
    if bad.any():
        raise DataError(f"scores of frame {int(np.argmax(bad))} are not finite")
    targets = np.asarray(targets)
    if targets.ndim == 1:
        if targets.min() < 0 or targets.max() >= scores.shape[1]:
            raise DataError(
                f"labels must lie in 0..{scores.shape[1] - 1}, got {targets.min()}..{targets.max()}"
            )
        labels = targets.astype(np.int64)
    elif targets.shape == scores.shape:
        labels = targets.argmax(axis=1)
    else:
        raise DataError(
            f"targets {targets.shape} do not match scores {scores.shape}: expected (N,) or (N, C+1)"
        )
    if len(labels) != len(scores):
        raise DataError(f"{len(labels)} labels for {len(scores)} score rows")
    keep = labels != ignore_index if ignore_index is not None else np.ones(len(labels), dtype=bool)
    return scores[keep], labels[keep]


def _per_class(
    metric,
    keys: tuple[str, str],
    scores: Any,
    targets: Any,
    ignore_index: int | None,
    background_index: int | None,
    class_names: Sequence[str] | None,
) -> dict[str, Any]:
    scores, labels = _prepare(scores, targets, ignore_index)
    num_columns = scores.shape[1]
    if class_names is not None and len(class_names) != num_columns:
        raise ConfigError(f"{len(class_names)} class names for {num_columns} score columns")
    per_class, skipped = {}, []
    for c in range(num_columns):
        if c in (background_index, ignore_index):
            continue  # background is not averaged; the ambiguous class is never scored
        name = class_names[c] if class_names is not None else c
        value = metric(scores[:, c], labels == c)
        if np.isnan(value):
            skipped.append(name)
        else:
            per_class[name] = value
    if not per_class:
        raise DataError("no class has a positive frame: nothing to average")
    mean_key, per_class_key = keys
    return {
        mean_key: float(np.mean(list(per_class.values()))),
        per_class_key: per_class,
        "skipped_classes": skipped,
        "num_frames": len(labels),
    }


def per_frame_map(
    scores: Any,
    targets: Any,
    ignore_index: int | None = None,
    background_index: int | None = 0,
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """THUMOS'14 per-frame mAP: {"mAP", "per_class_ap", "skipped_classes", "num_frames"}."""
    keys = ("mAP", "per_class_ap")
    return _per_class(
        frame_average_precision, keys, scores, targets, ignore_index, background_index, class_names
    )


def calibrated_map(
    scores: Any,
    targets: Any,
    ignore_index: int | None = None,
    background_index: int | None = 0,
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """TVSeries mean calibrated AP: {"mcAP", "per_class_cap", "skipped_classes", "num_frames"}."""
    keys = ("mcAP", "per_class_cap")
    return _per_class(
        calibrated_average_precision, keys, scores, targets, ignore_index, background_index, class_names
    )


def per_class_table(per_class: dict[Any, float]) -> list[list[Any]]:
    """Rows [class, AP %] for a report table, in the order the classes were scored."""
    return [[name, 100 * value] for name, value in per_class.items()]
