"""Benchmark: speculative decoding, prompt lookup, Medusa and MTP against plain decoding, on SmolLM2-135M.

Claims under test (issue 17), greedy, batch 1, this CPU: the distilled draft ≥ 2.0× on open prompts; prompt
lookup ≥ 2.5× on input-grounded prompts and ≥ HF's; Medusa ≥ 1.8× with τ ≥ 2.5; MTP second-token acceptance
≥ 80 %; our speculative ≥ 1.3× HF assisted generation with the same draft; our plain ≥ 1.5× HF generate;
plain decoding ≥ 0.7 of the memory-read limit and verifying 5 tokens ≤ 1.2× one. Every method's greedy
output must equal plain greedy.

It runs the ``llm-decoding`` experiment of ``papernotes reproduce`` (training and caching the drafters when
the cache lacks them) and prints ONE JSON object: the rows per prompt kind (tokens/s, τ, α, speedup over
plain in the same run, greedy exactness), the measured cost curve, the choices made from it, and the goals
with their verdicts.

    python benchmarks/decoding.py                  # default size, reuses the reproduce cache
    python benchmarks/decoding.py --size full      # more training data and steps, 4 prompts per kind
"""

from __future__ import annotations

import argparse
import dataclasses
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
    parser.add_argument("--size", choices=["tiny", "quick", "full"], default="quick", help="run size")
    parser.add_argument("--cache-dir", type=Path, default=None, help="model cache [$PAPERNOTES_CACHE]")
    parser.add_argument("--no-cache", action="store_true", help="retrain the drafters")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


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
    metrics = result.metrics
    report = {
        "benchmark": "decoding",
        "size": args.size,
        **{k: metrics[k] for k in ("settings", "rows", "cost_relative", "choices")},
        "memory_limit_tokens_per_s": metrics["memory_limit_tokens_per_s"],
        "goals": [dataclasses.asdict(g) for g in result.goals],
        "notes": result.notes,
        "wall_s": time.perf_counter() - start,
    }
    print(json.dumps(report, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
