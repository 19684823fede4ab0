"""Benchmark: streaming speed of the online action detectors, as a real-time factor at 4 fps features.

Claim under test (the online-detection issue): OadTR streams at >= 10x real time per stream on 2 CPU cores at
the paper's dimensions (THUMOS'14 features D = 3072, window 64, width 1024, 3 encoder and 5 decoder layers).
A stream produces one feature every 0.25 s (4 fps), so real-time factor = frames/s / 4.

Measured, all in one run with random weights (speed does not depend on what a model learned):
* one stream: ``stream().step(feature)`` frame after frame, timed once the window caches are full; for OadTR
  with PyTorch's default matrix forms, then after ``tune_for_streaming`` (each projection's fastest form for
  the rows a step feeds it, ``nn.linear_tuning``), in the same run;
* N concurrent streams batched: one step over the N current frames (window models and TRN keep N states);
* OadTR with int8 weights (``nn.int8_linear``: weight-only, one scale per output channel): its real-time
  factor against fp32's in the same run, and how far its scores move from fp32's;
* OadTR without its caches: the same exact score recomputed from the frames it depends on (``history``), as a
  stream without caches would have to;
* the roofline of one OadTR step: the weights it reads (bytes) and its FLOPs, against this machine's measured
  memory bandwidth and matrix-product throughput, so a miss can be read as "how far the limit is".
Prints ONE JSON object.

    python benchmarks/online_streaming.py                   # default dimensions, 1 and 16 streams
    python benchmarks/online_streaming.py --quick           # tiny dimensions, a few frames
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from papernotes.core.timing import median_seconds
from papernotes.nn.int8_linear import quantize_int8
from papernotes.video.online.models import DETECTORS, build_detector
from papernotes.video.online.stream import stream_rate, stream_scores

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


def _warmup(model: torch.nn.Module) -> int:
    """Frames to step untimed so that a window model's caches are full (as in a long stream)."""
    return model.cfg.window - 1 if hasattr(model.cfg, "window") else 3


@torch.no_grad()
def _batched_fps(model: torch.nn.Module, name: str, streams: int, frames: int, dim: int) -> float:
    """Frames per second per stream when ``streams`` streams are scored together, one step at a time."""
    x = torch.randn(streams, dim)
    if name == "oadtr":
        stream = model.stream()
        for _ in range(_warmup(model)):
            stream.step(x)
        start = time.perf_counter()
        for _ in range(frames):
            stream.step(x)  # (N, D) -> (N, C+1): N streams, one cache each
    elif name == "idn":
        W = model.cfg.window
        windows = torch.randn(streams, W, dim)
        valid = torch.full((streams,), W)
        start = time.perf_counter()
        for _ in range(frames):
            windows = torch.cat((windows[:, 1:], x[:, None]), dim=1)  # every stream's ring buffer moves
            model.read_windows(windows, valid)
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


@torch.no_grad()
def _int8(model: torch.nn.Module, frames: int) -> dict[str, float]:
    """One stream with int8 weights (a copy of ``model``): real-time factor, its ratio to fp32 in the same
    run, and how far its scores move from fp32's over a session that fills the caches."""
    quantized = copy.deepcopy(model)
    quantize_int8(quantized)
    warmup, dim = _warmup(model), model.cfg.feature_dim
    features = torch.randn(warmup + frames, dim)
    fp32 = stream_rate(model, features, warmup=warmup)
    int8 = stream_rate(quantized, features, warmup=warmup)
    session = torch.randn(warmup + 8, dim)
    reference, scores = stream_scores(model, session), stream_scores(quantized, session)
    return {
        "int8_single_stream_fps": int8,
        "int8_single_stream_rtf": int8 / FPS,
        "int8_over_fp32": int8 / fp32,
        "int8_weight_bytes": sum(b.numel() * b.element_size() for b in quantized.buffers()),
        "int8_max_abs_score_diff": float((scores - reference).abs().max()),
        "int8_same_argmax_fraction": float((scores.argmax(-1) == reference.argmax(-1)).float().mean()),
        "fp32_max_abs_score": float(reference.abs().max()),
    }


@torch.no_grad()
def _recompute_fps(model: torch.nn.Module, repeats: int = 2) -> float:
    """OadTR without caches: frames/s when each score is recomputed from the ``history`` frames it reads."""
    window = torch.randn(1, model.history, model.cfg.feature_dim)
    model(window)  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        model(window)
    return repeats / (time.perf_counter() - start)


@torch.no_grad()
def _roofline(model: torch.nn.Module) -> dict[str, float]:
    """One OadTR stream step: weight bytes read and FLOPs, this machine's bandwidth and GEMM rate, and the
    real-time factor those two limits allow."""
    stream = model.stream()
    x = torch.randn(model.cfg.feature_dim)
    for _ in range(_warmup(model)):
        stream.step(x)
    counter = FlopCounterMode(display=False)
    with counter:
        stream.step(x)
    flops = counter.get_total_flops()
    weights = sum(p.numel() * p.element_size() for p in model.parameters())  # every weight is read per step
    big = torch.empty(64 * 2**20)  # 256 MB, far beyond the caches
    copy = torch.empty_like(big)
    seconds = median_seconds(lambda: copy.copy_(big), repeats=5)  # after one warm-up copy
    bandwidth = 2 * big.numel() * big.element_size() / seconds  # read + write bytes/s
    E = model.cfg.dim
    a, b = torch.randn(512, E), torch.randn(E, 4 * E)  # a compute-bound product of the model's shapes
    a @ b
    start = time.perf_counter()
    for _ in range(3):
        a @ b
    gemm = 3 * 2 * a.shape[0] * E * 4 * E / (time.perf_counter() - start)
    limit_s = max(weights / bandwidth, flops / gemm)
    return {
        "weight_bytes_per_step": weights,
        "flops_per_step": flops,
        "bandwidth_gb_s": bandwidth / 1e9,
        "gemm_gflop_s": gemm / 1e9,
        "bandwidth_bound_ms": 1000 * weights / bandwidth,
        "compute_bound_ms": 1000 * flops / gemm,
        "limit_rtf": 1 / limit_s / FPS,
    }


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
        warmup = _warmup(model)
        single = stream_rate(model, torch.randn(warmup + frames, dim), warmup=warmup)
        tuning = {}
        if name == "oadtr":  # the same model again, each projection in its measured-fastest matrix form
            roofline = _roofline(model)  # before tuning: the FLOP counter does not see oneDNN's packed form
            report = model.tune_for_streaming((1, args.streams))
            default_forms = single
            single = stream_rate(model, torch.randn(warmup + frames, dim), warmup=warmup)
            tuning = {
                "single_stream_rtf_default_forms": default_forms / FPS,
                "tuned_over_default_forms": single / default_forms,
                "tuning_s": report.seconds,
                "weight_copies_bytes": report.extra_bytes,
            }
        batched = _batched_fps(model, name, args.streams, frames, dim)
        if name == "oadtr":  # last: the same weights in int8 (nn.int8_linear), on a copy
            tuning.update(_int8(model, frames))
        rows[name] = {
            **tuning,
            "params": sum(p.numel() for p in model.parameters()),
            "single_stream_fps": single,
            "single_stream_rtf": single / FPS,
            "batched_streams": args.streams,
            "batched_fps_per_stream": batched,
            "batched_rtf_per_stream": batched / FPS,
            "batched_total_fps": batched * args.streams,
        }
        if name == "oadtr":
            recompute = _recompute_fps(model)
            rows[name]["without_caches_rtf"] = recompute / FPS
            rows[name]["roofline"] = roofline
    result = {
        "settings": {"preset": preset, "frames": frames, "threads": torch.get_num_threads(), "fps": FPS}
    }
    result["models"] = rows
    if "oadtr" in rows:
        result["goals"] = {
            "oadtr_single_stream_rtf_ge_10": rows["oadtr"]["single_stream_rtf"] >= 10,
            "oadtr_int8_single_stream_rtf_ge_10": rows["oadtr"]["int8_single_stream_rtf"] >= 10,
        }
    return result


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
