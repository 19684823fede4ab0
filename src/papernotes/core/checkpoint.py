"""Atomic checkpoints: safetensors weights, ``weights_only`` optimizer/trainer state, JSON metadata.

Not a paper method; infrastructure. A checkpoint directory holds

    model.safetensors    fp32 weights; tied (shared) tensors are stored once, their other names in the header
    optimizer.pt         ``optimizer.state_dict()``, loadable with ``torch.load(weights_only=True)``
    trainer_state.pt     step, precision/scaler state, RNG states (torch, CUDA, python, numpy), same loader
    checkpoint.json      human-readable metadata (step, file list, caller's extras such as the train config)

Nothing is ever unpickled beyond tensors and plain containers. Writes are atomic
(:mod:`papernotes.core.files`): everything goes to a temp directory beside the target, is fsynced, and only
then renamed into place, so a crash mid-write leaves the previous checkpoint intact; the next write or load
repairs a crash between the two renames.

Tests: a write interrupted inside the weight writer leaves the old checkpoint loadable and no temp dir; every
file loads with ``weights_only=True``; tied weights round-trip.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from papernotes.core.files import atomic_write_dir, recover_dir, umask
from papernotes.errors import CheckpointError, ConfigError, ShapeMismatchError

WEIGHTS_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
TRAINER_STATE_FILE = "trainer_state.pt"
METADATA_FILE = "checkpoint.json"
_ALIASES_KEY = "papernotes.aliases"  # safetensors header entry: JSON {alias name: stored name}


def refuse_non_empty(path: str | Path, overwrite: bool, flag: str = "--out") -> None:
    """A command's output folder must be new or empty unless the user asked to replace it."""
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())) and not overwrite:
        raise ConfigError(f"{flag} {path} exists and is not empty; pass --overwrite to replace it")


def _dedupe(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Split ``state`` into tensors to store and ``{alias: stored name}`` for exact duplicates (tied weights).

    safetensors refuses tensors that share storage; identical views are stored once, partial overlaps
    (e.g. slices of one fused buffer) are stored as contiguous copies.
    """
    stored: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen_view: dict[tuple, str] = {}
    seen_storage: set[int] = set()
    for name, t in state.items():
        t = t.detach()
        if t.numel() == 0:
            stored[name] = t.clone()
            continue
        ptr = t.untyped_storage().data_ptr()
        view = (ptr, t.storage_offset(), tuple(t.shape), t.stride(), t.dtype, t.device)
        if view in seen_view:
            aliases[name] = seen_view[view]
            continue
        seen_view[view] = name
        stored[name] = t.clone() if ptr in seen_storage or not t.is_contiguous() else t
        seen_storage.add(ptr)
    return stored, aliases


def save_weights(
    path: str | Path, state: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> None:
    """Write a state dict to a safetensors file (not atomic by itself), storing tied tensors once."""
    stored, aliases = _dedupe(state)
    header = dict(metadata or {})
    header[_ALIASES_KEY] = json.dumps(aliases)
    save_file({k: v.cpu() for k, v in stored.items()}, str(path), metadata=header)
    Path(path).chmod(0o666 & ~umask())  # safetensors creates files private (0600)


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file written by :func:`save_weights`; aliases map to the same tensor again."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {path} does not exist")
    try:
        state = load_file(str(path))
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"weights file {path} is not a readable safetensors file: {exc}") from exc
    for alias, name in json.loads(header.get(_ALIASES_KEY, "{}")).items():
        state[alias] = state[name]
    return state


def check_state_dict(
    expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor], source: str | Path, context: str
) -> None:
    """Raise unless ``state`` has exactly ``expected``'s names and shapes.

    Missing or unexpected names -> CheckpointError (``context`` says which settings set the names);
    a wrong shape -> ShapeMismatchError naming the tensor and both shapes.
    """
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{source} does not match {context}: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    for name, tensor in expected.items():
        if state[name].shape != tensor.shape:
            raise ShapeMismatchError(
                f"{source}: tensor {name} has shape {tuple(state[name].shape)}, "
                f"but the base model needs {tuple(tensor.shape)}"
            )


def rng_state() -> dict[str, Any]:
    """All RNG states as tensors and plain values (safe for ``weights_only`` loading)."""
    version, keys, gauss = random.getstate()
    np_state = np.random.get_state(legacy=True)  # noqa: NPY002 -- the global RNG is what we restore
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": {"version": version, "keys": torch.tensor(keys, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "bit_generator": np_state[0],
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the states captured by :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py["version"], tuple(int(k) for k in py["keys"].tolist()), py["gauss"]))
    npst = state["numpy"]
    np.random.set_state(  # noqa: NPY002 -- restoring the global RNG
        (
            npst["bit_generator"],
            npst["keys"].numpy().astype(np.uint32),
            npst["pos"],
            npst["has_gauss"],
            npst["cached_gaussian"],
        )
    )
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class Checkpoint:
    """A loaded checkpoint."""

    step: int  # optimizer steps completed when it was written
    weights: dict[str, torch.Tensor]  # fp32 state dict, tied names restored
    optimizer_state: dict[str, Any] | None  # optimizer.state_dict(), or None if not saved
    trainer_state: dict[str, Any] = field(
        default_factory=dict
    )  # caller's extras (precision/scaler state, ...)
    rng: dict[str, Any] | None = None  # for set_rng_state
    metadata: dict[str, Any] = field(default_factory=dict)  # checkpoint.json contents


def save_checkpoint(
    directory: str | Path,
    weights: dict[str, torch.Tensor],
    step: int,
    optimizer: torch.optim.Optimizer | None = None,
    trainer_state: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Atomically write a checkpoint directory (replacing an older one only once the new one is complete).

    ``trainer_state`` must hold only tensors and plain Python values; ``metadata`` must be JSON-serialisable.
    """
    directory = Path(directory)
    with atomic_write_dir(directory) as tmp:
        save_weights(tmp / WEIGHTS_FILE, weights)
        if optimizer is not None:
            torch.save(optimizer.state_dict(), tmp / OPTIMIZER_FILE)
        torch.save({"step": step, "state": trainer_state or {}, "rng": rng_state()}, tmp / TRAINER_STATE_FILE)
        files = sorted(p.name for p in tmp.iterdir())
        meta = {"format": "papernotes-checkpoint-1", "step": step, "files": files, **(metadata or {})}
        (tmp / METADATA_FILE).write_text(json.dumps(meta, indent=2))
    return directory


def load_checkpoint(directory: str | Path) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`; missing or broken -> CheckpointError."""
    directory = Path(directory)
    recover_dir(directory)
    if not (directory / TRAINER_STATE_FILE).is_file():
        raise CheckpointError(
            f"no checkpoint at {directory} (expected {TRAINER_STATE_FILE} and {WEIGHTS_FILE})"
        )
    weights = load_weights(directory / WEIGHTS_FILE)
    try:
        trainer = torch.load(directory / TRAINER_STATE_FILE, map_location="cpu", weights_only=True)
        optimizer_path = directory / OPTIMIZER_FILE
        optimizer_state = (
            torch.load(optimizer_path, map_location="cpu", weights_only=True)
            if optimizer_path.is_file()
            else None
        )
    except Exception as exc:  # torch raises several types for corrupt or unsafe pickles
        raise CheckpointError(f"checkpoint {directory} has an unreadable state file: {exc}") from exc
    meta_path = directory / METADATA_FILE
    metadata = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    return Checkpoint(
        step=int(trainer["step"]),
        weights=weights,
        optimizer_state=optimizer_state,
        trainer_state=trainer.get("state", {}),
        rng=trainer.get("rng"),
        metadata=metadata,
    )
