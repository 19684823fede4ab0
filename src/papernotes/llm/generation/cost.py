"""Verification that fits the hardware: choose γ and the Medusa tree from the *measured* cost of a forward.

Speculative methods trade target forwards for wider ones. Whether that pays depends on how the cost of one
target forward grows with the number w of new tokens it scores, which is a property of the machine: on a
GPU w = 64 costs about what w = 1 does; on this 2-core CPU, verifying 5 tokens cost 1.54× one token's
forward and 65 tokens 2.42× (issue 17). Sequoia (Chen et al. 2024, arXiv:2402.12374) therefore sizes the
tree from a measured cost curve and measured acceptance; we do the same for the draft model's γ and for
Medusa's tree:

    tokens/s ∝ E[tokens per step] / time per step

- draft model, per-position acceptance α_i (the chance that draft i is accepted given drafts < i were):
  E = 1 + Σ_{i=1..γ} Π_{j ≤ i} α_j, time = γ·c_draft + cost(γ + 1);
- Medusa tree with N candidates chosen greedily from the heads' rank accuracies (``tree.greedy_tree``):
  E = 1 + expected_accepted(tree), time = c_heads + cost(N + 1).

``cost`` comes from :func:`measure_forward_cost` on the machine that runs it (and interpolates between the
measured widths).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from papernotes.errors import ConfigError
from papernotes.llm.generation.medusa.tree import TreePath, expected_accepted, greedy_tree
from papernotes.llm.model.llama import Llama

WIDTHS = (1, 2, 3, 5, 9, 17, 33, 65)  # new tokens per forward at which the cost curve is measured


@dataclass
class CostCurve:
    """Seconds of one target forward against the number of new tokens it scores."""

    seconds: dict[int, float]  # width -> median seconds
    context: int  # cached tokens before the forward

    def __call__(self, width: float) -> float:
        """Seconds at ``width`` (linear between measured widths, flat beyond the ends)."""
        points = sorted(self.seconds.items())
        if width <= points[0][0]:
            return points[0][1]
        for (w0, s0), (w1, s1) in zip(points, points[1:]):
            if width <= w1:
                return s0 + (s1 - s0) * (width - w0) / (w1 - w0)
        return points[-1][1]

    def relative(self) -> dict[int, float]:
        """Cost as a multiple of one new token's forward."""
        one = self.seconds[min(self.seconds)]
        return {w: s / one for w, s in sorted(self.seconds.items())}


@torch.inference_mode()
def measure_forward_cost(
    model: Llama, widths: Sequence[int] = WIDTHS, context: int = 128, repeats: int = 5
) -> CostCurve:
    """Median seconds of a forward of w new tokens after ``context`` cached ones, for each w.

    The widths are measured interleaved, repeat by repeat, so drift in the machine's load spreads over
    all of them instead of biasing one.
    """
    if context + max(widths) > model.config.max_position_embeddings:
        raise ConfigError(f"context {context} + width {max(widths)} exceeds the model's context")
    gen = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, model.config.vocab_size, (1, context), generator=gen)
    cache = model.setup_cache(1, context + max(widths))
    model(prompt, cache=cache)
    times: dict[int, list[float]] = {w: [] for w in widths}
    for _ in range(repeats + 1):  # the first round warms up and is dropped
        for w in widths:
            ids = torch.randint(0, model.config.vocab_size, (1, w), generator=gen)
            start = time.perf_counter()
            model(ids, cache=cache)
            times[w].append(time.perf_counter() - start)
            cache.crop(context)
    return CostCurve({w: statistics.median(t[1:]) for w, t in times.items()}, context)


def expected_tokens(acceptance: Sequence[float], gamma: int) -> float:
    """E[tokens per target call] with γ drafts and per-position acceptance α_i (then the bonus token)."""
    total, alive = 1.0, 1.0
    for i in range(gamma):
        alive *= acceptance[min(i, len(acceptance) - 1)] if acceptance else 0.0
        total += alive
    return total


def choose_gamma(
    cost: CostCurve, draft_seconds: float, acceptance: Sequence[float], max_gamma: int = 12
) -> tuple[int, dict[int, float]]:
    """The γ that maximises expected tokens/s, and the expected tokens/s of every γ in 1..max_gamma."""
    rates = {
        g: expected_tokens(acceptance, g) / (g * draft_seconds + cost(g + 1)) for g in range(1, max_gamma + 1)
    }
    return max(rates, key=rates.__getitem__), rates


def choose_tree(
    cost: CostCurve,
    topk_accuracy: torch.Tensor,
    head_seconds: float,
    sizes: Sequence[int] = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 63),
) -> tuple[list[TreePath], dict[int, float]]:
    """The greedy tree whose size maximises expected tokens/s, and the expected rate of each size."""
    rates: dict[int, float] = {}
    trees: dict[int, list[TreePath]] = {}
    for n in sizes:
        paths = greedy_tree(topk_accuracy, n)
        trees[n] = paths
        rates[n] = (1.0 + expected_accepted(paths, topk_accuracy)) / (head_seconds + cost(len(paths) + 1))
    best = max(rates, key=rates.__getitem__)
    return trees[best], rates
