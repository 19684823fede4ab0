"""LoRA: low-rank adaptation of the Llama's linear layers.

Paper: Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models", arXiv:2106.09685.

Idea: keep a pre-trained weight W (out × in) frozen and learn a rank-r update
ΔW = B A with A (r × in) and B (out × r), so a layer computes (eq. 3)

    h = W x + (α / r) · B A x            (α / √r with rank-stabilised scaling, Kalajdzievski 2023)

B starts at zero, so the adapted model equals the base model at initialisation; A
starts like an ``nn.Linear`` weight (Kaiming-uniform, a = √5), or N(0, 1/r) with
``init="gaussian"``. Only A and B train, which shrinks the trainable parameters and the
optimizer state by orders of magnitude. After training ΔW merges into W, and the merged
model costs exactly what the base model costs at inference (no added latency, §4).

Interoperability: field names follow ``peft.LoraConfig``, and :func:`save_adapter`
writes peft's adapter layout (``adapter_config.json`` + ``adapter_model.safetensors``,
keys ``base_model.model.<module path>.lora_A.weight``). The tests load our adapters with
``peft.PeftModel.from_pretrained`` on our HF export, load peft's adapters into our model,
and compare logits both ways.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from papernotes.core.checkpoint import check_state_dict, load_weights, save_weights
from papernotes.core.files import atomic_write_dir
from papernotes.errors import CheckpointError, ConfigError
from papernotes.llm.model import hf_io

logger = logging.getLogger(__name__)

CONFIG_FILE = hf_io.PEFT_CONFIG_NAME
WEIGHTS_FILE = hf_io.PEFT_WEIGHTS_NAME
KEY_PREFIX = "base_model.model."  # peft prefixes module paths with its wrappers' attribute names
ALL_LINEAR = "all-linear"
INITS = ("kaiming", "gaussian")


@dataclass
class LoraConfig:
    r: int = 8  # rank of ΔW = B A
    lora_alpha: float = 16  # ΔW is scaled by lora_alpha / r
    lora_dropout: float = 0.0  # dropout on the adapter's input (the frozen path sees x unchanged)
    # module-name suffixes to adapt ("q_proj" matches every layer's self_attn.q_proj), "all-linear"
    # (every Linear except lm_head, as in peft), or one regular expression matched against full names
    target_modules: tuple[str, ...] | str = ("q_proj", "v_proj")
    bias: str = "none"  # only "none": Llama's linear layers have no bias
    init: str = "kaiming"  # A's init: "kaiming" (peft's default, like nn.Linear) or "gaussian" (N(0, 1/r))
    use_rslora: bool = False  # scale by lora_alpha / sqrt(r) instead (Kalajdzievski 2023)

    def __post_init__(self) -> None:
        if isinstance(self.target_modules, list):
            self.target_modules = tuple(self.target_modules)
        if not isinstance(self.r, int) or self.r <= 0:
            raise ConfigError(f"LoRA rank r must be a positive integer, got {self.r!r}")
        if self.lora_alpha <= 0:
            raise ConfigError(f"lora_alpha must be > 0, got {self.lora_alpha}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if self.bias != "none":
            raise ConfigError(
                f"bias={self.bias!r} is not supported; Llama's linear layers have no bias, use 'none'"
            )
        if self.init not in INITS:
            raise ConfigError(f"init must be one of {INITS}, got {self.init!r}")
        if not self.target_modules:
            raise ConfigError("target_modules is empty; name at least one module, or use 'all-linear'")

    @property
    def scaling(self) -> float:
        return self.lora_alpha / (math.sqrt(self.r) if self.use_rslora else self.r)


PRESETS: dict[str, LoraConfig] = {
    "paper": LoraConfig(),  # Wq and Wv, r = 8 (Hu et al. §7.1 adapt Wq, Wv with small r)
    "all-linear": LoraConfig(target_modules=ALL_LINEAR),
    "tiny": LoraConfig(r=2, lora_alpha=4),
}


class LoraLinear(nn.Module):
    """A frozen linear layer plus a trainable low-rank update: W x + b + s · B A dropout(x).

    Holds the wrapped layer's own ``weight`` (and ``bias``) Parameters, so state-dict names
    stay ``<path>.weight`` and no memory is copied; A and B are ``lora_A``/``lora_B`` as in peft.
    """

    def __init__(self, base: nn.Linear, config: LoraConfig) -> None:
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.bias = base.bias
        # the wrapped module itself, unregistered (a tuple, not a submodule: the state dict keeps its
        # names): merge_and_unload puts it back, with its class and any per-shape kernel plan it carries
        self._unwrapped = (base,)
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        self.config = config  # save_adapter reads it back
        self.scaling = config.scaling
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Linear(self.in_features, config.r, bias=False, **factory)
        self.lora_B = nn.Linear(config.r, self.out_features, bias=False, **factory)
        self.lora_dropout = nn.Dropout(config.lora_dropout) if config.lora_dropout > 0 else nn.Identity()
        self.merged = False  # True while ΔW is folded into self.weight
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.config.init == "gaussian":
            nn.init.normal_(self.lora_A.weight, std=1.0 / self.config.r)
        else:  # the nn.Linear default, as in the reference loralib and peft
            nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)  # ΔW = 0: the adapted model starts as the base model

    def delta_weight(self) -> torch.Tensor:
        """ΔW = s · B A (out × in), computed in fp32 and returned in the weight's dtype."""
        delta = self.lora_B.weight.float() @ self.lora_A.weight.float() * self.scaling  # (out, in)
        return delta.to(self.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in) -> (..., out)."""
        out = F.linear(x, self.weight, self.bias)
        if self.merged:
            return out
        return out + self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scaling

    def merge(self) -> None:
        if not self.merged:
            with torch.no_grad():
                self.weight += self.delta_weight()
            self.merged = True

    def unmerge(self) -> None:
        if self.merged:
            with torch.no_grad():
                self.weight -= self.delta_weight()
            self.merged = False

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, r={self.config.r}, scaling={self.scaling:g}"


def _linear_names(model: nn.Module) -> list[str]:
    return [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]


def _matches(name: str, target: tuple[str, ...] | str) -> bool:
    if target == ALL_LINEAR:
        return name.rsplit(".", 1)[-1] != "lm_head"  # peft keeps the output layer out of all-linear
    if isinstance(target, str):
        return re.fullmatch(target, name) is not None  # peft: a single string is a regex on the full name
    return any(name == t or name.endswith("." + t) for t in target)


def lora_layers(model: nn.Module) -> dict[str, LoraLinear]:
    """The LoRA-wrapped layers of ``model`` by module path (empty if LoRA was not applied)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoraLinear)}


def apply_lora(model: nn.Module, config: LoraConfig) -> list[str]:
    """Wrap every ``nn.Linear`` matching ``config.target_modules`` in place; return their paths.

    Freezes every parameter of ``model`` and leaves only the LoRA A/B matrices trainable.
    Raises ConfigError if nothing matches (listing the Linear names that exist) or if the
    model already has LoRA layers.
    """
    if lora_layers(model):
        raise ConfigError("the model already has LoRA layers; apply_lora once (or merge_and_unload first)")
    linear = _linear_names(model)
    targets = [name for name in linear if _matches(name, config.target_modules)]
    if not targets:
        leaves = sorted({name.rsplit(".", 1)[-1] for name in linear})
        raise ConfigError(
            f"target_modules={config.target_modules!r} matched no nn.Linear; the model's Linear modules are "
            f"named {', '.join(leaves)} (full paths like {linear[0] if linear else '-'})"
        )
    model.requires_grad_(False)
    for name in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, LoraLinear(getattr(parent, child), config))
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info("LoRA r=%d on %d modules: %d trainable parameters", config.r, len(targets), n_train)
    return targets


def merge_lora(model: nn.Module) -> None:
    """Fold ΔW into every adapted weight (W ← W + s·BA); forwards then skip the adapter path."""
    for layer in lora_layers(model).values():
        layer.merge()


def unmerge_lora(model: nn.Module) -> None:
    """Undo :func:`merge_lora` (W ← W − s·BA), so training can continue."""
    for layer in lora_layers(model).values():
        layer.unmerge()


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Merge and put back the layer each LoRA layer wrapped: the base architecture, no overhead.

    The merged weight is the wrapped layer's own Parameter (merged in place), so the layer comes back
    as it was, with its class: a ``fast_linear.Linear`` keeps its kernel plan, which a fresh
    ``nn.Linear`` would lose.
    """
    for name, layer in lora_layers(model).items():
        layer.merge()
        parent_name, _, child = name.rpartition(".")
        (original,) = layer._unwrapped
        original.weight, original.bias = layer.weight, layer.bias  # the merged Parameters, no copy
        setattr(model.get_submodule(parent_name), child, original)
    return model


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """LoRA tensors under peft's key names (``base_model.model.<path>.lora_A.weight``)."""
    state = {}
    for name, layer in lora_layers(model).items():
        state[f"{KEY_PREFIX}{name}.lora_A.weight"] = layer.lora_A.weight.detach()
        state[f"{KEY_PREFIX}{name}.lora_B.weight"] = layer.lora_B.weight.detach()
    return state


def save_adapter(model: nn.Module, directory: str | Path, base_model_name_or_path: str | None = None) -> Path:
    """Write a peft LoRA adapter directory (atomically): adapter_config.json + adapter_model.safetensors.

    Unmerged weights are saved; a merged model is unmerged for the copy and merged back.
    """
    layers = lora_layers(model)
    if not layers:
        raise ConfigError("save_adapter: the model has no LoRA layers (call apply_lora first)")
    config = next(iter(layers.values())).config
    merged = [layer for layer in layers.values() if layer.merged]
    for layer in merged:  # A and B never change on merge; this keeps the saved W-free state exact
        layer.unmerge()
    state = {k: v.contiguous() for k, v in adapter_state_dict(model).items()}
    for layer in merged:
        layer.merge()
    leaves = sorted({name.rsplit(".", 1)[-1] for name in layers})
    peft_config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": config.r,
        "lora_alpha": config.lora_alpha,
        "lora_dropout": config.lora_dropout,
        # the leaf names actually adapted: peft matches them as suffixes, exactly as we did
        "target_modules": config.target_modules if isinstance(config.target_modules, str) else leaves,
        "bias": "none",
        "init_lora_weights": True if config.init == "kaiming" else "gaussian",
        "use_rslora": config.use_rslora,
        "use_dora": False,
        "fan_in_fan_out": False,
        "modules_to_save": None,
        "layers_to_transform": None,
        "rank_pattern": {},
        "alpha_pattern": {},
        "inference_mode": True,
        "base_model_name_or_path": base_model_name_or_path,
    }
    directory = Path(directory)
    with atomic_write_dir(directory) as tmp:
        save_weights(tmp / WEIGHTS_FILE, state, metadata={"format": "pt"})
        (tmp / CONFIG_FILE).write_text(json.dumps(peft_config, indent=2) + "\n")
    return directory


# peft options that change the math; an adapter using them would load into the wrong function
_UNSUPPORTED = {
    "use_dora": (False, None),
    "fan_in_fan_out": (False, None),
    "modules_to_save": (None, []),
    "layers_to_transform": (None, []),
    "rank_pattern": ({}, None),
    "alpha_pattern": ({}, None),
    "bias": ("none", None),
}


def read_adapter_config(directory: str | Path) -> LoraConfig:
    """The LoraConfig stored in a peft adapter directory; CheckpointError if it is not a usable LoRA."""
    raw, path = hf_io.read_peft_config(directory, "LORA")
    for key, allowed in _UNSUPPORTED.items():
        if key in raw and raw[key] not in allowed:
            raise CheckpointError(f"{path}: {key}={raw[key]!r} is not supported (expected {allowed[0]!r})")
    init = raw.get("init_lora_weights", True)
    target = raw.get("target_modules") or ()
    try:
        return LoraConfig(
            r=raw["r"],
            lora_alpha=raw.get("lora_alpha", 8),  # peft's default when the field is absent
            lora_dropout=raw.get("lora_dropout", 0.0),
            target_modules=target if isinstance(target, str) else tuple(target),
            init="gaussian" if init == "gaussian" else "kaiming",
            use_rslora=bool(raw.get("use_rslora", False)),
        )
    except (KeyError, ConfigError) as exc:
        raise CheckpointError(f"{path}: invalid LoRA config: {exc}") from exc


def _normalise_key(key: str) -> str:
    """peft key -> ours: drop the wrapper prefix and any adapter name (``lora_A.default.weight``)."""
    key = key.removeprefix(KEY_PREFIX)
    return re.sub(r"\.(lora_[AB])\.[^.]+\.weight$", r".\1.weight", key)


def load_adapter(model: nn.Module, directory: str | Path) -> list[str]:
    """Load a peft LoRA adapter directory into ``model``; apply LoRA first if the model has none.

    Returns the adapted module paths. Raises CheckpointError when the config and the weights
    disagree (rank, or which modules), and ShapeMismatchError naming the tensor and both shapes
    when the adapter was trained for a different base.
    """
    directory = Path(directory)
    config = read_adapter_config(directory)
    weights_path = directory / WEIGHTS_FILE
    state = {_normalise_key(k): v for k, v in load_weights(weights_path).items()}
    for key, tensor in state.items():
        rank_dim = 0 if key.endswith("lora_A.weight") else 1
        if tensor.dim() != 2 or tensor.shape[rank_dim] != config.r:
            raise CheckpointError(
                f"{weights_path}: {key} has shape {tuple(tensor.shape)}, which disagrees with "
                f"r={config.r} in {directory / CONFIG_FILE}"
            )
    if not lora_layers(model):
        apply_lora(model, config)
    layers = lora_layers(model)
    expected = {}
    for name, layer in layers.items():
        expected[f"{name}.lora_A.weight"] = layer.lora_A.weight
        expected[f"{name}.lora_B.weight"] = layer.lora_B.weight
    check_state_dict(
        expected, state, weights_path, f"the LoRA layers of target_modules={config.target_modules!r}"
    )
    with torch.no_grad():
        for name, layer in layers.items():
            was_merged = layer.merged
            layer.unmerge()
            layer.lora_A.weight.copy_(state[f"{name}.lora_A.weight"])
            layer.lora_B.weight.copy_(state[f"{name}.lora_B.weight"])
            if was_merged:
                layer.merge()
    return list(layers)
