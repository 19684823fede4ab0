"""Prompt lookup decoding: draft by copying what followed the last n-gram earlier in the text.

Method: Saxena 2023, "Prompt Lookup Decoding" (github.com/apoorvumang/prompt-lookup-decoding),
the n-gram retrieval draft behind HF's ``generate(prompt_lookup_num_tokens=...)``; verification
is speculative decoding's (Leviathan et al. 2023, arXiv:2211.17192).

Idea: in summarising, editing, code or any repetitive text the continuation often already
appears in the context. Take the last n tokens (n = max_ngram_size down to 1), find their most
recent earlier occurrence in prompt + generated text, and propose the (up to γ) tokens that
followed it. No draft model: drafting is a search, almost free. With no match the step is a
plain one-token step.

The draft is a deterministic function of the context, so its distribution is one-hot:
q_i = δ(x_i). The speculative rule min(1, p/q) then accepts x_i with probability p_i(x_i), and
on a rejection norm(max(0, p_i − δ(x_i))) is p_i with x_i removed and renormalised. That is the
very same ``verify_draft`` fed one-hot q, so sampled output is distributed exactly as the
target's and greedy output equals plain greedy output.

Tests (``tests/llm/generation/test_lookup.py``): the n-gram search on hand-made sequences; greedy output
equals ``generate``'s on a repetitive prompt while accepting drafts (α > 0, τ > 1); sampled
output stays in the target's support.

Shapes: L committed tokens, γ draft tokens, V vocabulary, T prompt length, N = max_new_tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from papernotes.errors import ConfigError
from papernotes.llm.generation.generate import DecodeLoop, DecodeStats, GenerationConfig, check_prompt
from papernotes.llm.generation.sampling import verify_draft
from papernotes.llm.model.llama import Llama


def find_lookup_draft(tokens: torch.Tensor, num_draft_tokens: int, max_ngram_size: int = 3) -> torch.Tensor:
    """Tokens (L,) -> up to γ drafts: what followed the most recent earlier match of the last n-gram.

    Tries n = max_ngram_size, ..., 1 and returns at the first n with a match; the proposal may
    be shorter than γ when the match sits near the end. Empty (0,) when nothing matches.
    """
    L = tokens.shape[0]
    for n in range(min(max_ngram_size, L - 1), 0, -1):
        pattern = tokens[L - n :]  # (n,)
        windows = tokens[: L - 1].unfold(0, n, 1)  # (L − n, n): every n-gram that has a successor
        starts = (windows == pattern).all(dim=1).nonzero().flatten()
        if starts.numel():
            follow = int(starts[-1]) + n  # the most recent match is the likeliest to continue alike
            return tokens[follow : follow + num_draft_tokens]
    return tokens.new_zeros(0)


@torch.inference_mode()
def lookup_generate(
    model: Llama,
    input_ids: torch.Tensor,
    config: GenerationConfig,
    num_draft_tokens: int = 4,
    max_ngram_size: int = 3,
) -> tuple[torch.Tensor, DecodeStats]:
    """Decode with n-gram lookup drafts of up to ``num_draft_tokens`` (γ) tokens per target call.

    Greedy output equals ``generate(model, ...)`` token for token; sampled output has its
    distribution. Stats as ``speculative_generate``: one ``accepted_per_step`` entry per target
    call and ``record_position`` for every proposed draft.
    """
    check_prompt(model, input_ids, config)
    if num_draft_tokens < 1:
        raise ConfigError(f"num_draft_tokens must be >= 1, got {num_draft_tokens}")
    if max_ngram_size < 1:
        raise ConfigError(f"max_ngram_size must be >= 1, got {max_ngram_size}")
    loop = DecodeLoop(config)
    T, N, V = input_ids.shape[1], config.max_new_tokens, model.config.vocab_size
    cache = model.setup_cache(1, T + N)
    seq = input_ids.new_zeros(1, T + N)  # committed tokens t_0 .. t_n
    seq[:, :T] = input_ids
    logits = model(input_ids, cache=cache)[0, -1]  # prefill: (V,)
    loop.stats.target_calls += 1
    if N == 0:
        return loop.result(input_ids)
    emitted = [loop.sample(logits)]
    n = T  # position of the newest committed token t_n; the cache holds positions < n
    while not loop.emit(emitted):  # eos and max_new_tokens cut exactly
        seq[:, n] = emitted[-1]
        # drafts + the bonus token must fit in max_new_tokens; no match -> a plain one-token step
        room = min(num_draft_tokens, N - len(loop.new) - 1)
        drafts = find_lookup_draft(seq[0, : n + 1], room, max_ngram_size)
        gamma = drafts.shape[0]
        q = F.one_hot(drafts, V).float()  # (γ, V): a deterministic draft is a one-hot distribution
        block = torch.cat([seq[:, n : n + 1], drafts.view(1, -1)], dim=1)  # [t_n, x_1 .. x_γ]: (1, γ + 1)
        logits = model(block, cache=cache)[0]  # (γ + 1, V)
        loop.stats.target_calls += 1
        # Leviathan et al. 2023, Alg. 1 with q = one-hot: accept x with prob p(x), else resample p \ {x}
        accepted, token = verify_draft(loop.probs(logits), q, drafts, loop.generator)
        for i in range(gamma):
            loop.stats.record_position(i, i < accepted)
        cache.crop(n + accepted + 1)  # keep t_n and the accepted drafts; drop the rejected tail
        seq[:, n + 1 : n + accepted + 1] = drafts[:accepted]
        emitted = [*drafts[:accepted].tolist(), token]
        n += accepted + 1
    return loop.result(input_ids)
