"""Plain autoregressive decoding with the static KV cache: the baseline.

Every faster decoding method is timed against :func:`generate` in the same
process, and greedy methods must reproduce its output token for token.

Contract shared by all decoding methods (ARCHITECTURE.md): a model, ``input_ids``
of shape (1, T) and a :class:`GenerationConfig`; returns the new ids (1, N) and a
:class:`DecodeStats`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from papernotes.errors import ConfigError, DataError
from papernotes.llm.llama import Llama
from papernotes.llm.sampling import logits_to_probs, sample


@dataclass
class GenerationConfig:
    max_new_tokens: int = 64  # tokens to generate after the prompt
    temperature: float = 0.0  # 0 = greedy (argmax)
    top_k: int | None = None  # keep only the k most likely tokens
    top_p: float | None = None  # nucleus: keep the smallest set with this much mass
    seed: int = 0  # seeds the sampling generator, so sampled runs repeat exactly
    eos_token_id: int | None = None  # stop after emitting this token


@dataclass
class DecodeStats:
    tokens: int = 0  # new tokens produced
    target_calls: int = 0  # forward passes of the (target) model, prefill included
    accepted_per_step: list[int] = field(default_factory=list)  # tokens emitted by each target call's logits
    wall_s: float = 0.0  # wall-clock seconds, prefill included
    drafted: int = 0  # draft tokens proposed (0 for plain decoding)
    accepted: int = 0  # draft tokens the target accepted
    proposed_by_position: list[int] = field(default_factory=list)  # [i]: drafts proposed at draft position i
    accepted_by_position: list[int] = field(default_factory=list)  # [i]: drafts accepted at draft position i

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def tokens_per_call(self) -> float:
        """τ: mean tokens emitted per target forward call."""
        return sum(self.accepted_per_step) / len(self.accepted_per_step) if self.accepted_per_step else 0.0

    @property
    def acceptance_rate(self) -> float:
        """α: the fraction of proposed draft tokens that the target accepted."""
        return self.accepted / self.drafted if self.drafted else 0.0

    def record_position(self, position: int, accepted: bool) -> None:
        """Count one draft token proposed at ``position`` (0-based) and whether it was accepted."""
        while len(self.proposed_by_position) <= position:
            self.proposed_by_position.append(0)
            self.accepted_by_position.append(0)
        self.proposed_by_position[position] += 1
        self.accepted_by_position[position] += int(accepted)
        self.drafted += 1
        self.accepted += int(accepted)

    def add(self, other: DecodeStats) -> None:
        """Accumulate another run's counts (totals over several prompts)."""
        self.tokens += other.tokens
        self.target_calls += other.target_calls
        self.accepted_per_step += other.accepted_per_step
        self.wall_s += other.wall_s
        self.drafted += other.drafted
        self.accepted += other.accepted
        for position, proposed in enumerate(other.proposed_by_position):
            if position == len(self.proposed_by_position):
                self.proposed_by_position.append(0)
                self.accepted_by_position.append(0)
            self.proposed_by_position[position] += proposed
            self.accepted_by_position[position] += other.accepted_by_position[position]

    def as_dict(self) -> dict[str, float | int | list[int]]:
        """JSON-ready summary, derived rates included."""
        return {
            "tokens": self.tokens,
            "target_calls": self.target_calls,
            "wall_s": self.wall_s,
            "tokens_per_s": self.tokens_per_s,
            "tokens_per_call": self.tokens_per_call,
            "acceptance_rate": self.acceptance_rate,
            "drafted": self.drafted,
            "accepted": self.accepted,
            "proposed_by_position": self.proposed_by_position,
            "accepted_by_position": self.accepted_by_position,
        }


def emit_tokens(tokens: Sequence[int], new: list[int], config: GenerationConfig, stats: DecodeStats) -> bool:
    """Append one target call's tokens to ``new``, cut exactly at EOS or ``max_new_tokens``.

    Records how many were kept in ``stats.accepted_per_step``; True when decoding is done. Shared
    by every method that emits several tokens per target call, so all stop at the same token.
    """
    kept = 0
    for token in tokens:
        new.append(token)
        kept += 1
        if len(new) == config.max_new_tokens or token == config.eos_token_id:
            stats.accepted_per_step.append(kept)
            return True
    stats.accepted_per_step.append(kept)
    return False


def check_prompt(model: Llama, input_ids: torch.Tensor, config: GenerationConfig) -> None:
    """Validate shape and length before any work is done."""
    if input_ids.dim() != 2 or input_ids.shape[0] != 1:
        raise DataError(f"input_ids must have shape (1, T), got {tuple(input_ids.shape)}")
    if config.max_new_tokens < 0:
        raise ConfigError(f"max_new_tokens must be >= 0, got {config.max_new_tokens}")
    limit = model.config.max_position_embeddings
    if input_ids.shape[1] + config.max_new_tokens > limit:
        raise DataError(
            f"prompt of {input_ids.shape[1]} tokens + max_new_tokens={config.max_new_tokens} "
            f"exceeds max_position_embeddings={limit}"
        )


@torch.inference_mode()
def generate(
    model: Llama, input_ids: torch.Tensor, config: GenerationConfig
) -> tuple[torch.Tensor, DecodeStats]:
    """Decode up to ``max_new_tokens`` tokens one target call at a time."""
    check_prompt(model, input_ids, config)
    stats = DecodeStats()
    start = time.perf_counter()
    gen = torch.Generator().manual_seed(config.seed)
    cache = model.setup_cache(1, input_ids.shape[1] + config.max_new_tokens)
    new: list[torch.Tensor] = []
    logits = model(input_ids, cache=cache)[:, -1]  # prefill: (1, V)
    stats.target_calls += 1
    for _ in range(config.max_new_tokens):
        probs = logits_to_probs(logits, config.temperature, config.top_k, config.top_p)
        token = sample(probs, gen).view(1, 1)  # (1, 1)
        new.append(token)
        stats.accepted_per_step.append(1)
        if config.eos_token_id is not None and token.item() == config.eos_token_id:
            break
        if len(new) == config.max_new_tokens:
            break  # the last token needs no forward pass of its own
        logits = model(token, cache=cache)[:, -1]
        stats.target_calls += 1
    stats.tokens = len(new)
    stats.wall_s = time.perf_counter() - start
    ids = torch.cat(new, dim=1) if new else input_ids.new_zeros((1, 0))
    return ids, stats
