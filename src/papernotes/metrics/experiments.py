"""The ``segmentation-metrics`` experiment: PA, MPA, mIoU and FWIoU as scikit-learn counts them, fast.

Seeded random label maps (19 classes as Cityscapes, 8 × 512 × 1024 at the default size, a tenth of the
pixels set to the ignore label): our confusion matrix against ``sklearn.metrics.confusion_matrix`` on the
same pixels (they must be identical), and our throughput against a plain ``torch.bincount`` over int64
indices and against the memory limit (one read of the same bytes), in one run. Metrics are a shared layer,
so this experiment imports no field.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from papernotes.core.experiments import (
    Experiment,
    ExperimentContext,
    ExperimentResult,
    Method,
    Table,
    judge,
    ratio,
)
from papernotes.core.timing import median_seconds
from papernotes.metrics.segmentation import SegmentationMetrics, plain_counts

IGNORE = 255
SEG_SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"classes": 5, "batch": 1, "height": 32, "width": 48, "repeats": 1},
    "quick": {"classes": 19, "batch": 8, "height": 512, "width": 1024, "repeats": 5},
    "full": {"classes": 19, "batch": 16, "height": 1024, "width": 2048, "repeats": 7},
}
METHOD = "Segmentation metrics"
GOAL_MPIX_PER_S = 200.0  # issue 20: a confusion matrix is memory-bound; hundreds of Mpx/s on 2 cores


def run_segmentation_metrics(ctx: ExperimentContext) -> ExperimentResult:
    size = SEG_SIZES[ctx.size]
    C, shape = size["classes"], (size["batch"], size["height"], size["width"])
    gen = torch.Generator().manual_seed(ctx.seed)
    target = torch.randint(0, C, shape, generator=gen, dtype=torch.uint8)
    pred = torch.randint(0, C, shape, generator=gen, dtype=torch.uint8)
    target[torch.rand(shape, generator=gen) < 0.1] = IGNORE

    def ours() -> torch.Tensor:
        metrics = SegmentationMetrics(C, ignore_index=IGNORE)
        metrics.update(pred, target)
        return metrics.confusion

    matrix = ours()
    from sklearn.metrics import confusion_matrix

    keep = (target != IGNORE).numpy().ravel()
    reference = confusion_matrix(
        target.numpy().ravel()[keep], pred.numpy().ravel()[keep], labels=list(range(C))
    )
    identical = bool(np.array_equal(matrix.numpy(), reference))
    pixels = target.numel() / 1e6
    t_ours = median_seconds(ours, size["repeats"])
    wide_t, wide_p = target.long(), pred.long()  # the plain path needs int64 indices
    t_plain = median_seconds(lambda: plain_counts(wide_t, wide_p, C, IGNORE), size["repeats"])
    t_read = median_seconds(lambda: (target.sum(), pred.sum()), size["repeats"])  # one read of the same bytes
    rates = {
        "ours": pixels / t_ours,
        "plain bincount (int64)": pixels / t_plain,
        "memory read": pixels / t_read,
    }
    figure = _plot(rates, ctx.out_dir / "segmentation_speed.png")
    metrics = SegmentationMetrics(C, ignore_index=IGNORE)
    metrics.update(pred, target)
    scores = metrics.compute()
    return ExperimentResult(
        metrics={"mpix_per_s": rates, "identical_to_sklearn": identical, "scores": scores, "settings": size},
        tables=[
            Table(
                f"confusion-matrix throughput, {C} classes, {' x '.join(map(str, shape))} uint8 maps",
                ["path", "Mpx/s", "share of the memory read"],
                [[name, rate, rate / rates["memory read"]] for name, rate in rates.items()],
            ),
            Table(
                "scores of the random maps (chance level) and agreement with scikit-learn",
                ["PA", "MPA", "mIoU", "FWIoU", "matrix = sklearn"],
                [
                    [
                        scores["PA"],
                        scores["MPA"],
                        scores["mIoU"],
                        scores["FWIoU"],
                        "yes" if identical else "NO",
                    ]
                ],
            ),
        ],
        figures=[figure.name],
        goals=[
            judge(
                "the confusion matrix equals scikit-learn's on the same pixels (1 = identical)",
                float(identical),
                ">=",
                1.0,
                paper="PA/MPA/mIoU/FWIoU as defined by the notes; mmseg's conventions",
                method=METHOD,
            ),
            judge(
                "throughput of the confusion matrix (Mpx/s)",
                rates["ours"],
                ">=",
                GOAL_MPIX_PER_S,
                paper="memory-bound: one pass of integer arithmetic and one bincount",
                unit=" Mpx/s",
                method=METHOD,
            ),
            judge(
                "throughput as a share of one read of the same bytes",
                ratio(rates["ours"], rates["memory read"]),
                ">=",
                0.5,
                method=METHOD,
            ),
        ],
    )


def _plot(rates: dict[str, float], path: Any) -> Any:
    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    ax.barh(list(rates), list(rates.values()), color=["tab:green", "tab:gray", "tab:blue"])
    ax.axvline(GOAL_MPIX_PER_S, color="k", lw=0.8, ls="--", label=f"goal {GOAL_MPIX_PER_S:.0f} Mpx/s")
    ax.set(xlabel="megapixels per second", title="confusion matrix of label maps")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


EXPERIMENTS = [
    Experiment(
        "segmentation-metrics",
        "metrics",
        "PA, MPA, mIoU, FWIoU: the confusion matrix against scikit-learn, throughput against memory speed",
        run_segmentation_metrics,
        (Method(METHOD, "3D Model", "segmentation_metrics.md", "segmentation_speed.png"),),
    )
]
