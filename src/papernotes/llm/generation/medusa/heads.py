"""Medusa: extra decoding heads for tree-based parallel decoding.

Decoding is in ``decode.py``, training in ``train.py``.

Paper: Cai et al. 2024, "Medusa: Simple LLM Inference Acceleration Framework with Multiple
Decoding Heads", arXiv:2401.10774.

Idea: K light heads read the base model's last hidden state h_t; head k (0-based) guesses
the token k + 2 positions ahead (the base's own head gives t + 1). Each round, the heads'
top-k guesses are arranged in a candidate tree (``tree.py``), the base verifies every
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

Tests (``tests/llm/generation/test_medusa.py``): zero-init heads equal the base head, no base gradients,
the 0.8^k weights against a hand computation, training raises head accuracy, greedy
``medusa_generate`` equals ``generate`` token for token (random and trained heads, greedy and
user trees), the tree mask against running each path alone, typical acceptance on hand-made
distributions, save/load round trip and errors.

Shapes: B batch, T tokens, E hidden size, V vocabulary, K heads, N tree nodes (root included).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from papernotes.core.checkpoint import load_weights
from papernotes.errors import CheckpointError, ConfigError
from papernotes.llm.generation.frequent_vocab import VocabHead
from papernotes.llm.generation.medusa.tree import (
    TreePath,
    build_tree,
)
from papernotes.llm.model.config import LlamaConfig
from papernotes.llm.model.extra_weights import load_extra_weights, read_extra_config, save_extra_weights
from papernotes.llm.model.llama import Llama

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "medusa_heads.safetensors"
CONFIG_FILE = "medusa_config.json"
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
    # False: each head owns a copy of the LM head (the paper). True: the heads reuse the base's head,
    # restricted to the tokens in MedusaHeads.vocab (FR-Spec), which saves K × V × E weights and, per
    # step, all but one pass over the head (see docs/medusa.md for what each costs)
    share_lm_head: bool = False

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
    """``num_layers`` residual blocks, then this head's own LM head (W2 of eq. 1) unless it is shared."""

    def __init__(self, base_config: LlamaConfig, num_layers: int, own_lm_head: bool = True) -> None:
        super().__init__()
        E, V = base_config.hidden_size, base_config.vocab_size
        self.blocks = nn.ModuleList(ResidualBlock(E) for _ in range(num_layers))
        self.lm_head = nn.Linear(E, V, bias=False) if own_lm_head else None

    def features(self, h: torch.Tensor) -> torch.Tensor:
        """(..., E) -> the blocks' output (..., E), what the LM head reads."""
        for block in self.blocks:
            h = block(h)
        return h

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """(..., E) -> logits (..., V) through this head's own LM head."""
        return self.lm_head(self.features(h))


class MedusaHeads(nn.Module):
    """The K heads. ``tree`` optionally holds the candidate tree (paths) that decoding uses by default."""

    def __init__(self, base_config: LlamaConfig, config: MedusaConfig) -> None:
        super().__init__()
        self.config = config
        self.base_config = base_config  # shapes of the base the heads were built for
        own = not config.share_lm_head
        self.heads = nn.ModuleList(
            MedusaHead(base_config, config.num_layers, own) for _ in range(config.num_heads)
        )
        # the tokens a shared head may propose (FR-Spec); empty = the whole vocabulary. Stored with the heads.
        self.register_buffer("vocab", torch.zeros(0, dtype=torch.long))
        self.shared_head: VocabHead | None = None  # set by bind(model) when config.share_lm_head
        self.tree: list[TreePath] | None = None  # set by calibrate_tree or load_medusa_heads

    @property
    def num_heads(self) -> int:
        return len(self.heads)

    def bind(self, model: Llama) -> None:
        """Shared heads read ``model``'s LM head (its ``vocab`` rows); heads with their own need nothing."""
        if self.config.share_lm_head:
            tokens = self.vocab if self.vocab.numel() else None
            self.shared_head = VocabHead(model.lm_head.weight, tokens)

    def forward(self, hidden: torch.Tensor, widen: bool = True) -> torch.Tensor:
        """Final-norm hidden states (..., E) -> logits (K, ..., V); head k predicts t + k + 2 from h_t.

        Shared heads score only their ``vocab`` tokens: ``widen=False`` returns those logits (K, ..., |vocab|)
        (for training), ``widen=True`` the full rows with −inf elsewhere (for candidate selection). The
        hidden state is cast to the heads' dtype and device first: the base may have been cast without them.
        """
        weight = self.heads[0].blocks[0].linear.weight if self.heads[0].blocks else None
        if weight is not None:
            hidden = hidden.to(device=weight.device, dtype=weight.dtype)
        if not self.config.share_lm_head:
            return torch.stack([head(hidden) for head in self.heads])  # (K, ..., V)
        if self.shared_head is None:
            raise ConfigError("shared Medusa heads must be bound to their base first: heads.bind(model)")
        logits = self.shared_head.logits(torch.stack([head.features(hidden) for head in self.heads]))
        return self.shared_head.widen(logits) if widen else logits


def add_medusa_heads(model: Llama, config: MedusaConfig, vocab: torch.Tensor | None = None) -> MedusaHeads:
    """Fresh heads for ``model`` in its dtype and on its device: zero residual blocks, copied LM heads
    (or, with ``config.share_lm_head``, the base's head over the ``vocab`` token ids, (K,), or all tokens).

    The heads are returned, not registered on ``model`` (see the module docstring). The base is
    left as it is; :func:`train_medusa` freezes it.
    """
    heads = MedusaHeads(model.config, config)
    weight = model.lm_head.weight
    heads.to(device=weight.device, dtype=weight.dtype)
    if config.share_lm_head:
        if vocab is not None:
            heads.vocab = vocab.to(device=weight.device, dtype=torch.long)
        heads.bind(model)
        return heads
    with torch.no_grad():
        for head in heads.heads:
            head.lm_head.weight.copy_(weight)  # a copy, never a tie: each head trains its own
    return heads


def check_heads_fit(model: Llama, heads: MedusaHeads) -> None:
    for name in ("hidden_size", "vocab_size"):
        ours, theirs = getattr(heads.base_config, name), getattr(model.config, name)
        if ours != theirs:
            raise ConfigError(f"Medusa heads were built for {name}={ours}, the model has {theirs}")


# --- save / load ----------------------------------------------------------------------------------


def save_medusa_heads(heads: MedusaHeads, directory: str | Path) -> Path:
    """Write ``medusa_heads.safetensors`` and ``medusa_config.json`` into ``directory`` (created if needed).

    The JSON holds the MedusaConfig fields, the tree (paths, or null) and the base shapes.
    """
    meta = {
        **dataclasses.asdict(heads.config),
        "tree": [list(path) for path in heads.tree] if heads.tree is not None else None,
        "base_hidden_size": heads.base_config.hidden_size,  # informative; shapes are checked per tensor
        "base_vocab_size": heads.base_config.vocab_size,
        "torch_dtype": str(next(heads.parameters()).dtype).removeprefix("torch."),
    }
    return save_extra_weights(heads, directory, WEIGHTS_FILE, CONFIG_FILE, meta)


def load_medusa_heads(model: Llama, directory: str | Path) -> MedusaHeads:
    """Load heads written by :func:`save_medusa_heads` for ``model`` (in its dtype and on its device).

    Raises CheckpointError for a missing/unreadable file, a bad config or tree, missing or
    unexpected tensors, and ShapeMismatchError naming the tensor and both shapes when a weight
    does not fit the base.
    """
    config, meta = read_extra_config(directory, CONFIG_FILE, MedusaConfig, "save_medusa_heads")
    tree = meta.get("tree")
    try:
        paths = build_tree(tree).paths if tree is not None else None
    except (TypeError, ConfigError) as exc:
        raise CheckpointError(f"{Path(directory) / CONFIG_FILE}: not a valid Medusa tree: {exc}") from exc
    if paths and max(map(len, paths)) > config.num_heads:
        raise CheckpointError(
            f"{Path(directory) / CONFIG_FILE}: the stored tree is deeper than num_heads={config.num_heads}"
        )
    heads = MedusaHeads(model.config, config)
    stored_vocab = load_weights(Path(directory) / WEIGHTS_FILE).get("vocab")
    if stored_vocab is not None:  # the buffer's length is the file's, not a fixed shape
        heads.vocab = torch.zeros_like(stored_vocab)
    hint = f"num_heads={config.num_heads}, num_layers={config.num_layers}"
    load_extra_weights(heads, directory, WEIGHTS_FILE, model.lm_head.weight, hint)
    if heads.vocab.numel() and int(heads.vocab.max()) >= model.config.vocab_size:
        raise CheckpointError(
            f"{Path(directory) / WEIGHTS_FILE}: the heads' vocab holds token ids up to "
            f"{int(heads.vocab.max())}, the model has vocab_size={model.config.vocab_size}"
        )
    heads.bind(model)
    heads.tree = list(paths) if paths is not None else None
    logger.info("loaded %d Medusa heads from %s", config.num_heads, directory)
    return heads
