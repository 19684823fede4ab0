"""``papernotes seg eval``: segmentation metrics of a folder of predicted PNG label maps against ground truth.

Maps are paired by file name. PNGs are read with Pillow, which keeps the class indices of palette ("P")
images (OpenCV would turn them into colours). Every problem names the file: a prediction without ground
truth or the reverse, an unreadable image, a colour image, sizes that differ.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from papernotes.core.files import atomic_write_file
from papernotes.errors import DataError
from papernotes.metrics.segmentation import SegmentationMetrics


def read_label_map(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            array = np.array(image)
    except (OSError, UnidentifiedImageError) as exc:
        raise DataError(f"cannot read label map {path}: {exc}") from exc
    if array.ndim != 2:
        raise DataError(
            f"{path} is a colour image {array.shape}; expected a single-channel (or palette) label map"
        )
    return array


def pair_files(pred_dir: Path, gt_dir: Path) -> list[tuple[Path, Path]]:
    for folder in (pred_dir, gt_dir):
        if not folder.is_dir():
            raise DataError(f"{folder} is not a folder")
    preds = {p.name: p for p in sorted(pred_dir.glob("*.png"))}
    gts = {p.name: p for p in sorted(gt_dir.glob("*.png"))}
    if not gts:
        raise DataError(f"{gt_dir} holds no .png label maps")
    missing, extra = sorted(set(gts) - set(preds)), sorted(set(preds) - set(gts))
    if missing or extra:
        raise DataError(
            f"prediction and ground-truth files do not pair up: no prediction for {missing[:5]}, "
            f"no ground truth for {extra[:5]} ({len(missing)} and {len(extra)} in all)"
        )
    return [(preds[name], gts[name]) for name in gts]


def eval_command(args: argparse.Namespace) -> dict[str, Any]:
    names = _class_names(args.class_names, args.num_classes)
    metrics = SegmentationMetrics(args.num_classes, args.ignore_index)
    pairs = pair_files(args.pred, args.gt)
    for pred_path, gt_path in tqdm(pairs, desc="seg eval", unit="map", disable=args.no_progress):
        pred, gt = read_label_map(pred_path), read_label_map(gt_path)
        if pred.shape != gt.shape:
            raise DataError(
                f"{pred_path.name}: prediction {pred.shape} and ground truth {gt.shape} differ in size"
            )
        try:
            metrics.update(pred, gt)  # in the PNG's own dtype (uint8 for 'L' and 'P'): no widening copy
        except DataError as exc:
            raise DataError(f"{gt_path.name}: {exc}") from exc
    result = metrics.compute()
    summary = {k: result[k] for k in ("PA", "MPA", "mIoU", "FWIoU", "mDice", "num_pixels")}
    summary["images"] = len(pairs)
    summary["per_class"] = {
        name: {"IoU": result["IoU"][i], "Acc": result["Acc"][i], "Dice": result["Dice"][i]}
        for i, name in enumerate(names)
    }
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        with atomic_write_file(args.out / "metrics.json") as tmp:
            tmp.write_text(json.dumps({**summary, "confusion": metrics.confusion.tolist()}, indent=2) + "\n")
        _plot_iou(result["IoU"], names, args.out / "iou.png")
        from papernotes.metrics.classification import plot_confusion

        plot_confusion(metrics.confusion, names, args.out / "confusion.png", title="segmentation (pixels)")
        summary["out"] = str(args.out)
    return summary


def table(summary: dict[str, Any]) -> str:
    """The per-class table and the overall numbers, as text."""
    lines = [f"{'class':20s} {'IoU %':>7s} {'Acc %':>7s} {'Dice %':>7s}"]
    for name, m in summary["per_class"].items():
        cells = ["    n/a" if math.isnan(m[k]) else f"{100 * m[k]:7.2f}" for k in ("IoU", "Acc", "Dice")]
        lines.append(f"{name[:20]:20s} {' '.join(cells)}")
    lines.append(
        f"PA {100 * summary['PA']:.2f} %  MPA {100 * summary['MPA']:.2f} %  "
        f"mIoU {100 * summary['mIoU']:.2f} %  "
        f"FWIoU {100 * summary['FWIoU']:.2f} %  ({summary['images']} images, {summary['num_pixels']} pixels)"
    )
    return "\n".join(lines)


def _class_names(path: Path | None, num_classes: int) -> list[str]:
    if path is None:
        return [str(i) for i in range(num_classes)]
    if not path.is_file():
        raise DataError(f"--class-names {path}: no such file")
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if len(names) != num_classes:
        raise DataError(f"--class-names {path}: {len(names)} names for --num-classes {num_classes}")
    return names


def _plot_iou(iou: list[float], names: list[str], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(5, 0.4 * len(names) + 2), 3.5))
    ax = fig.subplots()
    ax.bar(range(len(names)), [0 if math.isnan(v) else 100 * v for v in iou], color="tab:blue")
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("IoU %")
    ax.set_ylim(0, 100)
    ax.set_title("per-class IoU (classes absent from both maps shown as 0)")
    fig.tight_layout()
    with atomic_write_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
