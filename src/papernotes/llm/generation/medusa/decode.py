"""Medusa decoding: the four steps of a round (candidates, tree decoding, posterior, update) and the loop.

Paper: Cai et al. 2024, arXiv:2401.10774, Sec. 2.1-2.3. The heads are in ``heads.py``, the candidate
trees in ``tree.py``. Acceptance is greedy (a candidate is accepted iff it equals the base argmax at its
parent: the output equals greedy decoding token for token) or, when sampling, typical acceptance
(Sec. 2.3.1), which is *not* lossless: it changes the output distribution for speed.

Shapes: B batch, T tokens, E hidden size, V vocabulary, K heads, N tree nodes (root included).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from papernotes.errors import ConfigError, DataError
from papernotes.llm.generation.generate import DecodeLoop, DecodeStats, GenerationConfig, check_prompt
from papernotes.llm.generation.medusa.heads import MedusaHeads, check_heads_fit
from papernotes.llm.generation.medusa.tree import MedusaTree, build_tree, chain_tree, longest_accepted_path
from papernotes.llm.generation.sampling import logits_to_probs, next_tokens
from papernotes.llm.model.llama import Llama
from papernotes.nn.kv_cache import KVCache

logger = logging.getLogger(__name__)

# --- decoding: the four steps ---------------------------------------------------------------------


def typical_acceptance(
    probs: torch.Tensor, tokens: torch.Tensor, epsilon: float = 0.09, delta: float = 0.3
) -> torch.Tensor:
    """probs (..., V), tokens (...) -> bool (...): p(x) > min(ε, δ · exp(−H(p))) (Sec. 2.3.1).

    A confident p (low entropy) demands close to ε; a flat p lowers the bar, so plausible
    but non-argmax continuations pass where sampling would often pick them too.
    """
    p_x = probs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)  # (...)
    entropy = torch.special.entr(probs).sum(-1)  # H(p) = −Σ p log p with 0 · log 0 = 0
    threshold = torch.clamp(delta * torch.exp(-entropy), max=epsilon)  # min(ε, δ e^{−H})
    return p_x > threshold


def generate_candidates(root: int, head_logits: torch.Tensor | None, tree: MedusaTree) -> torch.Tensor:
    """Step 1. The tree's tokens (N,): the root (the base's next token), then node i = head (d−1)'s rank r.

    ``head_logits`` (K, V) are the heads at the hidden state that produced ``root``.
    """
    root_t = torch.tensor([root], dtype=torch.long)
    if tree.num_nodes == 1 or head_logits is None:
        return root_t
    top = head_logits[: tree.depth].topk(tree.top_k, dim=-1).indices.cpu()  # (depth, top_k)
    nodes = top[tree.depths[1:] - 1, tree.ranks[1:]]  # (N − 1,)
    return torch.cat((root_t, nodes))


def tree_decode(
    model: Llama, cache: KVCache, tree_tokens: torch.Tensor, tree: MedusaTree
) -> tuple[torch.Tensor, torch.Tensor]:
    """Step 2. One forward of all N nodes after the cache: base logits (N, V) and hidden (N, E).

    Node i sits at position C + depth_i and attends to the C cached tokens and its ancestors
    (Sec. 2.1.2). Raises DataError if the deepest node would pass max_position_embeddings or
    the nodes do not fit in the cache (truncate the tree: ``tree.truncate(depth)``).
    """
    C, N = cache.length, tree.num_nodes
    limit = model.config.max_position_embeddings
    if C + tree.depth >= limit:
        raise DataError(
            f"candidate tree of depth {tree.depth} after {C} tokens reaches position {C + tree.depth}, "
            f"beyond max_position_embeddings={limit}; truncate the tree to depth <= {limit - 1 - C}"
        )
    slots = C + N
    if slots > cache.max_length:
        raise DataError(
            f"candidate tree of {N} nodes after {C} cached tokens needs {slots} cache slots; "
            f"the cache has {cache.max_length}"
        )
    device = cache.device
    logits, hidden = model(
        tree_tokens.to(device)[None],
        position_ids=tree.position_ids(C).to(device),
        attention_mask=tree.attention_mask(C).to(device),
        cache=cache,
        return_hidden=True,
    )  # (1, N, V), (1, N, E)
    return logits[0], hidden[0]


def evaluate_posterior(
    logits: torch.Tensor,
    tree_tokens: torch.Tensor,
    tree: MedusaTree,
    config: GenerationConfig,
    epsilon: float = 0.09,
    delta: float = 0.3,
) -> list[int]:
    """Step 3. The longest accepted root-to-node path (node indices, root first).

    Node i's token is tested against the base's distribution at its parent: with
    ``temperature == 0`` it must equal the argmax (so the output is exactly greedy decoding);
    otherwise typical acceptance on the temperature/top-k/top-p distribution.
    """
    parents = tree.parents.clamp(min=0).to(logits.device)  # the root's own test is ignored
    tokens = tree_tokens.to(logits.device)
    if config.temperature == 0:
        accepted = tokens == logits.float().argmax(-1)[parents]  # (N,)
    else:
        probs = logits_to_probs(logits, config.temperature, config.top_k, config.top_p)  # (N, V)
        accepted = typical_acceptance(probs[parents], tokens, epsilon, delta)  # (N,)
    return longest_accepted_path(tree, accepted)


def update_inputs(
    cache: KVCache,
    start: int,
    path: Sequence[int],
    logits: torch.Tensor,
    hidden: torch.Tensor,
    config: GenerationConfig,
    generator: torch.Generator,
) -> tuple[int, torch.Tensor]:
    """Step 4. Keep the accepted path in the cache; the next root and its hidden state (E,).

    The cache's tree slots start + path move to start, start + 1, ... (their keys carry the
    right positions already: position = start + depth). The next root comes from the base
    logits at the last accepted node, whose hidden state feeds the heads next round.
    """
    cache.compact(start, list(path))
    last = path[-1]
    token = next_tokens(logits[last], config.temperature, config.top_k, config.top_p, generator)
    return int(token), hidden[last]


def resolve_tree(heads: MedusaHeads, tree: MedusaTree | Sequence[Sequence[int]] | None) -> MedusaTree:
    """The tree to decode with: ``tree``, else ``heads.tree``, else each head's top-1 (a chain)."""
    if tree is None:
        tree = heads.tree if heads.tree is not None else chain_tree(heads.num_heads)
    if not isinstance(tree, MedusaTree):
        tree = build_tree(tree)
    if tree.depth > heads.num_heads:
        raise ConfigError(
            f"candidate tree has depth {tree.depth}, but there are only {heads.num_heads} heads"
        )
    vocab = heads.base_config.vocab_size
    if tree.top_k > vocab:
        raise ConfigError(
            f"candidate tree reads rank {tree.top_k - 1}, but the vocabulary has {vocab} tokens"
        )
    return tree


@torch.inference_mode()
def medusa_generate(
    model: Llama,
    heads: MedusaHeads,
    input_ids: torch.Tensor,
    config: GenerationConfig,
    tree: MedusaTree | Sequence[Sequence[int]] | None = None,
) -> tuple[torch.Tensor, DecodeStats]:
    """Decode with Medusa heads: candidates → tree decoding → evaluate posterior → update inputs.

    ``tree`` is a MedusaTree or a list of paths (default: ``heads.tree``, else a top-1 chain).
    Each round emits the accepted candidates plus the base's next token. The tree is
    truncated explicitly every round to depth ≤ (tokens still allowed − 1), so no round
    verifies candidates that ``max_new_tokens`` would discard, and positions stay within
    T + max_new_tokens ≤ max_position_embeddings (checked up front by ``check_prompt``).
    Greedy output equals ``generate``'s token for token. Stats: ``accepted_per_step`` holds the
    tokens emitted from each call's logits (prefill included); ``record_position(d − 1, ok)``
    for each depth d verified in a round, ok = the accepted path reached depth d.
    """
    check_prompt(model, input_ids, config)
    check_heads_fit(model, heads)
    full_tree = resolve_tree(heads, tree)
    loop = DecodeLoop(config)
    cfg, T = model.config, input_ids.shape[1]
    weight = model.lm_head.weight
    # Slots are not positions: rejected branches occupy up to N slots until compacted away,
    # so the cache may be longer than max_position_embeddings (setup_cache would refuse).
    cache = KVCache(
        cfg.num_hidden_layers,
        1,
        cfg.num_key_value_heads,
        T + config.max_new_tokens + full_tree.num_nodes,
        cfg.head_dim,
        dtype=weight.dtype,
        device=weight.device,
    )
    logits, hidden = model(input_ids, cache=cache, return_hidden=True)  # prefill: (1, T, V), (1, T, E)
    loop.stats.target_calls += 1
    if config.max_new_tokens == 0:  # as generate: the prefill runs, nothing is emitted
        return loop.result(input_ids)
    root, last_hidden = loop.sample(logits[0, -1]), hidden[0, -1]  # t_T and h_{T-1}
    emitted = [root]
    n = T  # the root's position; the cache holds positions < n
    while not loop.emit(emitted):  # eos and max_new_tokens cut exactly
        # accepted candidates + the next root must fit in what max_new_tokens still allows
        step_tree = full_tree.truncate(config.max_new_tokens - len(loop.new) - 1)
        head_logits = heads(last_hidden) if step_tree.num_nodes > 1 else None  # (K, V)
        tree_tokens = generate_candidates(root, head_logits, step_tree)  # (N,)
        tree_logits, tree_hidden = tree_decode(model, cache, tree_tokens, step_tree)  # (N, V), (N, E)
        loop.stats.target_calls += 1
        path = evaluate_posterior(
            tree_logits,
            tree_tokens,
            step_tree,
            config,
            heads.config.typical_epsilon,
            heads.config.typical_delta,
        )
        for depth in range(1, step_tree.depth + 1):
            loop.stats.record_position(depth - 1, depth < len(path))
        root, last_hidden = update_inputs(cache, n, path, tree_logits, tree_hidden, config, loop.generator)
        emitted = [*tree_tokens[path[1:]].tolist(), root]
        n += len(path)
    return loop.result(input_ids)
