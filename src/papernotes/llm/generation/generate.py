"""Plain autoregressive decoding with the static KV cache: the baseline.

Every faster decoding method is timed against :func:`generate` in the same
process, and greedy methods must reproduce its output token for token.

Contract shared by all decoding methods (the README's "Architecture" section): a model, ``input_ids``
of shape (1, T) and a :class:`GenerationConfig`; returns the new ids (1, N) and a
:class:`DecodeStats`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from papernotes.errors import ConfigError, DataError
from papernotes.llm.generation.sampling import logits_to_probs, next_tokens
from papernotes.llm.model.llama import Llama
from papernotes.nn.kv_cache import KVCache


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


class DecodeLoop:
    """What every multi-token decoding loop shares: stats, clock, seeded sampler, the tokens emitted so far.

    A method prefills, counts the call (``stats.target_calls``), and while ``emit(tokens)`` says it is
    not done, drafts, verifies and emits again; ``result`` returns the new ids and the stats.
    """

    def __init__(self, config: GenerationConfig) -> None:
        self.config = config
        self.stats = DecodeStats()
        self.start = time.perf_counter()
        self.generator = torch.Generator().manual_seed(config.seed)
        self.new: list[int] = []

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        """logits (..., V) -> the sampling distribution (..., V) under temperature, top-k and top-p."""
        c = self.config
        return logits_to_probs(logits, c.temperature, c.top_k, c.top_p)

    def sample(self, logits: torch.Tensor) -> int:
        """One token from logits (V,), greedy when the temperature is 0."""
        c = self.config
        return int(next_tokens(logits, c.temperature, c.top_k, c.top_p, self.generator))

    def emit(self, tokens: Sequence[int]) -> bool:
        """Append one target call's tokens, cut exactly at EOS or ``max_new_tokens``; True when done.

        Records how many were kept in ``stats.accepted_per_step``. Every method that emits several
        tokens per target call goes through here, so all stop at the same token.
        """
        kept = 0
        for token in tokens:
            self.new.append(token)
            kept += 1
            if len(self.new) == self.config.max_new_tokens or token == self.config.eos_token_id:
                self.stats.accepted_per_step.append(kept)
                return True
        self.stats.accepted_per_step.append(kept)
        return False

    def result(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, DecodeStats]:
        """The new ids (1, N) in ``input_ids``' dtype and device, and the finished stats."""
        self.stats.tokens = len(self.new)
        self.stats.wall_s = time.perf_counter() - self.start
        ids = torch.tensor([self.new], dtype=input_ids.dtype).view(1, len(self.new))
        return ids.to(input_ids.device), self.stats


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
    stats = DecodeStats()
    start = time.perf_counter()
    new = list(stream(model, input_ids, config, stats))
    stats.tokens = len(new)
    stats.wall_s = time.perf_counter() - start
    ids = torch.tensor([new], dtype=input_ids.dtype) if new else input_ids.new_zeros((1, 0))
    return ids.to(input_ids.device), stats


def stream(
    model: Llama, input_ids: torch.Tensor, config: GenerationConfig, stats: DecodeStats | None = None
) -> Iterator[int]:
    """Yield each new token as soon as it is decoded (plain decoding; what :func:`generate` collects)."""
    check_prompt(model, input_ids, config)
    stats = stats if stats is not None else DecodeStats()
    gen = torch.Generator().manual_seed(config.seed)
    cache = model.setup_cache(1, input_ids.shape[1] + config.max_new_tokens)
    logits = model(input_ids, cache=cache)[:, -1]  # prefill: (1, V)
    stats.target_calls += 1
    for produced in range(1, config.max_new_tokens + 1):
        token = next_tokens(logits, config.temperature, config.top_k, config.top_p, gen).view(1, 1)  # (1, 1)
        stats.accepted_per_step.append(1)
        yield int(token)
        if config.eos_token_id is not None and token.item() == config.eos_token_id:
            return
        if produced == config.max_new_tokens:
            return  # the last token needs no forward pass of its own
        logits = model(token.to(input_ids.device), cache=cache)[:, -1]
        stats.target_calls += 1


def _prefix_length(model: Llama) -> int:
    """P, the number of prefix positions the model's attached prefix occupies (0 without one)."""
    if model.prefix_encoder is None:
        return 0
    return int(model.prefix_encoder()[0][0].shape[-2])


@torch.inference_mode()
def generate_batch(
    model: Llama,
    prompts: Sequence[Sequence[int]],
    config: GenerationConfig,
    pad_token_id: int = 0,
    observe: Observer | None = None,
    num_samples: int = 1,
) -> list[list[int]]:
    """Decode a batch of prompts of different lengths together; returns each row's new tokens.

    Prompts are left-padded so that every row's next token sits in the last column; the padding
    mask hides the pads and explicit positions count each row from its own first token, so every
    row decodes exactly as it would alone (tested against :func:`generate`). A row stops at EOS.
    For evaluation throughput (task metrics, rejection sampling); :func:`generate` is the timed baseline.

    ``num_samples`` rows decode from each prompt (rows i·n … i·n + n − 1 belong to prompt i): the
    prompt is prefilled once and its cache copied, which is the same as passing it n times, for
    1/n of the prefill. ``observe(logits (B, T, V), hidden (B, T, E), real (B, T) bool)`` sees every
    forward's outputs (prefill: all prompt columns; then one column per step), e.g. to keep the model's
    states for distillation; only then are the prompt columns' logits computed.
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise DataError("generate_batch needs at least one prompt, and every prompt needs >= 1 token")
    if config.max_new_tokens < 0:
        raise ConfigError(f"max_new_tokens must be >= 0, got {config.max_new_tokens}")
    if num_samples < 1:
        raise ConfigError(f"num_samples must be >= 1, got {num_samples}")
    if observe is not None and num_samples > 1:
        raise ConfigError("generate_batch: observe sees one row per prompt; use num_samples=1 with it")
    device = model.lm_head.weight.device
    B, T = len(prompts), max(len(p) for p in prompts)
    check_prompt(model, torch.zeros(1, T, dtype=torch.long), config)
    ids = torch.full((B, T), pad_token_id, dtype=torch.long, device=device)  # (B, T)
    mask = torch.zeros(B, T, dtype=torch.bool, device=device)  # (B, T): True = real token
    for row, prompt in enumerate(prompts):
        ids[row, T - len(prompt) :] = torch.tensor(list(prompt), device=device)
        mask[row, T - len(prompt) :] = True
    # a prefix sits at positions 0..P-1 (Llama.forward), so each row's first real token is at P
    positions = (_prefix_length(model) + mask.long().cumsum(1) - 1).clamp(min=0)  # (B, T)
    gen = torch.Generator().manual_seed(config.seed)
    cache = model.setup_cache(B, T + (config.max_new_tokens if num_samples == 1 else 0))
    if observe is None:  # only the last column's logits are used: the LM head skips the prompt's columns
        hidden = model(ids, position_ids=positions, attention_mask=mask, cache=cache, logits=False)
        logits = model.lm_head(hidden[:, -1])  # (B, V)
    else:
        logits = _forward(model, ids, positions, mask, cache, observe, mask)[:, -1]  # (B, V)
    if num_samples > 1:  # every prompt's row becomes num_samples rows: (B, …) -> (B·n, …)
        cache = cache.repeat_rows(num_samples, max_length=T + config.max_new_tokens)
        logits, mask, positions = (t.repeat_interleave(num_samples, dim=0) for t in (logits, mask, positions))
        B *= num_samples
    new: list[list[int]] = [[] for _ in range(B)]
    live = torch.arange(B)  # (b,): the output row of each batch row still decoding
    done = torch.zeros(B, dtype=torch.bool)  # (b,)
    last = positions[:, -1:]  # (b, 1)
    for step in range(config.max_new_tokens):
        tokens = next_tokens(
            logits.float().cpu(), config.temperature, config.top_k, config.top_p, gen
        )  # (b,)
        for row, token, finished in zip(live.tolist(), tokens.tolist(), done.tolist()):
            if not finished:
                new[row].append(token)
        if config.eos_token_id is not None:
            done |= tokens == config.eos_token_id
        if bool(done.all()) or step == config.max_new_tokens - 1:
            break
        if observe is None and 4 * int(done.sum()) >= len(done):
            # a quarter of the rows finished: drop them, so later steps compute only the live rows (an
            # observer sees a fixed batch, so with one the finished rows stay and are masked)
            keep = (~done).nonzero().squeeze(1)  # (b',)
            cache.keep_rows(keep)
            live, done, tokens = live[keep], done[keep], tokens[keep]
            mask, last = mask[keep.to(device)], last[keep.to(device)]
        b = len(live)
        mask = torch.cat((mask, mask.new_ones(b, 1)), dim=1)  # (b, C + 1)
        last = last + 1
        step_ids = tokens.view(b, 1).to(device)  # (b, 1)
        logits = _forward(model, step_ids, last, mask, cache, observe, ~done.view(b, 1).to(device))[:, -1]
    return new


Observer = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None]


def _forward(
    model: Llama,
    ids: torch.Tensor,
    positions: torch.Tensor,
    mask: torch.Tensor,
    cache: KVCache,
    observe: Observer | None,
    real: torch.Tensor,
) -> torch.Tensor:
    """One batched forward; the observer, if any, sees its logits, hidden states and real columns."""
    if observe is None:
        return model(ids, position_ids=positions, attention_mask=mask, cache=cache)
    logits, hidden = model(ids, position_ids=positions, attention_mask=mask, cache=cache, return_hidden=True)
    observe(logits, hidden, real)
    return logits
