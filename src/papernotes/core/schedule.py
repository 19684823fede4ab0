"""Learning-rate schedule: linear warmup, then cosine decay to a floor.

The schedule used by GPT-3 / Llama-style pre-training (Loshchilov & Hutter 2017, SGDR,
arXiv 1608.03983, for the cosine part; linear warmup as in Goyal et al. 2017, arXiv 1706.02677).
It is a pure function of the optimizer step, so a resumed run needs no schedule state.

    warmup (s < W):      lr(s) = lr_max * (s + 1) / W
    decay  (W <= s <= T): lr(s) = lr_min + 0.5 * (1 + cos(pi * (s - W) / (T - W))) * (lr_max - lr_min)
    after  (s > T):      lr(s) = lr_min

Tests check the boundaries (first step, end of warmup, midpoint, last step, beyond the end).
"""

from __future__ import annotations

import math

from papernotes.errors import ConfigError


def lr_at(step: int, *, lr: float, min_lr: float, warmup_steps: int, total_steps: int) -> float:
    """The learning rate for the 0-based optimizer step ``step``.

    Warmup reaches ``lr`` at step ``warmup_steps - 1`` (step 0 already gets ``lr / warmup_steps``, never 0,
    so the first update is not wasted); the cosine then falls from ``lr`` at ``warmup_steps`` to ``min_lr``
    at ``total_steps`` and stays there.
    """
    if step < 0:
        raise ConfigError(f"lr_at: step must be >= 0, got {step}")
    if warmup_steps < 0 or total_steps < 0:
        raise ConfigError(
            f"lr_at: warmup_steps and total_steps must be >= 0, got {warmup_steps}, {total_steps}"
        )
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    decay_steps = total_steps - warmup_steps
    if decay_steps <= 0:
        return lr if step < total_steps else min_lr
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    # Cosine from 1 to 0 over the decay phase scales the distance between the peak and the floor.
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - min_lr)
