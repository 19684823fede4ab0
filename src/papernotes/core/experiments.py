"""The machinery behind ``papernotes reproduce``.

Each field's ``reproduce.py`` exposes ``EXPERIMENTS``, a list of :class:`Experiment`.
An experiment is a function of an :class:`ExperimentContext` that runs on embedded
data, measures, and returns an :class:`ExperimentResult`: numbers, tables and
figures, never a hard-coded result. :func:`run_experiments` runs a selection,
writes ``results.json`` and the HTML report, and returns the results.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from papernotes.core.checkpoint import atomic_write_file
from papernotes.core.report import write_report
from papernotes.errors import ConfigError

logger = logging.getLogger(__name__)

SIZES = ("quick", "full")


@dataclass
class ExperimentContext:
    size: str  # "quick" (the default budget) or "full" (longer, larger)
    out_dir: Path  # this experiment's folder inside the report; figures go here
    cache_dir: Path  # trained models shared between experiments and runs
    use_cache: bool = True  # reuse cached models when their recipe matches
    seed: int = 0  # base seed for everything the experiment samples
    shared: dict[str, Any] = field(default_factory=dict)  # values an earlier experiment hands to later ones


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[Any]]


@dataclass
class ExperimentResult:
    metrics: dict[str, Any] = field(default_factory=dict)  # JSON-ready numbers
    tables: list[Table] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)  # paths relative to the report folder
    notes: list[str] = field(default_factory=list)  # caveats worth reading beside the numbers


@dataclass
class Experiment:
    name: str  # what --only selects
    field: str  # "llm" or "video"
    description: str  # one line for the summary and --list
    run: Callable[[ExperimentContext], ExperimentResult]


def select(experiments: Sequence[Experiment], only: Sequence[str] | None) -> list[Experiment]:
    """The experiments named in ``only`` (all when empty); unknown names are an error listing valid ones."""
    if not only:
        return list(experiments)
    names = [e.name for e in experiments]
    unknown = [n for n in only if n not in names]
    if unknown:
        raise ConfigError(f"--only: unknown experiment(s) {unknown}; expected some of: {', '.join(names)}")
    return [e for e in experiments if e.name in only]


def run_experiments(
    experiments: Sequence[Experiment],
    out_root: Path,
    size: str = "quick",
    cache_dir: Path | None = None,
    use_cache: bool = True,
    seed: int = 0,
) -> tuple[Path, dict[str, Any]]:
    """Run ``experiments`` in order into ``out_root/<timestamp>/``; returns (run dir, results).

    A failing experiment is recorded with its error and the run goes on, so one
    broken method does not hide the others' numbers.
    """
    if size not in SIZES:
        raise ConfigError(f"--size {size!r}: expected one of {', '.join(SIZES)}")
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    run_dir = Path(out_root) / stamp
    run_dir.mkdir(parents=True, exist_ok=True)
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    results: dict[str, Any] = {
        "created": stamp,
        "size": size,
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "machine": platform.machine(),
        },
        "experiments": {},
    }
    shared: dict[str, Any] = {}
    for exp in experiments:
        ctx = ExperimentContext(size, run_dir / exp.name, cache_dir, use_cache, seed, shared)
        ctx.out_dir.mkdir(parents=True, exist_ok=True)
        logger.info("experiment %s: %s", exp.name, exp.description)
        start = time.perf_counter()
        entry: dict[str, Any] = {"field": exp.field, "description": exp.description}
        try:
            res = exp.run(ctx)
            entry.update(
                status="ok",
                metrics=res.metrics,
                tables=[vars(t) for t in res.tables],
                figures=[f"{exp.name}/{f}" for f in res.figures],
                notes=res.notes,
            )
        except Exception as exc:  # record and go on; the summary shows it failed
            logger.error("experiment %s failed: %s", exp.name, exc)
            entry.update(
                status="failed", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc()
            )
        entry["wall_s"] = round(time.perf_counter() - start, 2)
        results["experiments"][exp.name] = entry
        # rewrite after each experiment so an interrupted run still leaves its numbers
        with atomic_write_file(run_dir / "results.json") as tmp:
            tmp.write_text(json.dumps(results, indent=2, default=_json_default))
    write_report(run_dir, results)
    return run_dir, results


def default_cache_dir() -> Path:
    """``$PAPERNOTES_CACHE`` or ``~/.cache/papernotes``."""
    env = os.environ.get("PAPERNOTES_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "papernotes"


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
