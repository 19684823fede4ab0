"""Multi-token prediction (MTP) modules: config, the modules, the shared output head, save/load.

Losses and training wrappers are in ``loss.py``, self-speculative decoding in ``decode.py``.

Paper: DeepSeek-AI 2024, "DeepSeek-V3 Technical Report", arXiv:2412.19437, Sec. 2.2.

Idea: besides the next token, train D small sequential modules to predict the tokens 2..D+1
ahead. Module k keeps the causal chain: at position i it combines the depth-(k-1)
representation h_i^{k-1} with the embedding of token t_{i+k}, runs one transformer block and
predicts t_{i+k+1} through the main model's SHARED output head:

    h'_i^k = M_k [RMSNorm(h_i^{k-1}); RMSNorm(Emb(t_{i+k}))]        (eq. 21, M_k: 2E -> E)
    h^k_{1:T-k} = TRM_k(h'^k_{1:T-k})                                 (eq. 22, a causal block)
    P^k_{i+k+1} = OutHead(h_i^k) = softmax(W_out RMSNorm_final(h_i^k)) (eq. 23)
    L = L_main + (λ / D) Σ_k CrossEntropy(P^k, t_{k+2:T+1})           (eqs. 24-25)

Here h^0 is the main model's output representation, ``Llama.forward(return_hidden=True)``:
the POST-final-norm hidden state (HF's ``last_hidden_state``), so no hook into the base is
needed; module k's own ``hnorm`` re-normalises it. The embedding and the output head (final
norm + lm_head) are the main model's own tensors, not copies. Each module's block is a fresh
``LlamaDecoderLayer`` with its own weights.

Shapes: B batch, T tokens, E hidden size, V vocabulary, m drafts in one step. Depth k = 1..D
indexes the modules; ``modules.layers[k - 1]`` is module k.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from papernotes.core.checkpoint import load_weights
from papernotes.errors import CheckpointError, ConfigError
from papernotes.llm.generation.frequent_vocab import VocabHead
from papernotes.llm.model.config import LlamaConfig
from papernotes.llm.model.extra_weights import load_extra_weights, read_extra_config, save_extra_weights
from papernotes.llm.model.llama import Llama, LlamaDecoderLayer
from papernotes.nn.kv_cache import KVCache
from papernotes.nn.rmsnorm import RMSNorm

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "mtp_modules.safetensors"
CONFIG_FILE = "mtp_config.json"


@dataclass
class MTPConfig:
    """Multi-token prediction hyper-parameters; defaults are DeepSeek-V3's early pre-training."""

    depth: int = 1  # D, sequential modules; module k predicts the token k + 1 ahead (V3: 1)
    loss_weight: float = 0.3  # λ on the mean MTP loss: 0.3 for V3's first 10T tokens, then 0.1
    num_drafts: int = 0  # drafts per step when decoding (0: depth); past depth the last module chains

    def __post_init__(self) -> None:
        if not isinstance(self.depth, int) or isinstance(self.depth, bool) or self.depth < 1:
            raise ConfigError(f"MTPConfig.depth must be a positive integer, got {self.depth!r}")
        if not isinstance(self.loss_weight, int | float) or self.loss_weight < 0:
            raise ConfigError(f"MTPConfig.loss_weight must be a number >= 0, got {self.loss_weight!r}")
        if not isinstance(self.num_drafts, int) or self.num_drafts < 0:
            raise ConfigError(f"MTPConfig.num_drafts must be an integer >= 0, got {self.num_drafts!r}")


PRESETS: dict[str, MTPConfig] = {
    "deepseek-v3": MTPConfig(depth=1, loss_weight=0.3),
    "deepseek-v3-late": MTPConfig(depth=1, loss_weight=0.1),  # the last 4.8T tokens of V3
    "tiny": MTPConfig(depth=2, loss_weight=0.3),  # tests: depth 2 exercises the chain
}


class MTPModule(nn.Module):
    """One MTP module: ``hnorm``, ``enorm``, the projection ``eh_proj`` (M_k) and a transformer block.

    Parameter names follow DeepSeek-V3's checkpoints (``enorm``, ``hnorm``, ``eh_proj``) so an
    export can be mapped by name; the block is a ``LlamaDecoderLayer`` that reads slot 0 of the
    module's own one-layer KV cache.
    """

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        E = config.hidden_size
        self.hnorm = RMSNorm(E, config.rms_norm_eps)  # on h^{k-1}
        self.enorm = RMSNorm(E, config.rms_norm_eps)  # on Emb(t_{i+k})
        self.eh_proj = nn.Linear(2 * E, E, bias=False)  # M_k
        self.block = LlamaDecoderLayer(config, layer_idx=0)

    def forward(
        self,
        hidden: torch.Tensor,
        embeds: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        *,
        backend: str,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """h^{k-1} (B, T, E) and Emb(t_{i+k}) (B, T, E) at the same T positions -> h^k (B, T, E).

        With ``cache`` the T positions follow the cache's filled slots and the cache advances by T.
        """
        x = self.eh_proj(torch.cat((self.hnorm(hidden), self.enorm(embeds)), dim=-1))  # eq. 21: (B, T, E)
        T = x.shape[1]
        # causal is bottom-right aligned, so with a cache query i sees the cached slots and new keys <= i
        out = self.block(x, cos, sin, backend=backend, causal=T > 1, cache=cache)  # eq. 22
        if cache is not None:
            cache.advance(T)
        return out


class MTPModules(nn.Module):
    """The D modules. They hold no embedding or head: those stay the main model's (see ``shared_logits``)."""

    def __init__(self, base_config: LlamaConfig, config: MTPConfig) -> None:
        super().__init__()
        self.config = config
        self.base_config = base_config  # shapes of the main model the modules were built for
        self.layers = nn.ModuleList(MTPModule(base_config) for _ in range(config.depth))
        # the tokens the modules draft from (FR-Spec rows of the shared head); empty = all. Stored with them.
        self.register_buffer("vocab", torch.zeros(0, dtype=torch.long))

    def head(self, model: Llama) -> VocabHead | None:
        """The shared head restricted to ``vocab`` (None: the model's whole head)."""
        return VocabHead(model.lm_head.weight, self.vocab) if self.vocab.numel() else None

    @property
    def depth(self) -> int:
        return len(self.layers)

    def layer_at(self, depth: int) -> MTPModule:
        """The module for draft depth ``depth`` (1-based); past D the last module is applied again, feeding
        on its own output state (the chain drafter of EAGLE, Li et al. 2024, built from an MTP module)."""
        return self.layers[min(depth, self.depth) - 1]

    def setup_caches(self, max_length: int, levels: int | None = None) -> list[KVCache]:
        """One single-layer KVCache per draft depth (their attention also runs over past positions)."""
        weight = self.layers[0].eh_proj.weight
        cfg = self.base_config
        return [
            KVCache(1, 1, cfg.num_key_value_heads, max_length, cfg.head_dim, weight.dtype, weight.device)
            for _ in range(levels or self.depth)
        ]


def add_mtp_modules(model: Llama, config: MTPConfig) -> MTPModules:
    """Build fresh MTP modules for ``model``, in its dtype and on its device, and return them.

    The modules are returned, NOT registered on ``model``: the base keeps its HF-identical
    ``state_dict`` (``save_pretrained`` and HF parity are untouched). Consequences: cast or move
    both (``model.to(d); modules.to(d)``), and train both through ``MTPTrainingModel``.
    """
    modules = MTPModules(model.config, config)
    std = model.config.initializer_range
    for module in modules.modules():
        if isinstance(module, nn.Linear):  # the base's init: N(0, initializer_range); norms stay 1
            nn.init.normal_(module.weight, mean=0.0, std=std)
    weight = model.lm_head.weight
    return modules.to(device=weight.device, dtype=weight.dtype)


def _check_pair(model: Llama, modules: MTPModules) -> None:
    cfg, ref = model.config, modules.base_config
    fields = ("hidden_size", "num_key_value_heads", "head_dim", "num_attention_heads", "intermediate_size")
    for name in fields:
        if getattr(cfg, name) != getattr(ref, name):
            raise ConfigError(
                f"MTP modules were built for {name}={getattr(ref, name)}, the model has {getattr(cfg, name)}"
            )
    dtypes = (model.lm_head.weight.dtype, modules.layers[0].eh_proj.weight.dtype)
    if dtypes[0] != dtypes[1]:
        raise ConfigError(f"model is {dtypes[0]} but the MTP modules are {dtypes[1]}; cast both")


def shared_logits(model: Llama, hidden: torch.Tensor, head: VocabHead | None = None) -> torch.Tensor:
    """The main model's output head on an MTP representation: (..., E) -> (..., V) (eq. 23).

    With ``head`` (the main head's frequent-token rows, FR-Spec) only those tokens are scored and the
    rest get −inf: a draft then costs K / V of the head.
    """
    normed = model.model.norm(hidden)
    return model.lm_head(normed) if head is None else head.widen(head.logits(normed))


def _module_forward(
    model: Llama,
    module: MTPModule,
    hidden: torch.Tensor,
    tokens: torch.Tensor,
    start: int,
    cache: KVCache | None = None,
) -> torch.Tensor:
    """Module k at positions [start, start + T): h^{k-1} (B, T, E), ids t_{i+k} (B, T) -> h^k (B, T, E)."""
    B, T = tokens.shape
    positions = torch.arange(start, start + T, device=tokens.device).expand(B, T)  # (B, T)
    embeds = model.model.embed_tokens(tokens)  # (B, T, E), the shared embedding
    cos, sin = model.model.rotary_emb(positions, embeds.dtype)  # (B, T, head_dim) each
    return module(hidden, embeds, cos, sin, backend=model.attention, cache=cache)


def save_mtp_modules(modules: MTPModules, directory: str | Path) -> Path:
    """Write ``mtp_modules.safetensors`` and ``mtp_config.json`` into ``directory`` (created if needed).

    Only the modules' own weights are stored (the embedding and head belong to the base).
    """
    meta = {
        **dataclasses.asdict(modules.config),
        "base_hidden_size": modules.base_config.hidden_size,  # informative; shapes are checked per tensor
        "torch_dtype": str(modules.layers[0].eh_proj.weight.dtype).removeprefix("torch."),
    }
    return save_extra_weights(modules, directory, WEIGHTS_FILE, CONFIG_FILE, meta)


def load_mtp_modules(model: Llama, directory: str | Path) -> MTPModules:
    """Load modules written by :func:`save_mtp_modules` for ``model`` (in its dtype and device).

    Raises CheckpointError for a missing or unreadable file and missing or unexpected tensors,
    ShapeMismatchError naming the tensor and both shapes when a weight does not fit the base.
    """
    config, _ = read_extra_config(directory, CONFIG_FILE, MTPConfig, "save_mtp_modules")
    modules = add_mtp_modules(model, config)
    stored_vocab = load_weights(Path(directory) / WEIGHTS_FILE).get("vocab")
    if stored_vocab is not None:  # the buffer's length is the file's
        modules.vocab = torch.zeros_like(stored_vocab)
    load_extra_weights(modules, directory, WEIGHTS_FILE, model.lm_head.weight, f"depth={config.depth}")
    if modules.vocab.numel() and int(modules.vocab.max()) >= model.config.vocab_size:
        raise CheckpointError(
            f"{Path(directory) / WEIGHTS_FILE}: the modules' vocab holds token ids up to "
            f"{int(modules.vocab.max())}, the model has vocab_size={model.config.vocab_size}"
        )
    logger.info("loaded %d MTP modules from %s", config.depth, directory)
    return modules
