"""Benchmark: FlashAttention (ours, PyTorch tiles) vs naive attention vs PyTorch SDPA on CPU.

Claim under test (Dao et al. 2022, arXiv:2205.14135): exact attention with memory
linear in N. Goals at N = 8192, forward: our peak extra memory ≤ 1/20 of naive's,
and our time ≤ 2× SDPA's (PyTorch's fused CPU flash kernel).

Prints ONE JSON object: the settings, the raw rows from
``papernotes.nn.attention_profile.profile_attention``, per-N ratios and the goals.

    python benchmarks/attention.py                 # N = 512 .. 16384, forward and forward+backward
    python benchmarks/attention.py --quick         # N = 512 .. 2048, one timed repeat
    python benchmarks/attention.py --no-backward --seq-lens 8192 --quick   # just the goals, ~20 s
    python benchmarks/attention.py --seq-lens 1024 8192 --no-backward
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time

import torch

from papernotes.nn.attention_profile import profile_attention

GOAL_SEQ_LEN = 8192
GOAL_MEMORY_FRACTION = 1 / 20  # flash extra memory ≤ this × naive extra memory
GOAL_TIME_RATIO = 2.0  # flash time ≤ this × SDPA time


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--seq-lens",
        type=int,
        nargs="+",
        default=None,
        help="default 512 1024 2048 4096 8192 16384 (512 1024 2048 with --quick)",
    )
    parser.add_argument(
        "--backward", action=argparse.BooleanOptionalAction, default=True, help="also time forward+backward"
    )
    parser.add_argument("--quick", action="store_true", help="N = 512..2048 unless given; one timed run")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--causal", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per point (median reported)")
    parser.add_argument(
        "--max-naive-gib",
        type=float,
        default=4.0,
        help="skip naive runs whose score matrices would exceed this",
    )
    args = parser.parse_args(argv)
    if args.seq_lens is None:
        args.seq_lens = [512, 1024, 2048] if args.quick else [512, 1024, 2048, 4096, 8192, 16384]
    if args.quick:
        args.repeats = 1
    return args


def _index(rows: list[dict]) -> dict[tuple[str, str, int], dict]:
    return {(r["mode"], r["backend"], r["seq_len"]): r for r in rows if not r["skipped"]}


def ratios(rows: list[dict]) -> list[dict]:
    """flash/sdpa time and flash/naive peak extra memory, per (mode, N) where both ran."""
    table = _index(rows)
    out = []
    for mode, seq_len in sorted({(r["mode"], r["seq_len"]) for r in rows}):
        flash = table.get((mode, "flash", seq_len))
        sdpa = table.get((mode, "sdpa", seq_len))
        naive = table.get((mode, "naive", seq_len))
        if flash is None:
            continue
        entry = {"mode": mode, "seq_len": seq_len}
        if sdpa is not None:
            entry["flash_over_sdpa_time"] = flash["time_s"] / sdpa["time_s"]
            entry["flash_over_sdpa_time_min"] = flash["time_min_s"] / sdpa["time_min_s"]
            entry["flash_over_sdpa_memory"] = flash["peak_extra_bytes"] / max(sdpa["peak_extra_bytes"], 1)
        if naive is not None:
            entry["flash_over_naive_memory"] = flash["peak_extra_bytes"] / max(naive["peak_extra_bytes"], 1)
            entry["naive_over_flash_time"] = naive["time_s"] / flash["time_s"]
        out.append(entry)
    return out


def goals(rows: list[dict]) -> dict:
    """The two forward goals at N = 8192; None where the needed rows were not run."""
    table = _index(rows)
    flash = table.get(("forward", "flash", GOAL_SEQ_LEN))
    sdpa = table.get(("forward", "sdpa", GOAL_SEQ_LEN))
    naive = table.get(("forward", "naive", GOAL_SEQ_LEN))
    result = {
        "seq_len": GOAL_SEQ_LEN,
        "memory_goal": f"flash extra ≤ naive extra / {1 / GOAL_MEMORY_FRACTION:g}",
        "time_goal": f"flash time ≤ {GOAL_TIME_RATIO:g} × sdpa time",
    }
    if flash is not None and naive is not None:
        fraction = flash["peak_extra_bytes"] / naive["peak_extra_bytes"]
        result.update(memory_fraction=fraction, memory_goal_met=fraction <= GOAL_MEMORY_FRACTION)
    else:
        result.update(memory_fraction=None, memory_goal_met=None)
    if flash is not None and sdpa is not None:
        ratio = flash["time_s"] / sdpa["time_s"]
        result.update(
            time_ratio=ratio,
            time_goal_met=ratio <= GOAL_TIME_RATIO,
            time_ratio_best_of_repeats=flash["time_min_s"] / sdpa["time_min_s"],
        )
    else:
        result.update(time_ratio=None, time_goal_met=None, time_ratio_best_of_repeats=None)
    return result


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    torch.manual_seed(0)
    start = time.perf_counter()
    common = dict(
        batch=args.batch,
        num_heads=args.heads,
        head_dim=args.head_dim,
        causal=args.causal,
        repeats=args.repeats,
        max_naive_bytes=int(args.max_naive_gib * 2**30),
    )
    rows = profile_attention(args.seq_lens, backward=False, **common)
    if args.backward:
        rows += profile_attention(args.seq_lens, backward=True, **common)
    result = {
        "benchmark": "attention",
        "settings": {
            "seq_lens": args.seq_lens,
            "batch": args.batch,
            "heads": args.heads,
            "head_dim": args.head_dim,
            "causal": args.causal,
            "repeats": args.repeats,
            "dtype": "float32",
            "backward": args.backward,
            "max_naive_gib": args.max_naive_gib,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "machine": platform.processor() or platform.machine(),
        },
        "rows": rows,
        "ratios": ratios(rows),
        "goals": goals(rows),
        "wall_s": time.perf_counter() - start,
    }
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
