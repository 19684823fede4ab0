"""``papernotes reproduce``: run the experiments of every field and write the report."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from papernotes.cli.common import Formatter, echo


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    rep = sub.add_parser(
        "reproduce",
        parents=[common],
        help="run every experiment on embedded data; writes reports/<run>/index.html",
        description="Run every registered experiment (or --only some) on embedded data, write "
        "<out>/<timestamp>/results.json and index.html, and print a summary table. Trained models are "
        "cached under --cache-dir and reused by later runs and experiments.",
        formatter_class=Formatter,
    )
    rep.add_argument("--only", nargs="+", metavar="NAME", help="run only these experiments (see --list)")
    rep.add_argument(
        "--size",
        choices=["tiny", "quick", "full"],
        default="quick",
        help="quick: minutes (the default budget); full: hours; tiny: seconds, a smoke test with no meaning",
    )
    rep.add_argument("--out", type=Path, default=Path("reports"), help="folder for report runs")
    rep.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="trained-model cache [$PAPERNOTES_CACHE or ~/.cache/papernotes]",
    )
    rep.add_argument("--no-cache", action="store_true", help="retrain instead of reusing cached models")
    rep.add_argument("--seed", type=int, default=0, help="base random seed")
    rep.add_argument("--list", action="store_true", help="list the experiments and exit")
    rep.set_defaults(func=_reproduce)


def all_experiments() -> list:
    """Every field's experiments, in the order ``reproduce`` runs them."""
    from papernotes.geometry.experiments import EXPERIMENTS as GEOMETRY
    from papernotes.llm.experiments import EXPERIMENTS as LLM
    from papernotes.metrics.experiments import EXPERIMENTS as METRICS
    from papernotes.video.experiments import EXPERIMENTS as VIDEO

    return [*LLM, *VIDEO, *METRICS, *GEOMETRY]


def _reproduce(args: argparse.Namespace) -> int:
    from papernotes.core.experiments import run_experiments, select
    from papernotes.core.report import summary

    experiments = all_experiments()
    if args.list:
        for exp in experiments:
            echo(f"{exp.name:28s} {exp.field:8s} {exp.description}")
        return 0
    logging.getLogger("papernotes").setLevel(logging.INFO)
    chosen = select(experiments, args.only)
    run_dir, results = run_experiments(
        chosen,
        args.out,
        size=args.size,
        cache_dir=args.cache_dir,
        use_cache=not args.no_cache,
        seed=args.seed,
    )
    echo(summary(results))
    echo(f"\nreport: {run_dir / 'index.html'}")
    return 1 if any(e["status"] != "ok" for e in results["experiments"].values()) else 0
