"""Llama 3 hyper-parameters with Hugging Face's field names, presets, and config.json I/O.

``LlamaConfig.to_hf_dict`` / ``from_hf_dict`` read and write the ``config.json`` of an HF
Llama directory (both the transformers 4.x ``rope_theta``/``rope_scaling`` keys and the
5.x ``rope_parameters``). ``PRESETS`` holds ``tiny`` for tests, papernotes' own small
models trained by ``papernotes reproduce``, and the published Llama 3 shapes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from papernotes.errors import ConfigError
from papernotes.nn.rope import check_rope_scaling


@dataclass
class LlamaConfig:
    """Hyper-parameters with HF's field names; defaults are Llama-3-8B."""

    vocab_size: int = 128256  # tiktoken-based vocabulary of Llama 3
    hidden_size: int = 4096  # E, the residual stream width
    intermediate_size: int = 14336  # F, the SwiGLU hidden width
    num_hidden_layers: int = 32  # decoder layers
    num_attention_heads: int = 32  # H, query heads
    num_key_value_heads: int = 8  # Hkv, GQA key/value heads (H % Hkv == 0)
    head_dim: int = 128  # D, per-head width (need not equal E / H)
    rms_norm_eps: float = 1e-5  # eps inside RMSNorm's square root
    rope_theta: float = 500000.0  # RoPE base θ
    rope_scaling: dict[str, Any] | None = None  # None or {"rope_type": "llama3", factor, ...} (Llama 3.1+)
    max_position_embeddings: int = 8192  # longest sequence (positions 0 .. M-1)
    tie_word_embeddings: bool = False  # lm_head shares embed_tokens' weight (Llama 3.2 1B/3B)
    initializer_range: float = 0.02  # std of the normal init of linear and embedding weights (HF's)
    bos_token_id: int | None = 128000  # <|begin_of_text|>
    eos_token_id: int | list[int] | None = 128001  # <|end_of_text|> (instruct models list several)

    def __post_init__(self) -> None:
        for name in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "head_dim",
            "max_position_embeddings",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"LlamaConfig.{name} must be a positive integer, got {value!r}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(
                f"LlamaConfig.num_attention_heads={self.num_attention_heads} must be a multiple of "
                f"num_key_value_heads={self.num_key_value_heads} (grouped-query attention)"
            )
        if self.head_dim % 2:
            raise ConfigError(f"LlamaConfig.head_dim must be even for RoPE, got {self.head_dim}")
        for name in ("rms_norm_eps", "rope_theta", "initializer_range"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"LlamaConfig.{name} must be a positive number, got {value!r}")
        check_rope_scaling(self.rope_scaling, "LlamaConfig.rope_scaling")
        if self.rope_scaling is not None:  # a private copy: presets must not share one mutable dict
            self.rope_scaling = dict(self.rope_scaling)

    def to_hf_dict(self) -> dict[str, Any]:
        """The ``config.json`` contents HF's ``LlamaConfig`` (and vLLM) expect."""
        return {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_act": "silu",
            "attention_bias": False,
            "attention_dropout": 0.0,
            "mlp_bias": False,
            "pretraining_tp": 1,
            **dataclasses.asdict(self),
        }

    @classmethod
    def from_hf_dict(cls, data: dict[str, Any], source: str = "config") -> LlamaConfig:
        """Build from an HF ``config.json`` dict (transformers 4.x or 5.x layout).

        Keys we do not need are ignored; the ones we need are validated, and features we
        do not implement (biases, other activations or RoPE types) raise ConfigError.
        """
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a JSON object, got {type(data).__name__}")
        expected = {"model_type": "llama", "hidden_act": "silu", "attention_bias": False, "mlp_bias": False}
        for key, value in expected.items():
            if key in data and data[key] != value:
                raise ConfigError(f"{source}: {key}={data[key]!r} is not supported; expected {value!r}")
        required = (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
        )
        missing = [key for key in required if data.get(key) is None]
        if missing:
            raise ConfigError(f"{source}: missing required field(s) {missing}")
        kwargs = {key: data[key] for key in required}
        kwargs["num_key_value_heads"] = data.get("num_key_value_heads") or data["num_attention_heads"]
        kwargs["head_dim"] = data.get("head_dim") or _ratio(data, source)
        theta, scaling = _rope_fields(data, source)
        kwargs.update(rope_theta=theta, rope_scaling=scaling)
        defaults = {f.name: f.default for f in dataclasses.fields(cls)}
        for key in (
            "rms_norm_eps",
            "max_position_embeddings",
            "initializer_range",
            "bos_token_id",
            "eos_token_id",
        ):
            kwargs[key] = data.get(key, defaults[key])
        kwargs["tie_word_embeddings"] = bool(data.get("tie_word_embeddings", False))  # HF's default
        try:
            return cls(**kwargs)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from exc


def _ratio(data: dict[str, Any], source: str) -> int:
    """HF's fallback head_dim = hidden_size / num_attention_heads."""
    if data["hidden_size"] % data["num_attention_heads"]:
        raise ConfigError(
            f"{source}: no head_dim given and hidden_size is not a multiple of num_attention_heads"
        )
    return data["hidden_size"] // data["num_attention_heads"]


def _rope_fields(data: dict[str, Any], source: str) -> tuple[float, dict[str, Any] | None]:
    """(rope_theta, rope_scaling) from either transformers 4.x keys or 5.x ``rope_parameters``."""
    params = data.get("rope_parameters")
    if isinstance(params, dict):  # transformers 5.x folds θ into rope_parameters
        theta = params.get("rope_theta", data.get("rope_theta", 10000.0))
        scaling = {k: v for k, v in params.items() if k != "rope_theta"}
    else:
        theta, scaling = data.get("rope_theta", 10000.0), data.get("rope_scaling")
    if scaling is not None:
        scaling = dict(scaling)
        if "type" in scaling and "rope_type" not in scaling:  # pre-4.45 spelling
            scaling["rope_type"] = scaling.pop("type")
        if scaling.get("rope_type", "default") == "default":
            scaling = None
    if not isinstance(theta, int | float):
        raise ConfigError(f"{source}: rope_theta must be a number, got {theta!r}")
    return float(theta), scaling


PRESETS: dict[str, LlamaConfig] = {
    "tiny": LlamaConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        # original context 64 so that all three branches of the llama3 rule apply at D = 16
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        },
        max_position_embeddings=128,
        bos_token_id=1,
        eos_token_id=2,
    ),
    # papernotes' own small models, trained by `papernotes reproduce` on the embedded corpus
    # (vocab_size and special ids come from the trained tokenizer): quick size, then full size
    "pn-small": LlamaConfig(
        vocab_size=4096,
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
    ),
    # the draft for speculative decoding: same tokenizer, a fraction of pn-small's per-token cost
    "pn-draft": LlamaConfig(
        vocab_size=4096,
        hidden_size=128,
        intermediate_size=344,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=64,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
    ),
    "pn-base": LlamaConfig(
        vocab_size=8192,
        hidden_size=512,
        intermediate_size=1376,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=64,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
    ),
    "llama3-8b": LlamaConfig(),
    "llama3.2-1b": LlamaConfig(
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=64,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 32.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        max_position_embeddings=131072,
        tie_word_embeddings=True,
    ),
}
