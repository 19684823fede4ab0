"""Benchmark: SegmentationMetrics throughput against torchmetrics, in the same run.

Claim under test (issue "Segmentation metrics"): accumulating the confusion matrix with one ``bincount``
per batch is >= 1.5x faster than torchmetrics' ``MulticlassJaccardIndex`` on the same batches (both on
the CPU, both computing the full confusion matrix). Label maps are random: speed does not depend on
their content. Prints ONE JSON object with megapixels/s of each and the ratio.

    python benchmarks/segmentation.py                     # 19 classes (Cityscapes), 8 x 512 x 1024
    python benchmarks/segmentation.py --quick
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from papernotes.metrics.segmentation import SegmentationMetrics


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-classes", type=int, default=19)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="2 x 128 x 256, 2 repeats")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    from torchmetrics.classification import MulticlassJaccardIndex

    args = parse_args(argv)
    if args.quick:
        args.batch, args.height, args.width, args.repeats = 2, 128, 256, 2
    g = torch.Generator().manual_seed(0)
    shape = (args.batch, args.height, args.width)
    target = torch.randint(0, args.num_classes, shape, generator=g)
    target[torch.rand(shape, generator=g) < 0.05] = 255
    pred = torch.randint(0, args.num_classes, shape, generator=g)
    ours, theirs = [], []
    for _ in range(args.repeats):  # interleaved, so that drift affects both alike
        metrics = SegmentationMetrics(args.num_classes)
        start = time.perf_counter()
        metrics.update(pred, target)
        ours_miou = metrics.compute()["mIoU"]
        ours.append(time.perf_counter() - start)
        reference = MulticlassJaccardIndex(num_classes=args.num_classes, average="macro", ignore_index=255)
        start = time.perf_counter()
        reference.update(pred, target)
        their_miou = reference.compute().item()
        theirs.append(time.perf_counter() - start)
    megapixels = pred.numel() / 1e6
    ours_s, theirs_s = statistics.median(ours), statistics.median(theirs)
    return {
        "settings": {
            "num_classes": args.num_classes,
            "shape": list(shape),
            "repeats": args.repeats,
            "threads": torch.get_num_threads(),
        },
        "ours_mpix_per_s": megapixels / ours_s,
        "torchmetrics_mpix_per_s": megapixels / theirs_s,
        "speedup": theirs_s / ours_s,
        "miou_ours": ours_miou,
        "miou_torchmetrics": their_miou,
        "goals": {"speedup_ge_1_5": theirs_s / ours_s >= 1.5},
    }


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
