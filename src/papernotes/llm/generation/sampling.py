"""From logits to a next token: temperature, top-k, top-p (nucleus), sampling, and draft verification.

Pure functions on tensors, in the manner of gpt-fast's ``logits_to_probs``. The
probability vector they return is exactly the distribution that is sampled, which
is what lossless methods (speculative decoding) need to compare p and q.

``verify_draft`` is the one acceptance rule of every lossless drafting method (speculative
decoding, prompt lookup, MTP): modified rejection sampling (Leviathan et al. 2023, arXiv
2211.17192; Chen et al. 2023, arXiv 2302.01318), tested against the target's exact
distribution with chi-square tests in ``tests/llm/generation/test_speculative.py``.

Shapes: logits (..., V) -> probs (..., V) in fp32.
"""

from __future__ import annotations

import torch

from papernotes.errors import ConfigError, DataError


def logits_to_probs(
    logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None
) -> torch.Tensor:
    """The sampling distribution. ``temperature == 0`` means greedy: a one-hot on the argmax."""
    if temperature < 0:
        raise ConfigError(f"temperature must be >= 0, got {temperature}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ConfigError(f"top_p must be in (0, 1], got {top_p}")
    if top_k is not None and top_k < 1:
        raise ConfigError(f"top_k must be >= 1, got {top_k}")
    logits = logits.float()  # softmax in fp32: low-precision logits lose the tail
    if temperature == 0:
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).float()
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]  # (..., 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if top_p is not None and top_p < 1.0:
        sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
        # keep the smallest prefix whose mass reaches top_p (the token that crosses it stays)
        drop_sorted = sorted_probs.cumsum(-1) - sorted_probs >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        probs = probs.masked_fill(drop, 0.0)
        probs = probs / probs.sum(-1, keepdim=True)
    return probs


def next_tokens(
    logits: torch.Tensor,
    temperature: float,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One token per row of ``logits`` (..., V) -> (...): a draw from :func:`logits_to_probs`'s distribution.

    Greedy (temperature 0) takes the argmax directly: what a draw from the one-hot gives, without a
    multinomial over the whole vocabulary (88 ms a step at 64 rows of SmolLM2's 49 k tokens on 2 cores).
    """
    if temperature == 0:
        logits_to_probs(logits[..., :1], temperature, top_k, top_p)  # the same argument checks, on 1 column
        return logits.argmax(-1)
    return sample(logits_to_probs(logits, temperature, top_k, top_p), generator)


def sample(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw one index per row of ``probs`` (..., V) -> (...)."""
    flat = probs.reshape(-1, probs.shape[-1])  # (N, V)
    return torch.multinomial(flat, 1, generator=generator).reshape(probs.shape[:-1])


def verify_draft(
    target_probs: torch.Tensor,
    draft_probs: torch.Tensor,
    draft_tokens: torch.Tensor,
    generator: torch.Generator | None = None,
) -> tuple[int, int]:
    """Modified rejection sampling over one block of drafts.

    ``target_probs`` (γ + 1, V): p_1..p_{γ+1}, the target's distributions after each prefix;
    ``draft_probs`` (γ, V): q_1..q_γ, the distributions the drafts were drawn from (one-hot for
    a deterministic draft such as prompt lookup); ``draft_tokens`` (γ,). γ may be 0.
    Returns ``(a, y)``: the first a drafts are accepted and y is the token emitted after them.
    """
    gamma = draft_tokens.shape[0]
    if target_probs.shape[0] != gamma + 1 or draft_probs.shape[0] != gamma:
        raise DataError(
            f"verify_draft: {gamma} draft tokens need target_probs ({gamma + 1}, V) and draft_probs "
            f"({gamma}, V), got {tuple(target_probs.shape)} and {tuple(draft_probs.shape)}"
        )
    if gamma:
        rows = torch.arange(gamma, device=draft_tokens.device)
        p = target_probs[rows, draft_tokens]  # (γ,) p_i(x_i)
        q = draft_probs[rows, draft_tokens]  # (γ,) q_i(x_i) > 0 because x_i was drawn from q_i
        if bool((q <= 0).any()):
            raise DataError(
                "verify_draft: a draft token has draft probability 0; q must be what it was drawn from"
            )
        u = torch.rand(gamma, generator=generator, device=p.device)  # U[0, 1)
        # Leviathan et al. 2023, Alg. 1: accept with prob min(1, p/q); u < p/q has exactly that probability
        rejected = (u * q >= p).nonzero()
        if rejected.numel():
            i = int(rejected[0])
            # the part of p that q under-covers; on a rejection p_i != q_i, so its mass is positive
            residual = (target_probs[i] - draft_probs[i]).clamp(min=0)
            mass = residual.sum()
            # guard: rounding can leave p_i(x_i) a hair below q_i(x_i) while p_i == q_i elsewhere
            residual = residual / mass if mass > 1e-12 else target_probs[i]
            return i, int(sample(residual, generator))
    return gamma, int(sample(target_probs[gamma], generator))  # all accepted: the bonus token from p_{γ+1}
