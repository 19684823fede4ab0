"""Reading and writing Hugging Face model directories (config.json + safetensors).

Format (as written by transformers' ``save_pretrained``):
- ``config.json``: the model config; ``generation_config.json``: bos/eos for generation;
- weights in ``model.safetensors``, or in shards ``model-0000i-of-0000n.safetensors``
  listed by ``model.safetensors.index.json`` = {"metadata": {"total_size": bytes},
  "weight_map": {tensor name: shard file}}.

Only safetensors is read (never pickle). Every failure raises CheckpointError (or
ShapeMismatchError) naming the file or tensor. Writes are atomic: the directory is
built beside its destination and renamed into place. The model-specific checks (which
tensors, which shapes) come from the caller, e.g. ``papernotes.llm.model.llama``; the tests in
``tests/llm/model/test_llama_io.py`` round-trip through transformers' own loader and saver.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from papernotes.core.files import atomic_write_dir
from papernotes.errors import CheckpointError, ConfigError, ShapeMismatchError

CONFIG_NAME = "config.json"
GENERATION_CONFIG_NAME = "generation_config.json"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def read_config(path: str | Path) -> tuple[dict[str, Any], str]:
    """(contents of ``path/config.json``, the file's name for error messages)."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"model directory {path} does not exist (or is not a directory)")
    config_path = path / CONFIG_NAME
    if not config_path.is_file():
        raise CheckpointError(f"{config_path} is missing; an HF model directory needs a config.json")
    try:
        data = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{config_path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{config_path} must hold a JSON object, got {type(data).__name__}")
    return data, str(config_path)


PEFT_CONFIG_NAME = "adapter_config.json"  # peft's adapter directories
PEFT_WEIGHTS_NAME = "adapter_model.safetensors"


def read_peft_config(directory: str | Path, peft_type: str | None = None) -> tuple[dict[str, Any], Path]:
    """(contents of a peft ``adapter_config.json``, its path); CheckpointError unless it is readable
    and, when ``peft_type`` is given, of that type."""
    path = Path(directory) / PEFT_CONFIG_NAME
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"cannot read adapter config {path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path} must hold a JSON object, got {type(raw).__name__}")
    if peft_type is not None and raw.get("peft_type") != peft_type:
        raise CheckpointError(f"{path}: peft_type is {raw.get('peft_type')!r}, expected {peft_type!r}")
    return raw, path


def weight_files(path: Path) -> list[Path]:
    """The safetensors files of a directory: the single file, or every shard the index names."""
    single, index = path / WEIGHTS_NAME, path / INDEX_NAME
    if single.is_file():
        return [single]
    if not index.is_file():
        raise CheckpointError(f"{path} has no weights: expected {WEIGHTS_NAME} or {INDEX_NAME}")
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        names = sorted(set(weight_map.values()))
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(
            f"{index} is not a valid index (expected a JSON object with a weight_map)"
        ) from exc
    missing = [name for name in names if not (path / name).is_file()]
    if missing:
        raise CheckpointError(f"{index} lists shard file(s) that are missing: {missing}")
    return [path / name for name in names]


def _listing(names: list[str], limit: int = 10) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" ... ({len(names) - limit} more)" if len(names) > limit else "")


def read_weights(
    path: str | Path,
    expected: dict[str, tuple[int, ...]],
    optional: set[str] | frozenset[str] = frozenset(),
    ignore_suffixes: tuple[str, ...] = (),
    device: torch.device | str | None = None,
) -> dict[str, torch.Tensor]:
    """Load every tensor of an HF directory and check names and shapes against ``expected``.

    ``optional`` names may be absent (and are dropped if present: e.g. a tied lm_head);
    names ending in ``ignore_suffixes`` are skipped (e.g. old ``rotary_emb.inv_freq``).
    """
    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    source: dict[str, Path] = {}
    for file in weight_files(path):
        try:
            with safe_open(file, framework="pt", device=str(device) if device is not None else "cpu") as f:
                for name in f.keys():  # noqa: SIM118 - safe_open is not a Mapping
                    if name.endswith(ignore_suffixes) or name in optional:
                        continue
                    tensors[name], source[name] = f.get_tensor(name), file
        except CheckpointError:
            raise
        except Exception as exc:  # safetensors raises its own and OS errors for truncated/corrupt files
            raise CheckpointError(f"{file} is not a readable safetensors file: {exc}") from exc
    missing = sorted(set(expected) - set(tensors) - set(optional))
    if missing:
        raise CheckpointError(f"{path} is missing tensor(s): {_listing(missing)}")
    unexpected = sorted(set(tensors) - set(expected))
    if unexpected:
        raise CheckpointError(f"{path} has unexpected tensor(s): {_listing(unexpected)}")
    for name, tensor in tensors.items():
        if tuple(tensor.shape) != tuple(expected[name]):
            raise ShapeMismatchError(
                f"tensor {name!r} in {source[name]} has shape {tuple(tensor.shape)}, "
                f"but the config implies {tuple(expected[name])}"
            )
    return tensors


def parse_size(size: int | str) -> int:
    """Bytes from an int or a string like "500MB", "2GB", "10KiB"."""
    if isinstance(size, int):
        value = size
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", str(size))
        unit = match.group(2).upper() if match else None
        if match is None or unit not in _UNITS:
            raise ConfigError(f"max_shard_size={size!r}: expected bytes or a size like '500MB' or '2GB'")
        value = int(float(match.group(1)) * _UNITS[unit])
    if value <= 0:
        raise ConfigError(f"max_shard_size must be positive, got {size!r}")
    return value


def _shards(state: dict[str, torch.Tensor], max_bytes: int | None) -> list[dict[str, torch.Tensor]]:
    """Greedy split in state-dict order; a tensor larger than max_bytes gets a shard of its own."""
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if max_bytes is not None and shards[-1] and size + nbytes > max_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    return shards


def write_directory(
    path: str | Path,
    config: dict[str, Any],
    state: dict[str, torch.Tensor],
    generation_config: dict[str, Any] | None = None,
    max_shard_size: int | str | None = None,
) -> Path:
    """Write config.json (+ generation_config.json) and safetensors weights to ``path`` atomically.

    ``state`` must hold no two names for one tensor (drop tied copies first).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise CheckpointError(f"cannot save to {path}: it exists and is not a directory")
    max_bytes = parse_size(max_shard_size) if max_shard_size is not None else None
    with atomic_write_dir(path) as tmp:
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        if generation_config:
            (tmp / GENERATION_CONFIG_NAME).write_text(json.dumps(generation_config, indent=2) + "\n")
        state = {name: t.detach().to("cpu").contiguous() for name, t in state.items()}
        shards = _shards(state, max_bytes)
        metadata = {"format": "pt"}  # transformers refuses safetensors files without it
        if max_bytes is None:
            save_file(shards[0], tmp / WEIGHTS_NAME, metadata=metadata)
        else:
            weight_map = {}
            for i, shard in enumerate(shards, start=1):
                name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
                save_file(shard, tmp / name, metadata=metadata)
                weight_map.update(dict.fromkeys(shard, name))
            total = sum(t.numel() * t.element_size() for t in state.values())
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (tmp / INDEX_NAME).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return path
