"""Measure the fastest matrix form of every linear layer once, cache the choice, and apply it.

Why: see ``fast_linear`` (issue 17): which BLAS call computes y = x Wᵀ fastest depends on the
weight's shape and on the number of rows M, and only a measurement on this machine can tell.

How ``tune_linears(model)`` decides:
1. It groups the model's fast ``Linear`` layers by shape (N, K, bias, dtype); each shape is
   measured once, for each M in ``rows`` and each form of ``fast_linear.FORMS``.
2. A measurement times whole passes over enough random weights of that shape to exceed
   ``cold_bytes`` (twice this machine's 32 MB L3), so each product reads its weight from memory as
   in a real forward, where the 540 MB of SmolLM2 never stay in the cache. Forms are interleaved
   within each round (A/B/C, A/B/C, ...) and the median round counts, so load from other jobs
   reaches every form alike. With one thread the clock is the thread's CPU time, which time spent
   waiting for a core shared with other jobs does not inflate; with more, it is the wall clock.
3. Per M, the fastest form wins, with one rule for memory: a copy of a weight (transposed or
   packed) is kept only when it pays (``choose_forms``): the mean log-gain over M of the forms it
   enables, M = 1 weighing as much as all the others, must reach log(1 + ``min_gain``), 10 %, per
   copy. A copy doubles a layer's bytes, so a gain at a single large M, or within the noise, is not
   enough. A layer whose chosen forms all read W transposed stores W column-major and needs no
   copy at all. ``max_copies=0`` keeps no copy (no extra memory).
4. The timings are cached per shape as a JSON record under ``<cache>/kernels/``, keyed by the
   machine (``core.cache.machine_recipe`` plus the CPU's name), the shape, the rows, the forms and
   the measurement settings; a second start-up reads them back (milliseconds), and any change of
   machine or shape measures again.

Rows not measured use the nearest measured M (``fast_linear.LinearPlan.nearest``).
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import platform
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from papernotes.core.cache import machine_recipe, read_record, recipe_key, write_record
from papernotes.core.experiments import default_cache_dir
from papernotes.errors import ConfigError
from papernotes.nn.fast_linear import (
    FORMS,
    ROW_MAJOR_FORMS,
    Linear,
    LinearPlan,
    available_forms,
    copies_needed,
)

KERNELS_DIR = "kernels"  # the timings' folder inside a cache folder

logger = logging.getLogger(__name__)

DEFAULT_ROWS = (1, 2, 5, 9, 17, 33, 65)  # one token, then the draft/tree sizes of the decoders
COLD_BYTES = 64 * 2**20  # > 2 × this machine's 32 MB L3: cycled weights come from memory
MAX_COPIES = 256  # at most this many cycled copies of one weight shape
TUNING_VERSION = 3  # bump when the measurement changes meaning, so that old records are ignored


@dataclass
class ShapeChoice:
    """The measurement and the choice for one weight shape."""

    out_features: int  # N
    in_features: int  # K
    bias: bool
    dtype: str
    seconds: dict[int, dict[str, float]]  # M -> form -> median seconds of one product
    forms: dict[int, str]  # M -> the chosen form
    modules: list[str]  # the layers of this shape
    cached: bool  # read from the cache rather than measured now
    column_major: bool = False  # the weights are stored transposed (their forms read only Wᵀ)
    extra_bytes: int = 0  # copies kept for these layers (distinct weights counted once)

    def speedup(self, rows: int) -> float:
        """t(F.linear) / t(chosen form) at M = ``rows``."""
        times = self.seconds[rows]
        return times["linear"] / times[self.forms[rows]]


@dataclass
class TuneReport:
    """What ``tune_linears`` measured and chose, and what the choice costs in memory."""

    shapes: list[ShapeChoice] = field(default_factory=list)
    extra_bytes: int = 0  # bytes of all weight copies kept (transposed or packed); relayouts cost none
    weight_bytes: int = 0  # bytes of the tuned layers' distinct weights, for scale
    seconds: float = 0.0  # wall time of the tuning, measurement or cache read
    load: float = 0.0  # 1-minute load average when tuning began

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or the platform's processor string."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _load() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0


def timing_layers(
    weights: Sequence[torch.Tensor], forms: Sequence[str], bias: bool = False
) -> dict[str, list[Linear]]:
    """One ``Linear`` per weight and form, each running only that form on the weights' values.

    Each layer gets its own Parameter over the shared values: a form that stores W column-major
    relays out its own Parameter (a copy), and every other form keeps reading W row-major.
    """
    out_features, in_features = weights[0].shape
    layers: dict[str, list[Linear]] = {form: [] for form in forms}
    for weight in weights:
        b = torch.zeros(out_features, dtype=weight.dtype) if bias else None
        for form in forms:
            with torch.device("meta"):
                layer = Linear(in_features, out_features, bias=bias)
            layer.weight = nn.Parameter(weight, requires_grad=False)  # shares the values until relaid out
            layer.bias = nn.Parameter(b, requires_grad=False) if bias else None
            layer.use_forms({1: form})
            layers[form].append(layer)
    return layers


def time_forms(
    out_features: int,
    in_features: int,
    rows: Sequence[int],
    forms: Sequence[str],
    *,
    bias: bool = False,
    dtype: torch.dtype = torch.float32,
    repeats: int = 5,
    cold_bytes: int = COLD_BYTES,
    max_seconds: float = 30.0,
    seed: int = 0,
) -> dict[int, dict[str, float]]:
    """Median seconds of one product y = x Wᵀ per M in ``rows`` and form, with W read from memory.

    Random weights of shape (N, K) are cycled, as many as fill ``cold_bytes`` (at most ``MAX_COPIES``);
    every form uses the same weights (and its own copies of them). Rounds interleave the forms,
    rotating their order. Past ``max_seconds`` for the shape, each remaining M gets a single round (a
    loaded machine can make one product take milliseconds; the tuning must still end).
    """
    start = time.perf_counter()
    weight_bytes = out_features * in_features * torch.empty((), dtype=dtype).element_size()
    # capped: a weight small enough to need more copies (under 256 KiB at the default) would sit in the
    # caches in real use too, and thousands of copies of it made the tuning of a tiny model take minutes
    count = min(MAX_COPIES, max(1, math.ceil(cold_bytes / weight_bytes)))
    generator = torch.Generator().manual_seed(seed)
    weights = [
        (torch.randn(out_features, in_features, generator=generator) / in_features**0.5).to(dtype)
        for _ in range(count)
    ]
    layers = timing_layers(weights, forms, bias=bias)

    # one thread: CPU time equals wall time on an idle machine and ignores waits for a busy core;
    # more threads: their work is not on this thread's clock, so only the wall clock is right
    clock = time.thread_time if torch.get_num_threads() == 1 else time.perf_counter

    def one_pass(form: str, x: torch.Tensor) -> float:
        begin = clock()
        for layer in layers[form]:
            layer(x)
        return (clock() - begin) / count

    seconds: dict[int, dict[str, float]] = {}
    with torch.inference_mode():
        for m in rows:
            x = torch.randn(m, in_features, generator=generator).to(dtype)  # (M, K)
            for form in forms:  # warm-up: first calls allocate and create oneDNN primitives
                one_pass(form, x)
            samples: dict[str, list[float]] = {form: [] for form in forms}
            for r in range(repeats):
                if r > 0 and time.perf_counter() - start > max_seconds:
                    break  # out of time: this M keeps the rounds it has
                for i in range(len(forms)):
                    form = forms[(i + r) % len(forms)]
                    samples[form].append(one_pass(form, x))
            seconds[m] = {form: statistics.median(s) for form, s in samples.items()}
    if (elapsed := time.perf_counter() - start) > max_seconds:
        logger.warning(
            "timing the %d x %d linear took %.0f s (budget %.0f s): fewer rounds, noisier choices; "
            "is the machine loaded (1-minute load %.1f)?",
            out_features,
            in_features,
            elapsed,
            max_seconds,
            _load(),
        )
    return seconds


def choose_forms(
    seconds: dict[int, dict[str, float]], min_gain: float = 0.10, max_copies: int = 2
) -> dict[int, str]:
    """The form per M: the fastest among those whose copies of W pay for their memory.

    Every subset of the measured forms is a candidate: per M it runs its fastest form, and it keeps
    the copies those forms need (``fast_linear.copies_needed``; a weight read only transposed is
    stored column-major, no copy). A candidate scores the mean over M of log(t(fastest row-major
    copy-free form) / t(its form)), with M = 1 (plain decoding, and every drafter's step) weighing as
    much as all other M together. Each copy beyond the current best's must add log(1 + ``min_gain``)
    to the score; at most ``max_copies`` copies.
    """
    rows = sorted(seconds)
    forms = sorted(seconds[rows[0]])
    if 1 in rows and len(rows) > 1:
        weight = {m: 0.5 if m == 1 else 0.5 / (len(rows) - 1) for m in rows}
    else:
        weight = dict.fromkeys(rows, 1 / len(rows))

    def fastest(allowed: Sequence[str]) -> dict[int, str]:
        return {m: min(allowed, key=seconds[m].__getitem__) for m in rows}

    baseline = fastest([f for f in forms if f in ROW_MAJOR_FORMS] or forms)
    by_copies: dict[int, tuple[float, dict[int, str]]] = {}  # copies kept -> (best score, its choice)
    for size in range(1, len(forms) + 1):
        for allowed in itertools.combinations(forms, size):
            choice = fastest(allowed)
            copies = len(copies_needed(choice.values()))
            score = sum(weight[m] * math.log(seconds[m][baseline[m]] / seconds[m][choice[m]]) for m in rows)
            if copies <= max_copies and score > by_copies.get(copies, (-math.inf, {}))[0]:
                by_copies[copies] = (score, choice)
    best, best_score, best_copies = baseline, 0.0, 0
    for copies in sorted(by_copies):
        score, choice = by_copies[copies]
        gained = score - best_score
        if gained > 1e-12 and gained >= (copies - best_copies) * math.log(1 + min_gain):
            best, best_score, best_copies = choice, score, copies
    return best


def _recipe(
    out_features: int,
    in_features: int,
    bias: bool,
    dtype: torch.dtype,
    rows: Sequence[int],
    forms: Sequence[str],
    repeats: int,
    cold_bytes: int,
) -> dict[str, Any]:
    """Everything a shape's timings depend on: the cache key of its record."""
    return {
        "what": "fast_linear forms",
        "version": TUNING_VERSION,
        "machine": {**machine_recipe(), "cpu": cpu_name(), "cores": os.cpu_count()},
        "shape": [out_features, in_features],
        "bias": bias,
        "dtype": str(dtype),
        "rows": sorted(rows),
        "forms": sorted(forms),
        "repeats": repeats,
        "cold_bytes": cold_bytes,
    }


def tune_linears(
    model: nn.Module,
    rows: Sequence[int] = DEFAULT_ROWS,
    forms: Sequence[str] | None = None,
    *,
    repeats: int = 5,
    cold_bytes: int = COLD_BYTES,
    min_gain: float = 0.10,
    max_copies: int = 2,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
) -> TuneReport:
    """Measure (or read from the cache) the fastest form of every fast ``Linear`` and apply it.

    ``rows``: the row counts M to measure (others use the nearest); ``forms``: candidates (default:
    all that run on the layer's device and dtype; "linear" is always measured, as the baseline).
    ``min_gain`` and ``max_copies``: when copies of a weight pay (``choose_forms``).
    Layers that share one weight (a tied head) share one plan and one copy. Returns a report with
    the timings, the choices and the extra bytes. Applies to CPU layers; others are left alone.
    """
    if not rows or min(rows) < 1:
        raise ConfigError(f"tune_linears: rows must be row counts >= 1, got {list(rows)}")
    if forms is not None and (unknown := sorted(set(forms) - set(FORMS))):
        raise ConfigError(f"tune_linears: unknown forms {unknown}; expected some of {sorted(FORMS)}")
    start, report = time.perf_counter(), TuneReport(load=_load())
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir() / KERNELS_DIR
    groups: dict[tuple[int, int, bool, torch.dtype], list[tuple[str, Linear]]] = {}
    for name, module in model.named_modules():
        if isinstance(module, Linear) and module.weight.device.type == "cpu":
            key = (module.out_features, module.in_features, module.bias is not None, module.weight.dtype)
            groups.setdefault(key, []).append((name, module))
    for (n, k, bias, dtype), members in groups.items():
        candidates = [f for f in available_forms(dtype) if forms is None or f in forms or f == "linear"]
        recipe = _recipe(n, k, bias, dtype, rows, candidates, repeats, cold_bytes)
        key = recipe_key(recipe)
        path = cache / f"linear-{n}x{k}-{key}.json"
        record = read_record(path, key, use_cache)
        if record is not None:
            seconds = {int(m): times for m, times in record["seconds"].items()}
            if record.get("load", 0.0) > (os.cpu_count() or 1):
                logger.warning("%s was measured at load %.1f; tune again when idle", path, record["load"])
        else:
            logger.info("timing %d forms of a %d x %d linear at M = %s", len(candidates), n, k, list(rows))
            load = _load()
            seconds = time_forms(
                n, k, rows, candidates, bias=bias, dtype=dtype, repeats=repeats, cold_bytes=cold_bytes
            )
            write_record(path, key, {"seconds": seconds, "load": load}, recipe)
        choice = ShapeChoice(
            out_features=n,
            in_features=k,
            bias=bias,
            dtype=str(dtype),
            seconds=seconds,
            forms=choose_forms(seconds, min_gain, max_copies),
            modules=[name for name, _ in members],
            cached=record is not None,
        )
        plans: dict[int, LinearPlan] = {}  # id(weight) -> the plan its layers share
        for _, module in members:
            shared = plans.get(id(module.weight))
            if shared is not None:
                module.set_plan(shared)  # the weight is already laid out and copied
                continue
            choice.extra_bytes += module.use_forms(choice.forms)
            choice.column_major = module.plan.columns
            report.weight_bytes += module.weight.numel() * module.weight.element_size()
            plans[id(module.weight)] = module.plan
        report.shapes.append(choice)
        report.extra_bytes += choice.extra_bytes
    report.seconds = time.perf_counter() - start
    return report
