"""Benchmark: parameters, FLOPs and CPU latency per clip of every video recognizer, against TSN in one run.

Claims under test (issue "Video action recognition"):
- TSM adds zero FLOPs and zero parameters to TSN, and its latency overhead is <= 5 % (Lin et al. 2019);
- the 2-D temporal modules (TRN, TDN, TAM) cost far less than 3-D CNNs (R3D-18, R(2+1)D-18).

Weights are random: cost does not depend on what a model learned, so nothing is trained or cached.
FLOPs come from ``torch.utils.flop_counter`` (convolutions and matrix products, the papers' convention).
Latency is the median over ``--repeats`` rounds at batch 1 in eval mode, with all models timed in
round-robin order so that drift on a noisy machine affects them alike. Prints ONE JSON object.

    python benchmarks/video_cost.py                          # 8 segments, 112 px, ResNet-18
    python benchmarks/video_cost.py --size 224 --backbone resnet50 --repeats 10
    python benchmarks/video_cost.py --quick                  # 4 segments, 64 px, 3 rounds
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from papernotes.video.models import CONSTRUCTORS, build_recognizer
from papernotes.video.train import example_input


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(CONSTRUCTORS), help="recognizers to measure")
    parser.add_argument("--num-segments", type=int, default=8, help="K")
    parser.add_argument("--size", type=int, default=112, help="frame height and width")
    parser.add_argument("--backbone", default="resnet18", help="2-D backbone (3-D models are depth 18)")
    parser.add_argument("--repeats", type=int, default=7, help="timed round-robin rounds")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads [torch's default]")
    parser.add_argument("--quick", action="store_true", help="4 segments, 64 px, 3 rounds")
    return parser.parse_args(argv)


@torch.no_grad()
def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.quick:
        args.num_segments, args.size, args.repeats = 4, 64, 3
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    models, inputs, rows = {}, {}, {}
    for name in args.models:
        backbone = args.backbone if name not in ("r3d", "r2plus1d") else "resnet18"
        model = build_recognizer(name, 16, args.num_segments, backbone).eval()
        x = example_input(model, args.size)
        counter = FlopCounterMode(display=False)
        with counter:
            model(x)
        model(x)  # warm-up
        models[name], inputs[name] = model, x
        rows[name] = {
            "params": sum(p.numel() for p in model.parameters()),
            "flops": counter.get_total_flops(),
        }
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(args.repeats):
        for name, model in models.items():
            start = time.perf_counter()
            model(inputs[name])
            times[name].append(time.perf_counter() - start)
    base = rows.get("tsn")
    for name, row in rows.items():
        row["latency_ms"] = 1000 * statistics.median(times[name])
        if base:
            row["flops_vs_tsn"] = row["flops"] / base["flops"]
            row["latency_vs_tsn"] = row["latency_ms"] / (1000 * statistics.median(times["tsn"]))
    result: dict = {
        "settings": {
            "num_segments": args.num_segments,
            "size": args.size,
            "backbone": args.backbone,
            "repeats": args.repeats,
            "threads": torch.get_num_threads(),
        },
        "models": rows,
    }
    if "tsn" in rows and "tsm" in rows:
        overhead = rows["tsm"]["latency_vs_tsn"] - 1
        result["goals"] = {
            "tsm_flops_equal_tsn": rows["tsm"]["flops"] == rows["tsn"]["flops"],
            "tsm_params_equal_tsn": rows["tsm"]["params"] == rows["tsn"]["params"],
            "tsm_latency_overhead": overhead,
            "tsm_latency_overhead_le_5pct": overhead <= 0.05,
        }
    return result


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
