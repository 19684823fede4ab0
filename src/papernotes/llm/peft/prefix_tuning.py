"""Prefix-Tuning: a trainable key/value prefix in every attention layer of a frozen Llama.

Paper: Li & Liang 2021, "Prefix-Tuning: Optimizing Continuous Prompts for Generation",
arXiv:2101.00190.

Idea: prepend P virtual tokens to every layer's keys and values. The language model stays
frozen; only the prefix activations P_θ (L × layers·2·Hkv·D) are trained, about 0.1 % of
the parameters. Each query attends to [prefix ; text], so the prefix steers every layer
(§4.2: h_i = P_θ[i] for prefix positions, LM_φ(z_i, h_<i) otherwise).

Reparameterisation (§4.3): optimising P_θ directly is unstable, so during training
    P_θ = MLP_θ(P′_θ)        MLP = Linear(E → encoder_hidden_size) → tanh → Linear(→ layers·2·Hkv·D)
with a smaller table P′_θ (L × E). After training only P_θ is needed: :func:`collapse_prefix`
evaluates the MLP once and keeps the table, with identical outputs.

RoPE: prefix keys are stored activations, so no rotation is applied to them (they play the
role of a KV cache, like HF's ``past_key_values``). The text then starts at position P, as
with HF + peft: a prefixed model's first text token is rotated by position P, not 0. Since
attention scores under RoPE depend only on relative offsets between rotated vectors, and
the prefix keys are free parameters, the offset is learned along with them.

Layout and interop: the table has peft's layout (``view(L, layers·2, Hkv, D)``; entry 2i is
layer i's keys, 2i+1 its values), so :func:`save_prefix` writes a peft ``PREFIX_TUNING``
adapter directory (``prompt_embeddings``) that ``peft.PeftModel.from_pretrained`` loads
on our HF export, and the tests compare logits against peft's prefix tuning.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from papernotes.core.checkpoint import check_state_dict, load_weights, save_weights
from papernotes.core.files import atomic_write_dir
from papernotes.errors import CheckpointError, ConfigError
from papernotes.llm.model import hf_io
from papernotes.llm.model.config import LlamaConfig
from papernotes.llm.model.llama import Llama, PrefixKV

logger = logging.getLogger(__name__)

CONFIG_FILE = hf_io.PEFT_CONFIG_NAME
WEIGHTS_FILE = hf_io.PEFT_WEIGHTS_NAME
TABLE_KEY = "prompt_embeddings"


@dataclass
class PrefixTuningConfig:
    num_virtual_tokens: int = 10  # prefix length L (the paper's choice for table-to-text)
    prefix_projection: bool = True  # train through the MLP reparameterisation (§4.3)
    encoder_hidden_size: int = 512  # the MLP's hidden width (the paper uses 512 for table-to-text)

    def __post_init__(self) -> None:
        if self.num_virtual_tokens <= 0:
            raise ConfigError(f"num_virtual_tokens must be >= 1, got {self.num_virtual_tokens}")
        if self.prefix_projection and self.encoder_hidden_size <= 0:
            raise ConfigError(f"encoder_hidden_size must be >= 1, got {self.encoder_hidden_size}")


PRESETS: dict[str, PrefixTuningConfig] = {
    "paper": PrefixTuningConfig(),
    "tiny": PrefixTuningConfig(num_virtual_tokens=4, encoder_hidden_size=32),
}


class PrefixEncoder(nn.Module):
    """Produces the per-layer (k, v) prefix: from the MLP over P′ while training, or a stored table."""

    def __init__(self, model_config: LlamaConfig, config: PrefixTuningConfig) -> None:
        super().__init__()
        self.config = config
        self.num_layers = model_config.num_hidden_layers
        self.num_kv_heads = model_config.num_key_value_heads
        self.head_dim = model_config.head_dim
        width = self.num_layers * 2 * self.num_kv_heads * self.head_dim
        L = config.num_virtual_tokens
        if config.prefix_projection:
            self.embedding = nn.Embedding(L, model_config.hidden_size)  # P′ (L, E)
            self.transform: nn.Sequential | None = nn.Sequential(
                nn.Linear(model_config.hidden_size, config.encoder_hidden_size),
                nn.Tanh(),
                nn.Linear(config.encoder_hidden_size, width),
            )
        else:
            self.embedding = nn.Embedding(L, width)  # P_θ itself (L, layers·2·Hkv·D)
            self.transform = None

    @property
    def num_virtual_tokens(self) -> int:
        return self.config.num_virtual_tokens

    def table(self) -> torch.Tensor:
        """P_θ (L, layers·2·Hkv·D) in peft's layout."""
        if self.transform is None:
            return self.embedding.weight
        return self.transform(self.embedding.weight)

    def forward(self) -> PrefixKV:
        """One (k, v) per layer, each (1, Hkv, L, D): Llama.forward broadcasts it over the batch."""
        L, Hkv, D = self.num_virtual_tokens, self.num_kv_heads, self.head_dim
        kv = self.table().view(L, 2 * self.num_layers, Hkv, D).permute(1, 2, 0, 3)  # (layers·2, Hkv, L, D)
        return [(kv[2 * i].unsqueeze(0), kv[2 * i + 1].unsqueeze(0)) for i in range(self.num_layers)]

    def collapse(self) -> None:
        """Replace the MLP by the table it computes (§4.3: only P_θ is kept after training)."""
        if self.transform is None:
            return
        with torch.no_grad():
            table = self.table().detach().clone()  # (L, layers·2·Hkv·D)
        self.embedding = nn.Embedding.from_pretrained(table, freeze=False)
        self.transform = None


def apply_prefix_tuning(model: Llama, config: PrefixTuningConfig) -> PrefixEncoder:
    """Freeze ``model`` and attach a trainable prefix as ``model.prefix_encoder``; return it.

    Every later forward (training, ``generate`` and the other decoders) sees the prefix. Raises
    ConfigError if the prefix leaves no room for text in the context, or if one is already attached.
    """
    if model.prefix_encoder is not None:
        raise ConfigError("the model already has a prefix; remove_prefix_tuning(model) first")
    limit = model.config.max_position_embeddings
    if config.num_virtual_tokens >= limit:
        raise ConfigError(
            f"num_virtual_tokens={config.num_virtual_tokens} leaves no room for text: the prefix takes "
            f"positions 0..{config.num_virtual_tokens - 1} of a context of max_position_embeddings={limit}"
        )
    weight = model.lm_head.weight
    model.requires_grad_(False)
    encoder = PrefixEncoder(model.config, config).to(device=weight.device, dtype=weight.dtype)
    model.prefix_encoder = encoder
    n = sum(p.numel() for p in encoder.parameters())
    logger.info("prefix tuning: L=%d, %d trainable parameters", config.num_virtual_tokens, n)
    return encoder


def remove_prefix_tuning(model: Llama) -> PrefixEncoder | None:
    """Detach and return the model's prefix (the model is the plain base again)."""
    encoder = model.prefix_encoder
    model.prefix_encoder = None
    return encoder


def collapse_prefix(model: Llama) -> None:
    """Collapse the attached prefix's MLP into its table; outputs are unchanged."""
    if isinstance(model.prefix_encoder, PrefixEncoder):
        model.prefix_encoder.collapse()


def save_prefix(model: Llama, directory: str | Path, base_model_name_or_path: str | None = None) -> Path:
    """Write the attached prefix as a peft PREFIX_TUNING adapter directory (atomically).

    Like peft, the stored tensor is the table P_θ (the MLP is evaluated, not saved).
    """
    encoder = model.prefix_encoder
    if not isinstance(encoder, PrefixEncoder):
        raise ConfigError("save_prefix: the model has no prefix (call apply_prefix_tuning first)")
    with torch.no_grad():
        table = encoder.table().detach().contiguous()
    peft_config = {
        "peft_type": "PREFIX_TUNING",
        "task_type": "CAUSAL_LM",
        "num_virtual_tokens": encoder.num_virtual_tokens,
        "token_dim": encoder.num_kv_heads * encoder.head_dim,  # peft's GQA convention: Hkv·D
        "num_attention_heads": encoder.num_kv_heads,
        "num_layers": encoder.num_layers,
        "num_transformer_submodules": 1,
        "prefix_projection": encoder.config.prefix_projection,
        "encoder_hidden_size": encoder.config.encoder_hidden_size,
        "inference_mode": True,  # the stored table is P_θ itself, whichever way it was trained
        "base_model_name_or_path": base_model_name_or_path,
    }
    directory = Path(directory)
    with atomic_write_dir(directory) as tmp:
        save_weights(tmp / WEIGHTS_FILE, {TABLE_KEY: table}, metadata={"format": "pt"})
        (tmp / CONFIG_FILE).write_text(json.dumps(peft_config, indent=2) + "\n")
    return directory


def load_prefix(model: Llama, directory: str | Path) -> PrefixEncoder:
    """Attach the prefix stored in a peft PREFIX_TUNING directory (ours or peft's) to ``model``.

    The prefix is attached collapsed (a table), frozen model, trainable table. Raises
    CheckpointError for a config that is not prefix tuning or disagrees with the model or the
    weights, and ShapeMismatchError naming the tensor and both shapes.
    """
    directory = Path(directory)
    raw, path = hf_io.read_peft_config(directory, "PREFIX_TUNING")
    cfg = model.config
    wanted = {
        "num_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_key_value_heads,
        "token_dim": cfg.num_key_value_heads * cfg.head_dim,
        "num_transformer_submodules": 1,
    }
    for key, value in wanted.items():
        if raw.get(key, value) != value:
            raise CheckpointError(f"{path}: {key}={raw[key]} but this model needs {value}")
    try:
        config = PrefixTuningConfig(
            num_virtual_tokens=int(raw["num_virtual_tokens"]),
            prefix_projection=False,  # a stored table: no MLP to rebuild
            encoder_hidden_size=int(raw.get("encoder_hidden_size") or 1),
        )
    except (KeyError, TypeError, ValueError, ConfigError) as exc:
        raise CheckpointError(f"{path}: invalid prefix-tuning config: {exc}") from exc
    weights_path = directory / WEIGHTS_FILE
    state = load_weights(weights_path)
    width = cfg.num_hidden_layers * 2 * cfg.num_key_value_heads * cfg.head_dim
    expected = {TABLE_KEY: torch.empty(config.num_virtual_tokens, width, device="meta")}
    check_state_dict(
        expected, state, weights_path, f"num_virtual_tokens={config.num_virtual_tokens} in {path}"
    )
    encoder = apply_prefix_tuning(model, config)
    with torch.no_grad():
        encoder.embedding.weight.copy_(state[TABLE_KEY])
    return encoder
