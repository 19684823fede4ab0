"""Benchmark: speculative decoding, prompt lookup, Medusa and MTP against plain decoding.

Claims under test (issue "Faster decoding"): every method is lossless (greedy output equals
plain greedy), and on this CPU, batch 1: speculative ≥ 2.0× over plain greedy at
``--size full``; Medusa τ ≥ 2.5 and ≥ 1.8×; MTP second-token acceptance ≥ 80 %; our plain
decoding ≥ HF plain ``generate()``; our speculative ≥ 1.3× HF assisted generation (same pair).

It runs the ``llm-decoding`` experiment of ``papernotes reproduce`` (training and caching the
target, draft, Medusa heads and MTP modules when the cache lacks them) and prints ONE JSON
object: the rows (tokens/s, τ, α, speedup over plain in the same run, greedy exactness) and
the goals, each with its measured value.

    python benchmarks/decoding.py                  # quick size, reuses the reproduce cache
    python benchmarks/decoding.py --size full      # pn-base target, pn-small draft (hours on a CPU)
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

from papernotes.core.experiments import ExperimentContext, default_cache_dir
from papernotes.llm.experiments.decoding import run_decoding


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=["quick", "full"], default="quick", help="model and run size")
    parser.add_argument("--cache-dir", type=Path, default=None, help="model cache [$PAPERNOTES_CACHE]")
    parser.add_argument("--no-cache", action="store_true", help="retrain the models")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def goals(rows: list[dict], acceptance: dict[str, list[float]], gamma: int) -> dict[str, dict]:
    """Each goal of the issue with the measured value it is judged on (greedy rows)."""
    greedy = {r["method"]: r for r in rows if r["temperature"] == 0}

    def ratio(a: str, b: str) -> float | None:
        if a in greedy and b in greedy:
            return greedy[a]["tokens_per_s"] / greedy[b]["tokens_per_s"]
        return None

    mtp_second = acceptance.get("mtp", [None])[0]  # MTP's first draft is the second token of a step
    measured = {
        "speculative_speedup_ge_2.0": greedy.get("speculative", {}).get("speedup"),
        "medusa_tau_ge_2.5": greedy.get("medusa", {}).get("tokens_per_call"),
        "medusa_speedup_ge_1.8": greedy.get("medusa", {}).get("speedup"),
        "mtp_second_token_acceptance_ge_0.8": mtp_second,
        "plain_over_hf_plain_ge_1.0": ratio("plain", "hf-plain"),
        "speculative_over_hf_assisted_ge_1.3": ratio("speculative", f"hf-assisted-gamma{gamma}"),
    }
    thresholds = {k: float(k.rsplit("_ge_", 1)[1]) for k in measured}
    return {
        k: {"measured": v, "goal": thresholds[k], "met": None if v is None else v >= thresholds[k]}
        for k, v in measured.items()
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        ctx = ExperimentContext(
            size=args.size,
            out_dir=Path(tmp),
            cache_dir=args.cache_dir or default_cache_dir(),
            use_cache=not args.no_cache,
            seed=args.seed,
        )
        result = run_decoding(ctx)
    rows = result.metrics["rows"]
    print(
        json.dumps(
            {
                "benchmark": "decoding",
                "size": args.size,
                "settings": result.metrics["settings"],
                "rows": rows,
                "acceptance_by_position": result.metrics["acceptance_by_position"],
                "goals": goals(
                    rows,
                    result.metrics["acceptance_by_position"],
                    result.metrics["settings"]["num_draft_tokens"],
                ),
                "notes": result.notes,
                "wall_s": time.perf_counter() - start,
            },
            indent=1,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
