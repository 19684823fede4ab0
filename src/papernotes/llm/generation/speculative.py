"""Speculative decoding with a draft model: exact sampling from the target, several tokens per call.

Papers: Leviathan, Kalman & Matias 2023, "Fast Inference from Transformers via Speculative
Decoding", arXiv:2211.17192; Chen et al. 2023, "Accelerating Large Language Model Decoding
with Speculative Sampling", arXiv:2302.01318.

Idea: a small draft model proposes γ tokens x_1..x_γ autoregressively (distributions q_i);
the target scores [last token, x_1..x_γ] in ONE forward, which gives its distributions
p_1..p_{γ+1}. Modified rejection sampling keeps a prefix of the drafts and adds one token,
so every target call emits between 1 and γ + 1 tokens and the output is distributed exactly
as sampling from the target one token at a time:

    accept x_i with probability min(1, p_i(x_i) / q_i(x_i))            (Leviathan Alg. 1)
    at the first rejection, emit y ~ norm(max(0, p_i − q_i)) and stop
    if all γ are accepted, emit a bonus token y ~ p_{γ+1}

For a token y at one position: P(emit y) = min(p, q)(y) + (1 − Σ min(p, q)) · max(0, p − q)(y) /
Σ max(0, p − q) = min(p, q)(y) + max(0, p − q)(y) = p(y), since Σ max(0, p − q) = 1 − Σ min(p, q).
With acceptance rate α the expected tokens per target call are (1 − α^{γ+1}) / (1 − α).

Greedy decoding (temperature 0) needs no special case: p and q are one-hot, so a draft is
accepted iff it is the target's argmax, and the residual is the target's one-hot argmax.

Tests (``tests/llm/generation/test_speculative.py``): greedy output equals ``generate``'s token for token;
a draft equal to the target accepts everything (α = 1, τ = γ + 1) and a never-agreeing draft
accepts nothing; the first emitted token of ``verify_draft`` and whole sampled sequences from
hand-made Markov models pass a chi-square test against the target's exact distribution.

Shapes: γ draft tokens, V vocabulary, T prompt length, N = max_new_tokens.
"""

from __future__ import annotations

import torch

from papernotes.errors import ConfigError
from papernotes.llm.generation.generate import DecodeLoop, DecodeStats, GenerationConfig, check_prompt
from papernotes.llm.generation.sampling import logits_to_probs, sample, verify_draft
from papernotes.llm.model.llama import Llama
from papernotes.nn.kv_cache import KVCache


def _draft_tokens(
    draft: Llama,
    cache: KVCache,
    seq: torch.Tensor,
    n: int,
    gamma: int,
    config: GenerationConfig,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample γ drafts after the committed tokens seq[:, :n + 1]; returns tokens (γ,) and q (γ, V).

    The draft cache may lag the committed tokens by one or more (after a fully accepted block it
    never saw x_γ; before the first call it holds nothing), so the first call feeds everything
    from the cache's end up to t_n.
    """
    feed = seq[:, cache.length : n + 1]  # (1, n + 1 − cache.length)
    tokens, probs = [], []
    for _ in range(gamma):
        logits = draft(feed, cache=cache)[0, -1]  # (V,)
        # the draft samples with the target's transformation: a greedy draft under a sampling
        # target is not lossless (transformers #32867); q must be what x was drawn from
        q = logits_to_probs(logits, config.temperature, config.top_k, config.top_p)  # (V,)
        x = sample(q, generator)
        tokens.append(x)
        probs.append(q)
        feed = x.view(1, 1)
    if not tokens:
        return seq.new_zeros(0), torch.zeros(0, draft.config.vocab_size, device=seq.device)
    return torch.stack(tokens), torch.stack(probs)  # (γ,), (γ, V)


def check_draft(target: Llama, draft: Llama, num_draft_tokens: int) -> None:
    """The draft must share the target's vocabulary, and γ must be at least 1."""
    if draft.config.vocab_size != target.config.vocab_size:
        raise ConfigError(
            f"draft vocab_size={draft.config.vocab_size} differs from target vocab_size="
            f"{target.config.vocab_size}; speculative decoding needs one shared tokenizer"
        )
    if num_draft_tokens < 1:
        raise ConfigError(f"num_draft_tokens must be >= 1, got {num_draft_tokens}")


@torch.inference_mode()
def speculative_generate(
    target: Llama,
    draft: Llama,
    input_ids: torch.Tensor,
    config: GenerationConfig,
    num_draft_tokens: int = 4,
    adaptive: bool = False,
) -> tuple[torch.Tensor, DecodeStats]:
    """Decode with ``draft`` proposing ``num_draft_tokens`` (γ) tokens per ``target`` call.

    Greedy output equals ``generate(target, ...)`` token for token; sampled output has the same
    distribution (not the same tokens for a seed: the random draws are used differently).
    ``adaptive``: HF's "heuristic" schedule, γ += 2 after a fully accepted block, else γ −= 1
    (at least 1), starting from ``num_draft_tokens``.
    Stats: one ``accepted_per_step`` entry per target call (the prefill emits the first token);
    ``record_position(i, accepted)`` for every verified draft at block position i.
    """
    check_prompt(target, input_ids, config)
    check_prompt(draft, input_ids, config)
    check_draft(target, draft, num_draft_tokens)
    loop = DecodeLoop(config)
    T, N = input_ids.shape[1], config.max_new_tokens
    # the last block's target forward ends at position T + N − 2 (see the γ cap below)
    target_cache = target.setup_cache(1, T + N)
    draft_cache = draft.setup_cache(1, T + N)
    seq = input_ids.new_zeros(1, T + N)  # committed tokens t_0 .. t_n
    seq[:, :T] = input_ids
    logits = target(input_ids, cache=target_cache)[0, -1]  # prefill: (V,)
    loop.stats.target_calls += 1
    if N == 0:  # as generate: the prefill runs, nothing is emitted
        return loop.result(input_ids)
    emitted = [loop.sample(logits)]
    n = T  # position of the newest committed token t_n; the target cache holds positions < n
    gamma_next = num_draft_tokens
    while not loop.emit(emitted):  # eos and max_new_tokens cut exactly
        seq[:, n] = emitted[-1]
        # the γ drafts and the bonus token must fit in max_new_tokens (and so in both caches)
        gamma = min(gamma_next, N - len(loop.new) - 1)
        drafts, q = _draft_tokens(draft, draft_cache, seq, n, gamma, config, loop.generator)
        block = torch.cat([seq[:, n : n + 1], drafts.view(1, -1)], dim=1)  # [t_n, x_1 .. x_γ]: (1, γ + 1)
        logits = target(block, cache=target_cache)[0]  # (γ + 1, V): one call scores every draft
        loop.stats.target_calls += 1
        accepted, token = verify_draft(loop.probs(logits), q, drafts, loop.generator)  # p: (γ + 1, V)
        for i in range(gamma):
            loop.stats.record_position(i, i < accepted)
        # roll back to the committed tokens: t_n and x_1..x_a (the draft never fed x_γ itself)
        target_cache.crop(n + accepted + 1)
        draft_cache.crop(min(draft_cache.length, n + accepted + 1))
        seq[:, n + 1 : n + accepted + 1] = drafts[:accepted]
        emitted = [*drafts[:accepted].tolist(), token]
        n += accepted + 1
        if adaptive and gamma > 0:
            gamma_next = gamma_next + 2 if accepted == gamma else max(1, gamma_next - 1)
    return loop.result(input_ids)
