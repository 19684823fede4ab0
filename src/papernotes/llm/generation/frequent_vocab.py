"""A drafter's LM head restricted to the most frequent tokens (FR-Spec, Zhao et al. 2025, arXiv:2502.14856).

A draft that computes the full-vocabulary head pays for it on every draft token; SmolLM2's tied head is a
49 152 × 576 matrix, 21 % of its weights. FR-Spec keeps only the K most frequent tokens in the draft's head:
the draft then proposes only those tokens, and verification against the target's full distribution stays
exact (a token the draft cannot propose has q = 0; rejection sampling's residual max(0, p − q) covers it).
With K = V/4 the head's cost falls by 75 %, and most of the probability mass of real text stays inside.

:class:`VocabHead` holds the K rows of the shared head once (a K × E copy), maps the K logits back to
vocabulary ids, and widens them to a full-vocabulary row (−inf elsewhere) where a caller needs one.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F

from papernotes.errors import ConfigError


def frequent_tokens(streams: Iterable[torch.Tensor], vocab_size: int, k: int) -> torch.Tensor:
    """The ``k`` most frequent token ids over ``streams`` (ties: the lower id), sorted ascending, (k,)."""
    counts = torch.zeros(vocab_size, dtype=torch.long)
    for ids in streams:
        counts += torch.bincount(ids.reshape(-1).long(), minlength=vocab_size)[:vocab_size]
    if not 0 < k <= vocab_size:
        raise ConfigError(f"frequent vocabulary size must be in 1..{vocab_size}, got {k}")
    # stable sort on -count: equal counts keep ascending ids, so the choice is deterministic
    order = torch.sort(-counts, stable=True).indices
    return order[:k].sort().values


class VocabHead:
    """An LM head over the token ids ``tokens`` (K,), cut from the full head ``weight`` (V, E)."""

    def __init__(self, weight: torch.Tensor, tokens: torch.Tensor | None) -> None:
        self.vocab_size = weight.shape[0]
        self.tokens = tokens  # (K,) or None: the full vocabulary
        self.weight = weight if tokens is None else weight.detach()[tokens].contiguous()  # (K, E)

    @property
    def size(self) -> int:
        return self.weight.shape[0]

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden (..., E) -> logits (..., K) over the head's tokens."""
        return F.linear(hidden.to(self.weight.dtype), self.weight)

    def ids(self, index: torch.Tensor) -> torch.Tensor:
        """Positions in the head's rows -> vocabulary ids."""
        return index if self.tokens is None else self.tokens[index]

    def widen(self, logits: torch.Tensor) -> torch.Tensor:
        """logits (..., K) -> (..., V) with −inf outside the head's tokens (probability 0 after softmax)."""
        if self.tokens is None:
            return logits
        full = logits.new_full((*logits.shape[:-1], self.vocab_size), float("-inf"))
        full[..., self.tokens] = logits
        return full
