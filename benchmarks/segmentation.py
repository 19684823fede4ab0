"""Benchmark: SegmentationMetrics throughput against torchmetrics and against the memory limit, in one run.

Claims under test (issue 20): accumulating the confusion matrix runs at >= 200 megapixels/s on 19 classes,
8 x 512 x 1024 maps (torchmetrics' ``MulticlassJaccardIndex`` is the reference, on the same batches), with a
matrix identical to the plain path's. A confusion matrix is one pass of integer arithmetic and one
``bincount``, so its limit is memory bandwidth: the benchmark times one read of the same bytes (a sum over
them) and reports the ratio. It does so for uint8 maps (what PNG label maps decode to) and int64 maps (what
``argmax`` and ``torch.randint`` give; the headline numbers). Label maps are random.

Then ``papernotes seg eval``'s library part on a folder of PNG label maps: the time to decode the PNGs
alone, the metric alone on the decoded maps, and the whole command, to show which one bounds it.

Prints ONE JSON object.

    python benchmarks/segmentation.py                     # 19 classes (Cityscapes), 8 x 512 x 1024
    python benchmarks/segmentation.py --quick
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from papernotes.core.timing import median_seconds
from papernotes.metrics.segmentation import CHUNK_PIXELS, SegmentationMetrics, plain_counts

GOAL_MPIX_PER_S = 200.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-classes", type=int, default=19)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--png-images", type=int, default=16, help="PNG pairs for the seg eval part; 0 skips")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (1: per core)")
    parser.add_argument("--quick", action="store_true", help="2 x 128 x 256, 3 repeats, 4 PNG pairs")
    return parser.parse_args(argv)


def read_once(*tensors: torch.Tensor) -> None:
    """One read of every byte of the tensors: an integer sum over them (as int64 where they fit), in the
    same cache-sized chunks and the same number of threads as the metric, so that only the work differs."""
    pieces = []
    for x in tensors:
        raw = x.reshape(-1).numpy().view(np.uint8)
        raw = raw.view(np.int64) if raw.size % 8 == 0 else raw
        step = CHUNK_PIXELS * 2 // raw.itemsize  # the bytes of a chunk of a uint8 pair of maps
        pieces += [raw[i : i + step] for i in range(0, raw.size, step)]
    workers = min(len(pieces), torch.get_num_threads())
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda k: [p.sum() for p in pieces[k::workers]], range(workers)))


def label_maps(args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    shape = (args.batch, args.height, args.width)
    target = torch.randint(0, args.num_classes, shape, generator=g)
    target[torch.rand(shape, generator=g) < 0.05] = 255
    pred = torch.randint(0, args.num_classes, shape, generator=g)
    return pred, target


def throughput(args: argparse.Namespace, pred: torch.Tensor, target: torch.Tensor) -> dict:
    """Ours, torchmetrics and one read of the same bytes, interleaved (drift affects all alike)."""
    from torchmetrics.classification import MulticlassJaccardIndex

    C = args.num_classes
    ours_metrics = SegmentationMetrics(C)

    def ours():
        ours_metrics.reset()
        ours_metrics.update(pred, target)
        return ours_metrics.compute()["mIoU"]

    def theirs():
        reference = MulticlassJaccardIndex(num_classes=C, average="macro", ignore_index=255)
        reference.update(pred, target)
        return reference.compute().item()

    times: dict[str, list[float]] = {"ours": [], "torchmetrics": [], "memory": [], "ours_cpu": []}
    for _ in range(args.repeats):
        cpu = time.process_time()
        times["ours"].append(median_seconds(ours, 1))
        times["ours_cpu"].append((time.process_time() - cpu) / 2)  # the warm-up call and the timed one
        times["torchmetrics"].append(median_seconds(theirs, 1))
        times["memory"].append(median_seconds(lambda: read_once(pred, target), 3))
    megapixels = pred.numel() / 1e6
    seconds = {k: statistics.median(v) for k, v in times.items()}
    # the same matrix as the plain path (int64, boolean mask, one bincount), which torchmetrics agrees with
    plain = plain_counts(target.reshape(-1), pred.reshape(-1), C, 255)
    ours_mpix = megapixels / seconds["ours"]
    return {
        "bytes_per_pixel": pred.element_size() + target.element_size(),
        "ours_mpix_per_s": ours_mpix,
        "torchmetrics_mpix_per_s": megapixels / seconds["torchmetrics"],
        "memory_limit_mpix_per_s": megapixels / seconds["memory"],
        # pixels per CPU-second: what another job on the same cores cannot take away (with --threads 1, the
        # throughput of one core)
        "ours_mpix_per_cpu_s": megapixels / seconds["ours_cpu"],
        "fraction_of_memory_limit": seconds["memory"] / seconds["ours"],
        "speedup": seconds["torchmetrics"] / seconds["ours"],
        "miou_ours": ours(),
        "miou_torchmetrics": theirs(),
        "matrix_identical_to_plain_path": bool(torch.equal(ours_metrics.confusion, plain)),
        "goals": {"ge_200_mpix_per_s": ours_mpix >= GOAL_MPIX_PER_S},
    }


def blocky_maps(count: int, height: int, width: int, C: int, seed: int = 0):
    """Label maps that look like segmentations (regions, not noise), so that PNG compresses them as it would
    real ones; predictions are the truth with a fraction of regions wrong."""
    rng = np.random.default_rng(seed)
    for _ in range(count):
        coarse = rng.integers(0, C, (height // 32 + 1, width // 32 + 1), dtype=np.uint8)
        target = np.kron(coarse, np.ones((32, 32), np.uint8))[:height, :width]
        wrong = np.kron(rng.random(coarse.shape) < 0.2, np.ones((32, 32), bool))[:height, :width]
        pred = np.where(wrong, (target + 1) % C, target).astype(np.uint8)
        target = target.copy()
        target[: height // 16] = 255  # an ignored band, as in Cityscapes' ego-vehicle
        yield pred, target


def png_eval(args: argparse.Namespace) -> dict:
    """seg eval on PNG label maps: decoding alone, the metric alone, the command; Mpx/s of each."""
    from PIL import Image

    from papernotes.metrics.segmentation_eval import eval_command, read_label_map

    with tempfile.TemporaryDirectory() as tmp:
        pred_dir, gt_dir = Path(tmp, "pred"), Path(tmp, "gt")
        pred_dir.mkdir()
        gt_dir.mkdir()
        maps = list(blocky_maps(args.png_images, args.height, args.width, args.num_classes))
        for k, (pred, target) in enumerate(maps):
            Image.fromarray(pred).save(pred_dir / f"{k:04d}.png")
            Image.fromarray(target).save(gt_dir / f"{k:04d}.png")
        files = sorted(pred_dir.glob("*.png")) + sorted(gt_dir.glob("*.png"))
        namespace = argparse.Namespace(
            pred=pred_dir, gt=gt_dir, num_classes=args.num_classes, ignore_index=255,
            class_names=None, out=None, no_progress=True,
        )  # fmt: skip

        def metric_only():
            metrics = SegmentationMetrics(args.num_classes)
            for pred, target in maps:
                metrics.update(pred, target)

        repeats = max(3, args.repeats // 2)
        decode = median_seconds(lambda: [read_label_map(f) for f in files], repeats)
        metric = median_seconds(metric_only, repeats)
        command = median_seconds(lambda: eval_command(namespace), repeats)
        png_bytes = sum(f.stat().st_size for f in files)
    megapixels = args.png_images * args.height * args.width / 1e6  # pixel pairs, as above
    return {
        "images": args.png_images,
        "png_bytes_per_pixel": png_bytes / (2 * megapixels * 1e6),
        "decode_mpix_per_s": megapixels / decode,
        "metric_mpix_per_s": megapixels / metric,
        "seg_eval_mpix_per_s": megapixels / command,
        "decode_share_of_seg_eval": decode / command,
    }


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.batch, args.height, args.width, args.repeats = 2, 128, 256, 3
        args.png_images = min(args.png_images, 4)
    pred, target = label_maps(args)
    result = {
        "settings": {
            "num_classes": args.num_classes,
            "shape": [args.batch, args.height, args.width],
            "repeats": args.repeats,
            "threads": torch.get_num_threads(),
        },
    }
    # the headline: int64 maps, as torch.randint and argmax give them (the benchmark's maps before issue 20);
    # then the same maps as uint8, the dtype PNG label maps decode to
    result.update(throughput(args, pred, target))
    result["uint8"] = throughput(args, pred.to(torch.uint8), target.to(torch.uint8))
    if args.png_images:
        result["seg_eval_png"] = png_eval(args)
    return result


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
