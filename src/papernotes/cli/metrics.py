"""``papernotes seg``: segmentation metrics of label maps (library part: ``metrics.segmentation_eval``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from papernotes.cli.common import Formatter, echo


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    seg = sub.add_parser("seg", parents=[common], help="Segmentation metrics", formatter_class=Formatter)
    seg_sub = seg.add_subparsers(dest="seg_command", metavar="COMMAND", required=True)
    ev = seg_sub.add_parser(
        "eval",
        parents=[common],
        help="PA, MPA, mIoU, FWIoU and Dice of predicted vs ground-truth PNG label maps",
        description="Pair predicted and ground-truth PNG label maps by file name, accumulate one confusion "
        "matrix over all pixels (ground-truth pixels at --ignore-index are dropped from both maps), and "
        "print per-class IoU / accuracy / Dice with PA, MPA, mIoU and FWIoU. With --out: metrics.json, "
        "iou.png and confusion.png.",
        formatter_class=Formatter,
    )
    ev.add_argument("--pred", type=Path, required=True, help="folder of predicted label maps (.png)")
    ev.add_argument("--gt", type=Path, required=True, help="folder of ground-truth label maps (.png)")
    ev.add_argument("--num-classes", type=int, required=True, help="number of classes C (labels 0..C-1)")
    ev.add_argument("--ignore-index", type=int, default=255, help="ground-truth label that is not scored")
    ev.add_argument("--class-names", type=Path, default=None, help="text file, one class name per line")
    ev.add_argument("--out", type=Path, default=None, help="folder for metrics.json and the figures")
    ev.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    ev.set_defaults(func=_seg_eval)


def _seg_eval(args: argparse.Namespace) -> int:
    from papernotes.metrics.segmentation_eval import eval_command, table

    echo(table(eval_command(args)))
    return 0
