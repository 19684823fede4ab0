"""A GGUF file as a file: open it with clear errors, read its metadata, fingerprint it for the cache.

Format: llama.cpp's GGUF (https://github.com/ggml-org/ggml/blob/master/docs/gguf.md): the magic
``GGUF``, a version, key/value metadata (``general.*``, ``llama.*``, ``tokenizer.*``), the tensor
infos (name, dims innermost first, ggml type, offset), then the aligned tensor data. We read it with
``gguf.GGUFReader`` (llama.cpp's own Python reader), which memory-maps the file.

What the file *means* lives beside this module: the weights and config in ``gguf.py``, the
vocabulary in ``tokenizer.py``. Every failure here is a CheckpointError naming the file.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import gguf

from papernotes.core.experiments import default_cache_dir
from papernotes.errors import CheckpointError

MAGIC = b"GGUF"
# bump when the conversion (names, permutation, config, tokenizer files) changes, so that the
# cache never serves a directory written by an older conversion
CACHE_FORMAT = 1
_REQUIRED = object()


def check_magic(path: str | Path) -> None:
    """CheckpointError unless ``path`` is a file that starts with the GGUF magic (reads 4 bytes)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"GGUF file {path} does not exist (or is not a file)")
    with path.open("rb") as f:
        magic = f.read(4)
    if magic != MAGIC:
        raise CheckpointError(
            f"{path} is not a GGUF file: it starts with {magic!r}, expected {MAGIC!r} "
            "(an HF model is a directory with config.json)"
        )


def open_gguf(path: str | Path) -> gguf.GGUFReader:
    """A ``GGUFReader`` over ``path``, or CheckpointError: missing, not GGUF, truncated or corrupt."""
    path = Path(path)
    check_magic(path)
    try:
        reader = gguf.GGUFReader(path)
    except Exception as exc:  # the reader fails with whatever numpy raises on short or garbled bytes
        raise CheckpointError(f"{path} is not a readable GGUF file (truncated or corrupt?): {exc}") from exc
    if reader.byte_order != "I":  # dequantize() views the bytes in host order
        raise CheckpointError(f"{path} is a GGUF file of the other byte order, which is not supported")
    for tensor in reader.tensors:
        # the reader slices its memory map without checking the end of the file; a file cut inside the
        # last tensor can still yield a (short) array for it
        if tensor.data.nbytes != tensor.n_bytes:
            raise CheckpointError(
                f"{path} is truncated: tensor {tensor.name!r} has {tensor.data.nbytes} bytes of "
                f"{tensor.n_bytes} expected"
            )
    return reader


def metadata(reader: gguf.GGUFReader, key: str, path: str | Path, default: Any = _REQUIRED) -> Any:
    """The value of metadata ``key`` (int, float, str, bool or a list), or ``default`` when absent.

    Without a default a missing key is a CheckpointError naming the key and the file.
    """
    field = reader.get_field(key)
    if field is None:
        if default is _REQUIRED:
            raise CheckpointError(f"{path} lacks the metadata key {key!r}")
        return default
    try:
        return field.contents()
    except Exception as exc:  # a field whose parts do not decode (corrupt strings, odd types)
        raise CheckpointError(f"{path}: metadata key {key!r} cannot be read: {exc}") from exc


def fingerprint(path: str | Path) -> str:
    """sha256 (hex) of the whole file.

    The full content, not size + mtime + a few MiB: a copy of the file hits the same cache entry, a
    touched file is not re-converted, and a file re-quantised in place with the same header and size
    (only tensors in the middle differ) is never served a stale conversion. It costs little: 75 ms for
    SmolLM2's 98 MB here (about 1.3 GB/s), against seconds to dequantise.
    """
    with Path(path).open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def cache_folder(path: str | Path) -> Path:
    """``<cache>/gguf/<sha256[:32]>-v<CACHE_FORMAT>``: where the file's exported HF directory is kept."""
    return default_cache_dir() / "gguf" / f"{fingerprint(path)[:32]}-v{CACHE_FORMAT}"
