"""MTP self-speculative decoding: the modules draft, the main model verifies in one forward.

At inference the modules draft D tokens that the main model verifies in one forward (as in
speculative decoding, Leviathan et al. 2023, arXiv:2211.17192); greedy output is exactly the
main model's greedy output, sampled output follows its distribution exactly.

The modules and the shared head are in ``modules.py``. Shapes: E hidden size, V vocabulary, m drafts
in one step. Depth k = 1..D indexes the modules.
"""

from __future__ import annotations

import torch

from papernotes.errors import ConfigError
from papernotes.llm.generation.frequent_vocab import VocabHead
from papernotes.llm.generation.generate import DecodeLoop, DecodeStats, GenerationConfig, check_prompt
from papernotes.llm.generation.mtp.modules import MTPModules, _check_pair, _module_forward, shared_logits
from papernotes.llm.generation.sampling import logits_to_probs, sample, verify_draft
from papernotes.llm.model.llama import Llama
from papernotes.nn.kv_cache import KVCache


def _draft(
    model: Llama,
    modules: MTPModules,
    caches: list[KVCache],
    hidden: list[torch.Tensor],
    seq: torch.Tensor,
    n: int,
    num_drafts: int,
    config: GenerationConfig,
    generator: torch.Generator,
    head: VocabHead | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Drafts for t_{n+1} .. t_{n+m}, given committed tokens seq[:, :n + 1] and h^0 at positions < n.

    Module k at position j reads h^{k-1}_j and t_{j+k}. Its cache keeps only positions whose
    inputs are all committed (j + k <= n); every call feeds the positions from its cache's end up
    to n - 1, where tokens past t_n are the drafts d_1 .. d_{k-1} and h^{k-1} past the committed
    ones is this step's output of module k - 1, then crops the cache back to the committed part.
    So after any rollback the caches hold exactly what a full recomputation would, with no
    bookkeeping beyond ``crop``. ``hidden[k]`` (1, L, E) buffers h^k by position, read by module k+1.
    Returns draft ids (m,) and their draft distributions q (m, V).
    """
    drafts: list[torch.Tensor] = []
    probs: list[torch.Tensor] = []
    for k in range(1, num_drafts + 1):
        cache, start = caches[k - 1], caches[k - 1].length
        tokens = torch.cat([seq[:, : n + 1], *[d.view(1, 1) for d in drafts]], dim=1)  # (1, n + k)
        out = _module_forward(
            model,
            modules.layer_at(k),
            hidden[k - 1][:, start:n],
            tokens[:, start + k : n + k],
            start,
            cache,
        )  # h^k at positions start .. n - 1: (1, n - start, E)
        cache.crop(max(0, n - k + 1))  # keep positions j <= n - k: their inputs are all committed
        if k < len(hidden):
            hidden[k][:, start:n] = out  # positions past the committed ones are rewritten next step
        logits = shared_logits(model, out[0, -1], head)
        q = logits_to_probs(logits, config.temperature, config.top_k, config.top_p)
        drafts.append(sample(q, generator))  # t_{n+k} drafted from position n - 1
        probs.append(q)
    V = model.config.vocab_size
    if not drafts:
        return seq.new_zeros(0), torch.zeros(0, V, device=seq.device)
    return torch.stack(drafts), torch.stack(probs)  # (m,), (m, V)


@torch.inference_mode()
def mtp_generate(
    model: Llama,
    modules: MTPModules,
    input_ids: torch.Tensor,
    config: GenerationConfig,
    num_drafts: int | None = None,
    head: VocabHead | None = None,
) -> tuple[torch.Tensor, DecodeStats]:
    """Self-speculative decoding: the MTP modules draft, the main model verifies in one forward.

    Each step: the modules draft up to D tokens after the last emitted token t_n (fewer near
    ``max_new_tokens``); the main model reads [t_n, drafts] with its KV cache; the longest
    accepted prefix plus one token from the main model are emitted (``sampling.verify_draft``); the
    main cache is cropped to the emitted tokens. Greedy output equals ``generate``'s token for
    token; sampled output has the same distribution (not the same tokens for a seed).
    ``num_drafts`` (default D) may exceed D: the last module then drafts again from its own output state
    (a chain, as EAGLE's draft head). ``head`` restricts the drafts to frequent tokens (FR-Spec).
    Stats: ``record_position(k - 1, accepted)`` for every draft of depth k that was verified.
    """
    check_prompt(model, input_ids, config)
    _check_pair(model, modules)
    loop = DecodeLoop(config)
    T = input_ids.shape[1]
    length = T + config.max_new_tokens  # the last verified position is T + max_new_tokens - 2
    cache = model.setup_cache(1, length)
    chain = num_drafts or modules.config.num_drafts or modules.depth
    head = head if head is not None else modules.head(model)
    if chain < 1:
        raise ConfigError(f"num_drafts must be >= 1, got {chain}")
    caches = modules.setup_caches(length, levels=chain)
    E = model.config.hidden_size
    seq = input_ids.new_zeros(1, length)  # committed tokens t_0 .. t_n
    seq[:, :T] = input_ids
    logits, h = model(input_ids, cache=cache, return_hidden=True)  # prefill: (1, T, V), (1, T, E)
    loop.stats.target_calls += 1
    if config.max_new_tokens == 0:  # as generate: the prefill runs, nothing is emitted
        return loop.result(input_ids)
    hidden = [h.new_zeros(1, length, E) for _ in range(chain)]  # hidden[k]: h^k by position
    hidden[0][:, :T] = h
    emitted = [loop.sample(logits[0, -1])]
    n = T  # index of the newest committed token t_n; the main cache holds positions < n
    while not loop.emit(emitted):  # eos and max_new_tokens cut exactly
        seq[:, n] = emitted[-1]
        # drafts + the bonus token must fit in max_new_tokens
        count = min(chain, config.max_new_tokens - len(loop.new) - 1)
        drafts, q = _draft(model, modules, caches, hidden, seq, n, count, config, loop.generator, head)
        feed = torch.cat([seq[:, n : n + 1], drafts.view(1, -1)], dim=1)  # [t_n, d_1 .. d_m]: (1, m + 1)
        logits, h = model(feed, cache=cache, return_hidden=True)  # (1, m + 1, V), (1, m + 1, E)
        loop.stats.target_calls += 1
        accepted, bonus = verify_draft(loop.probs(logits[0]), q, drafts, loop.generator)  # p: (m + 1, V)
        for position in range(count):
            loop.stats.record_position(position, position < accepted)
        cache.crop(n + accepted + 1)  # keep t_n and the accepted drafts; drop the rejected tail
        hidden[0][:, n : n + accepted + 1] = h[:, : accepted + 1]
        seq[:, n + 1 : n + accepted + 1] = drafts[:accepted]
        emitted = [*drafts[:accepted].tolist(), bonus]
        n += accepted + 1
    return loop.result(input_ids)
