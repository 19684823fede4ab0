"""Benchmark: streaming speed of the online action detectors, as a real-time factor at 4 fps features.

Claim under test (issue "Online action detection"): OadTR streams at >= 10x real time per stream on 2 CPU
cores at the paper's dimensions (THUMOS'14 features D = 3072, window 64, width 1024, 3 encoder and 5 decoder
layers). A stream produces one feature every 0.25 s (4 fps), so real-time factor = frames/s / 4.

Measured, all in one run with random weights (speed does not depend on what a model learned):
* one stream: ``stream().step(feature)`` frame after frame (ring buffer / recurrent state);
* N concurrent streams batched: one forward over the N current windows (window models) or N states.
Prints ONE JSON object.

    python benchmarks/online_streaming.py                   # default dimensions, 1 and 16 streams
    python benchmarks/online_streaming.py --quick           # tiny dimensions, a few frames
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from papernotes.video.online.models import DETECTORS, build_detector

FPS = 4.0  # THUMOS'14 / TVSeries features: one per 6 frames at 24 fps


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--models", nargs="+", default=["oadtr", "trn", "idn", "tcn", "mlp"], choices=list(DETECTORS)
    )
    parser.add_argument("--frames", type=int, default=64, help="timed frames per stream")
    parser.add_argument("--streams", type=int, default=16, help="concurrent streams for the batched run")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads [torch's default]")
    parser.add_argument("--quick", action="store_true", help="tiny dimensions and 16 frames")
    return parser.parse_args(argv)


@torch.no_grad()
def _batched_fps(model: torch.nn.Module, name: str, streams: int, frames: int, dim: int) -> float:
    """Frames per second per stream when ``streams`` streams are scored together, one step at a time."""
    x = torch.randn(streams, dim)
    if name in ("oadtr", "idn"):
        W = model.cfg.window
        windows = torch.randn(streams, W, dim)
        valid = torch.full((streams,), W)
        score = model.score_windows if name == "oadtr" else model.read_windows
        start = time.perf_counter()
        for _ in range(frames):
            windows = torch.cat((windows[:, 1:], x[:, None]), dim=1)  # every stream's ring buffer moves
            score(windows, valid)
    elif name == "trn":
        state = model.initial_state(streams, x)
        start = time.perf_counter()
        for _ in range(frames):
            _, _, state = model.cell(model.embed(x), state)
    elif name == "tcn":
        model.stack.reset()
        start = time.perf_counter()
        for _ in range(frames):
            model.stack.step(x)
    else:
        start = time.perf_counter()
        for _ in range(frames):
            model(x[:, None])
    return frames / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    preset, frames = ("tiny", 16) if args.quick else ("default", args.frames)
    rows = {}
    for name in args.models:
        torch.manual_seed(0)
        model = build_detector(name, preset).eval()
        dim = model.cfg.feature_dim
        stream = model.stream()
        for _ in range(3):  # warm-up
            stream.step(torch.randn(dim))
        features = torch.randn(frames, dim)
        start = time.perf_counter()
        for t in range(frames):
            stream.step(features[t])
        single = frames / (time.perf_counter() - start)
        batched = _batched_fps(model, name, args.streams, frames, dim)
        rows[name] = {
            "params": sum(p.numel() for p in model.parameters()),
            "single_stream_fps": single,
            "single_stream_rtf": single / FPS,
            "batched_streams": args.streams,
            "batched_fps_per_stream": batched,
            "batched_rtf_per_stream": batched / FPS,
            "batched_total_fps": batched * args.streams,
        }
    result = {
        "settings": {"preset": preset, "frames": frames, "threads": torch.get_num_threads(), "fps": FPS}
    }
    result["models"] = rows
    if "oadtr" in rows:
        result["goals"] = {"oadtr_single_stream_rtf_ge_10": rows["oadtr"]["single_stream_rtf"] >= 10}
    return result


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
