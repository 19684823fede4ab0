"""The machinery behind ``papernotes reproduce``.

Each field's ``experiments`` package (``geometry.experiments`` module) exposes ``EXPERIMENTS``, a list of
:class:`Experiment`.
An experiment is a function of an :class:`ExperimentContext` that runs on embedded
data, measures, and returns an :class:`ExperimentResult`: numbers, tables and
figures, never a hard-coded result. :func:`run_experiments` runs a selection,
writes ``results.json`` and the HTML report, and returns the results.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
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

from papernotes.core.files import write_text_atomic
from papernotes.core.precision import cpu_capability, native_bf16
from papernotes.core.report import write_report
from papernotes.errors import ConfigError

logger = logging.getLogger(__name__)

SIZES = ("tiny", "quick", "full")  # tiny: seconds, for tests; quick: the default budget; full: hours


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


VERDICTS = ("met", "missed", "not judged")
_COMPARE: dict[str, Callable[[float, float], bool]] = {
    ">=": lambda a, b: a >= b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    "<": lambda a, b: a < b,
}


@dataclass
class Goal:
    """One claim of the notes, checked against this run's number.

    The verdict is always computed from ``measured`` (:func:`judge`): a missing or undefined measurement
    (None, NaN, a ratio of zero to zero) is "not judged", never "met".
    """

    claim: str  # what the notes claim, in words ("speculative decoding speeds up decoding")
    paper: str  # the paper's number and where it was measured ("2-3x, T5-XXL on TPU")
    target: str  # our bar, e.g. ">= 2.0 x"
    measured: float | None  # this run's number; None when it was not measured
    verdict: str  # one of VERDICTS
    method: str = ""  # which method of the notes the goal belongs to (a card in the report)
    detail: str = ""  # how it was measured, or why it was not judged


def judge(
    claim: str,
    measured: float | None,
    op: str,
    bound: float,
    paper: str = "",
    unit: str = "",
    method: str = "",
    detail: str = "",
) -> Goal:
    """A Goal whose verdict is ``measured op bound`` (op one of >=, <=, >, <); not judged without a number."""
    if op not in _COMPARE:
        raise ConfigError(f"goal operator {op!r}: expected one of {', '.join(_COMPARE)}")
    value = None if measured is None or not math.isfinite(float(measured)) else float(measured)
    if value is None:
        verdict = "not judged"
        detail = detail or "no measurement in this run"
    else:
        verdict = "met" if _COMPARE[op](value, bound) else "missed"
    return Goal(claim, paper, f"{op} {bound:g}{unit}", value, verdict, method, detail)


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator; None when either is missing or the denominator is 0 (0 vs 0: no evidence)."""
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


CATEGORIES = ("Large Model", "3D Model", "Computer Vision")  # how the notes' blog files its posts


@dataclass(frozen=True)
class Method:
    """A method of the notes: a card at the top of the report, with the goals whose ``method`` names it."""

    name: str  # as the notes title it ("Speculative decoding")
    category: str  # one of CATEGORIES, as the blog files it
    docs: str  # its page under the repository's docs/ folder ("speculative_decoding.md")
    figure: str | None = None  # its main figure: a file name in the experiment's report folder


@dataclass
class ExperimentResult:
    metrics: dict[str, Any] = field(default_factory=dict)  # JSON-ready numbers
    tables: list[Table] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)  # paths relative to the report folder
    notes: list[str] = field(default_factory=list)  # caveats worth reading beside the numbers
    goals: list[Goal] = field(default_factory=list)  # the notes' claims, judged on this run's numbers
    trained: list[str] = field(default_factory=list)  # what this run trained (shown in the time table)
    reused: list[str] = field(default_factory=list)  # what it took from the cache instead


@dataclass
class Experiment:
    name: str  # what --only selects
    field: str  # "llm", "video" or "geometry"
    description: str  # one line for the summary and --list
    run: Callable[[ExperimentContext], ExperimentResult]
    methods: tuple[Method, ...] = ()  # the notes' methods it measures: one report card each


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
            "cpu_capability": cpu_capability(),
            "native_bf16": native_bf16(),
        },
        "experiments": {},
    }
    shared: dict[str, Any] = {}
    for exp in experiments:
        ctx = ExperimentContext(size, run_dir / exp.name, cache_dir, use_cache, seed, shared)
        ctx.out_dir.mkdir(parents=True, exist_ok=True)
        logger.info("experiment %s: %s", exp.name, exp.description)
        start = time.perf_counter()
        entry: dict[str, Any] = {
            "field": exp.field,
            "description": exp.description,
            "methods": [{**dataclasses.asdict(m), "figure": _in(exp.name, m.figure)} for m in exp.methods],
        }
        try:
            res = exp.run(ctx)
            entry.update(
                status="ok",
                metrics=res.metrics,
                tables=[vars(t) for t in res.tables],
                figures=[f"{exp.name}/{f}" for f in res.figures],
                notes=res.notes,
                goals=[dataclasses.asdict(g) for g in res.goals],
                trained=res.trained,
                reused=res.reused,
            )
        except Exception as exc:  # record and go on; the summary shows it failed
            logger.error("experiment %s failed: %s", exp.name, exc)
            entry.update(
                status="failed", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc()
            )
        entry["wall_s"] = round(time.perf_counter() - start, 2)
        results["experiments"][exp.name] = entry
        # rewrite both after each experiment, so an interrupted run still leaves a readable report
        write_text_atomic(run_dir / "results.json", json.dumps(results, indent=2, default=_json_default))
        write_report(run_dir, results)
    return run_dir, results


def _in(folder: str, name: str | None) -> str | None:
    return f"{folder}/{name}" if name else None


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
