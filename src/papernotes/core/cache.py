"""Recipe-keyed caching of trained models and measurements (what ``papernotes reproduce`` reuses).

A *recipe* is everything that decides a result: sizes, seeds, configs, the key of what it was built on. Its
key is a short hash of its canonical JSON. A cached folder carries the key in a marker file; a cached record
is a JSON file holding the key beside the data. A result whose key differs is stale and is rebuilt.
Timed results also depend on the machine, so :func:`machine_recipe` adds the CPU capability, the thread
count and the torch version to a recipe.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch

from papernotes.core.files import atomic_write_file

logger = logging.getLogger(__name__)

MARKER = "papernotes_recipe.txt"


def recipe_key(recipe: Any, length: int = 12) -> str:
    """A short hex digest of ``recipe``'s canonical JSON (sorted keys; paths and dataclasses as text)."""
    text = json.dumps(recipe, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def machine_recipe() -> dict[str, Any]:
    """What a timing depends on besides the recipe: CPU capability, threads, torch version."""
    return {
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def is_current(directory: str | Path, key: str, use_cache: bool = True) -> bool:
    """True when ``directory`` holds a result built by the recipe ``key`` (and caching is on)."""
    marker = Path(directory) / MARKER
    return use_cache and marker.is_file() and marker.read_text().strip() == key


def mark_current(directory: str | Path, key: str) -> None:
    """Record that ``directory`` now holds the result of recipe ``key`` (write it last, after the result)."""
    with atomic_write_file(Path(directory) / MARKER) as tmp:
        tmp.write_text(key)


def read_record(path: str | Path, key: str, use_cache: bool = True) -> dict[str, Any] | None:
    """The data of the JSON record at ``path`` when it was written for recipe ``key``; else None."""
    path = Path(path)
    if not (use_cache and path.is_file()):
        return None
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError:
        logger.warning("ignoring the unreadable cache record %s", path)
        return None
    return record.get("data") if record.get("key") == key else None


def write_record(path: str | Path, key: str, data: dict[str, Any], recipe: Any = None) -> None:
    """Write ``data`` (and the recipe, for the reader's benefit) as the record of recipe ``key``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write_file(path) as tmp:
        tmp.write_text(json.dumps({"key": key, "recipe": recipe, "data": data}, indent=2, default=str))
