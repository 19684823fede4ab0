"""Weights that sit beside a base model: Medusa heads, MTP modules (one safetensors file + one JSON config).

Only the extra module's own tensors are stored, so the files may share the base's HF directory (their
names do not collide with ``model.safetensors`` / ``config.json``). Each file is written atomically. Loading
checks every tensor's name and shape against a freshly built module and raises CheckpointError (or
ShapeMismatchError, naming the tensor and both shapes) before anything is copied.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from papernotes.core.checkpoint import check_state_dict, load_weights, save_weights
from papernotes.core.files import atomic_write_file
from papernotes.errors import CheckpointError, ConfigError

ConfigT = TypeVar("ConfigT")


def save_extra_weights(
    module: nn.Module, directory: str | Path, weights_file: str, config_file: str, meta: dict[str, Any]
) -> Path:
    """Write ``module``'s tensors to ``directory/weights_file`` and ``meta`` to ``directory/config_file``."""
    directory = Path(directory)
    with atomic_write_file(directory / weights_file) as tmp:
        save_weights(tmp, module.state_dict(), metadata={"format": "pt"})
    with atomic_write_file(directory / config_file) as tmp:
        tmp.write_text(json.dumps(meta, indent=2) + "\n")
    return directory


def read_extra_config(
    directory: str | Path, config_file: str, config_type: type[ConfigT], writer: str
) -> tuple[ConfigT, dict[str, Any]]:
    """The dataclass ``config_type`` from the JSON's fields (other keys ignored), and the whole JSON."""
    path = Path(directory) / config_file
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist (expected {writer} output)")
    try:
        meta = json.loads(path.read_text())
        fields = {f.name for f in dataclasses.fields(config_type)}  # type: ignore[arg-type]
        config = config_type(**{key: value for key, value in meta.items() if key in fields})
    except (json.JSONDecodeError, TypeError, AttributeError, ConfigError) as exc:
        raise CheckpointError(f"{path}: not a valid {config_type.__name__}: {exc}") from exc
    return config, meta


def load_extra_weights(
    module: nn.Module, directory: str | Path, weights_file: str, like: torch.Tensor, hint: str
) -> None:
    """Load ``directory/weights_file`` into ``module`` and move it to ``like``'s device and dtype.

    ``hint`` names the settings that decide the expected tensors (shown when tensors are missing).
    """
    path = Path(directory) / weights_file
    state = load_weights(path)  # CheckpointError naming the file
    check_state_dict(module.state_dict(), state, path, hint)
    module.load_state_dict(state)
    module.to(device=like.device, dtype=like.dtype)
