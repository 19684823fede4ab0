"""Medusa: extra decoding heads and tree-based parallel decoding (training: ``medusa_train``).

Paper: Cai et al. 2024, "Medusa: Simple LLM Inference Acceleration Framework with Multiple
Decoding Heads", arXiv:2401.10774.

Idea: K light heads read the base model's last hidden state h_t; head k (0-based) guesses
the token k + 2 positions ahead (the base's own head gives t + 1). Each round, the heads'
top-k guesses are arranged in a candidate tree (``medusa_tree.py``), the base verifies every
node in one forward with tree attention, and the longest accepted path is kept. Head k is

    p_t^(k) = softmax(W2^(k) · (SiLU(W1^(k) · h_t + b1^(k)) + h_t))           (eq. 1)

with W1, b1 zero-initialised (the block starts as the identity) and W2 a copy of the base
``lm_head``, so at init every head predicts what the base head predicts. Medusa-1 trains the
heads on a frozen base with

    L = Σ_k λ_k · CE(p_t^(k), y_{t+k+2}),    λ_k = 0.8^k                      (eq. 2)

Acceptance: greedy (a candidate is accepted iff it equals the base argmax at its parent,
which makes the output identical to greedy decoding) or typical acceptance (Sec. 2.3.1):

    accept x  iff  p(x) > min(ε, δ · exp(−H(p))),    ε = 0.09, δ = 0.3

Design: ``add_medusa_heads`` RETURNS the heads (like the MTP modules); they are not
registered on the base, whose ``state_dict`` stays HF-identical. The heads cast the hidden
state they read to their own dtype/device, so decoding keeps working after ``model.to(dtype)``
(cast the heads too to save memory). Only Medusa-1 (frozen base) is implemented.

Tests (``tests/llm/test_medusa.py``): zero-init heads equal the base head, no base gradients,
the 0.8^k weights against a hand computation, training raises head accuracy, greedy
``medusa_generate`` equals ``generate`` token for token (random and trained heads, greedy and
user trees), the tree mask against running each path alone, typical acceptance on hand-made
distributions, save/load round trip and errors.

Shapes: B batch, T tokens, E hidden size, V vocabulary, K heads, N tree nodes (root included).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from papernotes.core.checkpoint import atomic_write_file, check_state_dict, load_weights, save_weights
from papernotes.errors import CheckpointError, ConfigError, DataError
from papernotes.llm.generate import DecodeStats, GenerationConfig, check_prompt, emit_tokens
from papernotes.llm.llama import Llama
from papernotes.llm.llama_config import LlamaConfig
from papernotes.llm.medusa_tree import (
    MedusaTree,
    TreePath,
    build_tree,
    chain_tree,
    longest_accepted_path,
)
from papernotes.llm.sampling import logits_to_probs, sample
from papernotes.nn.kv_cache import KVCache

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "medusa_heads.safetensors"
CONFIG_FILE = "medusa_config.json"
IGNORE_INDEX = -100  # label value excluded from every cross-entropy (F.cross_entropy's default)
Batch = dict[str, torch.Tensor]


@dataclass
class MedusaConfig:
    """Medusa heads, training and decoding; defaults follow the paper and the official code."""

    num_heads: int = 4  # K; head k predicts the token k + 2 after the hidden state's own (official: 4)
    num_layers: int = 1  # residual SiLU blocks per head (official: 1)
    loss_decay: float = 0.8  # λ_k = loss_decay^k weights head k's cross-entropy (Medusa-1, eq. 2)
    top_k: int = 10  # ranks per head measured for the tree (the official trees read the top-10)
    tree_nodes: int = 63  # node budget of the greedy tree, root excluded (official 7B tree: 63)
    typical_epsilon: float = 0.09  # ε, the hard threshold of typical acceptance
    typical_delta: float = 0.3  # δ, scales exp(−entropy) in typical acceptance (official: sqrt(ε))

    def __post_init__(self) -> None:
        for name in ("num_heads", "num_layers", "top_k"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"MedusaConfig.{name} must be a positive integer, got {value!r}")
        if not isinstance(self.tree_nodes, int) or self.tree_nodes < 0:
            raise ConfigError(f"MedusaConfig.tree_nodes must be an integer >= 0, got {self.tree_nodes!r}")
        if not 0 < self.loss_decay <= 1:
            raise ConfigError(f"MedusaConfig.loss_decay must be in (0, 1], got {self.loss_decay}")
        if not 0 < self.typical_epsilon <= 1 or self.typical_delta < 0:
            raise ConfigError(
                "MedusaConfig: expected 0 < typical_epsilon <= 1 and typical_delta >= 0, got "
                f"{self.typical_epsilon}, {self.typical_delta}"
            )


PRESETS: dict[str, MedusaConfig] = {
    "medusa-1": MedusaConfig(),
    "tiny": MedusaConfig(num_heads=3, top_k=4, tree_nodes=12),
}


# --- heads -------------------------------------------------------------------------------------


class ResidualBlock(nn.Module):
    """h + SiLU(W h + b) (eq. 1). W and b start at zero, so the block starts as the identity."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden_size, hidden_size)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """(..., E) -> (..., E)."""
        return h + F.silu(self.linear(h))


class MedusaHead(nn.Module):
    """``num_layers`` residual blocks, then this head's own LM head (W2 of eq. 1)."""

    def __init__(self, base_config: LlamaConfig, num_layers: int) -> None:
        super().__init__()
        E, V = base_config.hidden_size, base_config.vocab_size
        self.blocks = nn.ModuleList(ResidualBlock(E) for _ in range(num_layers))
        self.lm_head = nn.Linear(E, V, bias=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """(..., E) -> logits (..., V)."""
        for block in self.blocks:
            h = block(h)
        return self.lm_head(h)


class MedusaHeads(nn.Module):
    """The K heads. ``tree`` optionally holds the candidate tree (paths) that decoding uses by default."""

    def __init__(self, base_config: LlamaConfig, config: MedusaConfig) -> None:
        super().__init__()
        self.config = config
        self.base_config = base_config  # shapes of the base the heads were built for
        self.heads = nn.ModuleList(
            MedusaHead(base_config, config.num_layers) for _ in range(config.num_heads)
        )
        self.tree: list[TreePath] | None = None  # set by calibrate_tree or load_medusa_heads

    @property
    def num_heads(self) -> int:
        return len(self.heads)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final-norm hidden states (..., E) -> logits (K, ..., V); head k predicts t + k + 2 from h_t.

        The hidden state is cast to the heads' dtype and device first: the base may have been
        cast (``model.to(dtype)``) without the heads.
        """
        weight = self.heads[0].lm_head.weight
        hidden = hidden.to(device=weight.device, dtype=weight.dtype)
        return torch.stack([head(hidden) for head in self.heads])  # (K, ..., V)


def add_medusa_heads(model: Llama, config: MedusaConfig) -> MedusaHeads:
    """Fresh heads for ``model`` in its dtype and on its device: zero residual blocks, copied LM heads.

    The heads are returned, not registered on ``model`` (see the module docstring). The base is
    left as it is; :func:`train_medusa` freezes it.
    """
    heads = MedusaHeads(model.config, config)
    weight = model.lm_head.weight
    heads.to(device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        for head in heads.heads:
            head.lm_head.weight.copy_(weight)  # a copy, never a tie: each head trains its own
    return heads


def check_heads_fit(model: Llama, heads: MedusaHeads) -> None:
    for name in ("hidden_size", "vocab_size"):
        ours, theirs = getattr(heads.base_config, name), getattr(model.config, name)
        if ours != theirs:
            raise ConfigError(f"Medusa heads were built for {name}={ours}, the model has {theirs}")


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
    probs = logits_to_probs(logits[last], config.temperature, config.top_k, config.top_p)  # (V,)
    return int(sample(probs, generator)), hidden[last]


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
    stats = DecodeStats()
    start_time = time.perf_counter()
    generator = torch.Generator().manual_seed(config.seed)
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
    stats.target_calls += 1
    if config.max_new_tokens == 0:  # as generate: the prefill runs, nothing is emitted
        stats.wall_s = time.perf_counter() - start_time
        return input_ids.new_zeros((1, 0)), stats
    probs = logits_to_probs(logits[0, -1], config.temperature, config.top_k, config.top_p)
    root, last_hidden = int(sample(probs, generator)), hidden[0, -1]  # t_T and h_{T-1}
    emitted, new = [root], []
    n = T  # the root's position; the cache holds positions < n
    while True:
        if emit_tokens(emitted, new, config, stats):  # eos and max_new_tokens cut exactly
            break
        # accepted candidates + the next root must fit in what max_new_tokens still allows
        step_tree = full_tree.truncate(config.max_new_tokens - len(new) - 1)
        head_logits = heads(last_hidden) if step_tree.num_nodes > 1 else None  # (K, V)
        tree_tokens = generate_candidates(root, head_logits, step_tree)  # (N,)
        tree_logits, tree_hidden = tree_decode(model, cache, tree_tokens, step_tree)  # (N, V), (N, E)
        stats.target_calls += 1
        path = evaluate_posterior(
            tree_logits,
            tree_tokens,
            step_tree,
            config,
            heads.config.typical_epsilon,
            heads.config.typical_delta,
        )
        for depth in range(1, step_tree.depth + 1):
            stats.record_position(depth - 1, depth < len(path))
        root, last_hidden = update_inputs(cache, n, path, tree_logits, tree_hidden, config, generator)
        emitted = [*tree_tokens[path[1:]].tolist(), root]
        n += len(path)
    stats.tokens = len(new)
    stats.wall_s = time.perf_counter() - start_time
    return torch.tensor([new], dtype=input_ids.dtype, device=input_ids.device), stats


# --- save / load ----------------------------------------------------------------------------------


def save_medusa_heads(heads: MedusaHeads, directory: str | Path) -> Path:
    """Write ``medusa_heads.safetensors`` and ``medusa_config.json`` into ``directory`` (created if needed).

    Only head weights are stored, so the directory may be the base's HF directory (the names
    do not collide with ``model.safetensors``/``config.json``). The JSON holds the MedusaConfig
    fields, the tree (paths, or null) and the base shapes. Each file is written atomically.
    """
    directory = Path(directory)
    with atomic_write_file(directory / WEIGHTS_FILE) as tmp:
        save_weights(tmp, heads.state_dict(), metadata={"format": "pt"})
    meta = {
        **dataclasses.asdict(heads.config),
        "tree": [list(path) for path in heads.tree] if heads.tree is not None else None,
        "base_hidden_size": heads.base_config.hidden_size,  # informative; shapes are checked per tensor
        "base_vocab_size": heads.base_config.vocab_size,
        "torch_dtype": str(heads.heads[0].lm_head.weight.dtype).removeprefix("torch."),
    }
    with atomic_write_file(directory / CONFIG_FILE) as tmp:
        tmp.write_text(json.dumps(meta, indent=2) + "\n")
    return directory


def load_medusa_heads(model: Llama, directory: str | Path) -> MedusaHeads:
    """Load heads written by :func:`save_medusa_heads` for ``model`` (in its dtype and on its device).

    Raises CheckpointError for a missing/unreadable file, a bad config or tree, missing or
    unexpected tensors, and ShapeMismatchError naming the tensor and both shapes when a weight
    does not fit the base.
    """
    directory = Path(directory)
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        raise CheckpointError(f"{config_path} does not exist (expected save_medusa_heads output)")
    try:
        meta = json.loads(config_path.read_text())
        fields = {f.name for f in dataclasses.fields(MedusaConfig)}
        config = MedusaConfig(**{key: value for key, value in meta.items() if key in fields})
        tree = meta.get("tree")
        paths = build_tree(tree).paths if tree is not None else None
        if paths and max(map(len, paths)) > config.num_heads:
            raise ConfigError(f"the stored tree is deeper than num_heads={config.num_heads}")
    except (json.JSONDecodeError, TypeError, AttributeError, ConfigError) as exc:
        raise CheckpointError(f"{config_path}: not a valid Medusa config: {exc}") from exc
    heads = MedusaHeads(model.config, config)
    expected = heads.state_dict()
    state = load_weights(directory / WEIGHTS_FILE)  # CheckpointError naming the file
    check_state_dict(
        expected,
        state,
        directory / WEIGHTS_FILE,
        f"num_heads={config.num_heads}, num_layers={config.num_layers}",
    )
    weight = model.lm_head.weight
    heads.load_state_dict(state)
    heads.to(device=weight.device, dtype=weight.dtype)
    heads.tree = list(paths) if paths is not None else None
    logger.info("loaded %d Medusa heads from %s", config.num_heads, directory)
    return heads
