"""Time and peak-memory profile of the attention backends (naive, SDPA, FlashAttention).

Backs the FlashAttention claims (Dao et al. 2022, arXiv:2205.14135): memory linear
in N instead of quadratic, at a speed close to a fused kernel. There is no GPU
here, so memory is measured on the CPU allocator: ``torch.profiler`` with
``profile_memory=True`` records every allocation and free with its size and
time; summing them in time order gives the running total above what existed
before the call, and its maximum is the peak extra memory. This is a
measurement, not a formula: the tests check that naive attention shows at least
the N²·H·4 bytes of its score matrix (at N = 2048, H = 8 it measures 264 MiB:
scores plus probabilities, 128 MiB each).

FLOP convention (FlashAttention papers): forward = 4·B·H·N²·D, halved when
causal; backward = 2.5 × forward, so forward+backward = 3.5 × forward.
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from collections.abc import Callable, Sequence

import torch
from torch.profiler import ProfilerActivity, profile

from papernotes.nn.attention import attend, check_backend

logger = logging.getLogger(__name__)

DEFAULT_MAX_NAIVE_BYTES = 4 * 2**30  # naive runs whose score matrices would exceed this are skipped


def measure_peak_extra_bytes(fn: Callable[[], object]) -> int:
    """Peak bytes allocated on the CPU above the starting level while ``fn()`` runs.

    Tensors that exist before the call (inputs) do not count; whatever ``fn``
    allocates, including its output, does. Uses the profiler's allocation events.
    """
    # kineto logs start/stop lines and a "no GPU" error on stderr by default; level 6 silences them
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    # the raw kineto events keep every allocation; prof.events() merges some of them away
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    running = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):  # stable: keeps record order on ties
        running += event.nbytes()  # > 0 allocation, < 0 free
        peak = max(peak, running)
    return peak


def attention_flops(
    batch: int, num_heads: int, seq_len: int, head_dim: int, causal: bool, backward: bool
) -> float:
    """FLOPs of one call by the FlashAttention convention (see module docstring)."""
    forward = 4.0 * batch * num_heads * seq_len * seq_len * head_dim
    if causal:
        forward /= 2
    return forward * 3.5 if backward else forward


def naive_estimated_bytes(batch: int, num_heads: int, seq_len: int, backward: bool) -> int:
    """fp32 score-matrix bytes naive attention holds; ×3 with autograd (scores, probs, grads)."""
    scores = batch * num_heads * seq_len * seq_len * 4
    return scores * 3 if backward else scores


def _make_call(
    backend: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, backward: bool
) -> Callable[[], None]:
    def call() -> None:
        out = attend(q, k, v, backend=backend, causal=causal)
        if backward:
            out.backward(torch.ones_like(out))
            for x in (q, k, v):  # drop grads so every run allocates them afresh
                x.grad = None

    return call


def profile_attention(
    seq_lens: Sequence[int],
    backends: Sequence[str] = ("naive", "sdpa", "flash"),
    *,
    batch: int = 1,
    num_heads: int = 8,
    head_dim: int = 64,
    causal: bool = True,
    backward: bool = False,
    repeats: int = 3,
    dtype: torch.dtype = torch.float32,
    max_naive_bytes: int = DEFAULT_MAX_NAIVE_BYTES,
    measure_memory: bool = True,
    seed: int = 0,
) -> list[dict]:
    """Time and measure each backend at each sequence length (self-attention, Nq = Nk = N).

    Returns one dict per (backend, seq_len): ``backend``, ``seq_len``, ``mode``
    ("forward" or "forward+backward"), ``time_s`` (median of ``repeats`` runs,
    seconds), ``time_min_s``, ``peak_extra_bytes`` (measured peak allocation above
    the inputs, bytes; None when ``measure_memory`` is off), ``tflops`` (by the
    FlashAttention convention), ``skipped`` and ``skip_reason``. Naive runs whose
    :func:`naive_estimated_bytes` exceed ``max_naive_bytes`` are skipped. The
    memory run (profiled) doubles as the warm-up and is not timed.
    """
    for name in backends:
        check_backend(name)
    mode = "forward+backward" if backward else "forward"
    rows = []
    for seq_len in seq_lens:
        generator = torch.Generator().manual_seed(seed)
        shape = (batch, num_heads, seq_len, head_dim)
        q, k, v = (
            torch.randn(shape, generator=generator, dtype=torch.float32).to(dtype).requires_grad_(backward)
            for _ in range(3)
        )
        flops = attention_flops(batch, num_heads, seq_len, head_dim, causal, backward)
        for backend in backends:
            row = {"backend": backend, "seq_len": seq_len, "mode": mode}
            row.update(skipped=False, skip_reason=None)
            estimate = naive_estimated_bytes(batch, num_heads, seq_len, backward)
            if backend == "naive" and estimate > max_naive_bytes:
                reason = (
                    f"score matrices ~{estimate / 2**30:.1f} GiB > "
                    f"max_naive_bytes {max_naive_bytes / 2**30:.1f} GiB"
                )
                logger.info("skipping naive at N=%d: %s", seq_len, reason)
                row.update(skipped=True, skip_reason=reason, time_s=None, time_min_s=None)
                row.update(peak_extra_bytes=None, tflops=None)
                rows.append(row)
                continue
            call = _make_call(backend, q, k, v, causal, backward)
            if measure_memory:
                row["peak_extra_bytes"] = measure_peak_extra_bytes(call)
            else:
                row["peak_extra_bytes"] = None
                call()  # warm-up
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                call()
                times.append(time.perf_counter() - start)
            row["time_s"] = statistics.median(times)
            row["time_min_s"] = min(times)
            row["tflops"] = flops / row["time_s"] / 1e12
            logger.info(
                "%s N=%d %s: %.4f s, peak extra %s bytes",
                backend,
                seq_len,
                mode,
                row["time_s"],
                row["peak_extra_bytes"],
            )
            rows.append(row)
    return rows
