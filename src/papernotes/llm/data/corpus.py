"""The embedded default text corpus and deterministic language-model batches.

Default corpus: CPython's own standard-library sources (``*.py`` under
``sysconfig.get_paths()["stdlib"]``, without ``test``/``tests``/``idlelib``/
``lib2to3``/``site-packages``), about 11 MB on Python 3.11. Every machine that runs
papernotes has it, it needs no download, and code is a good target for decoding
methods (it is repetitive enough for drafts and n-gram lookup to pay off). Its
exact content depends on the Python version, so results quote that version.

Split: a file belongs to validation when ``crc32(relative path) % 20 == 0`` (about
5 %); a corpus too small to have such a file gives its lowest-hash file to
validation. The rule depends on nothing but the files' names, so it is stable
across runs and machines, and files never straddle the split.

Users' own text comes in through ``text_dir``: every ``*.txt``/``*.py``/``*.md``
file under it, split by the same rule.
"""

from __future__ import annotations

import os
import sysconfig
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from papernotes.errors import DataError

EXCLUDED_PARTS = frozenset({"test", "tests", "idlelib", "lib2to3", "site-packages", "__pycache__"})
USER_SUFFIXES = (".txt", ".py", ".md", ".rst")
VALIDATION_BUCKETS = 20  # 1 file in 20 goes to validation


@dataclass(frozen=True)
class Document:
    """One source file: its path relative to the corpus root, and its text."""

    name: str
    text: str


def stdlib_root() -> Path:
    """The directory holding this interpreter's standard-library sources."""
    return Path(sysconfig.get_paths()["stdlib"])


def is_validation(name: str) -> bool:
    """Deterministic split rule: crc32 of the relative path, 1 bucket in 20."""
    return zlib.crc32(name.encode()) % VALIDATION_BUCKETS == 0


def iter_documents(text_dir: str | Path | None = None, max_bytes: int | None = None) -> Iterator[Document]:
    """Yield documents in sorted path order, stopping after ``max_bytes`` of text.

    ``text_dir=None`` reads the CPython standard library; otherwise every text
    file under ``text_dir``.
    """
    if text_dir is None:
        root = stdlib_root()
        suffixes: tuple[str, ...] = (".py",)
    else:
        root = Path(text_dir)
        suffixes = USER_SUFFIXES
        if not root.is_dir():
            raise DataError(f"--text-dir {root}: not a directory")
    files = sorted(_walk(root, suffixes))
    if not files:
        raise DataError(f"corpus directory {root}: no files ending in {', '.join(suffixes)}")
    total = 0
    for path in files:
        text = path.read_text(encoding="utf-8", errors="replace")
        yield Document(str(path.relative_to(root)), text)
        total += len(text)
        if max_bytes is not None and total >= max_bytes:
            return


def _walk(root: Path, suffixes: tuple[str, ...]) -> Iterator[Path]:
    """Files under ``root`` with one of ``suffixes``, never descending into excluded folders."""
    for folder, subdirs, names in os.walk(root):
        # pruning in place keeps os.walk out of site-packages (often larger than the stdlib itself)
        subdirs[:] = [d for d in subdirs if d not in EXCLUDED_PARTS]
        for name in names:
            if name.endswith(suffixes):
                yield Path(folder) / name


def split_documents(docs: list[Document]) -> tuple[list[Document], list[Document]]:
    """(train, validation) by :func:`is_validation`, at least one file each."""
    val_names = {d.name for d in docs if is_validation(d.name)}
    if not val_names and len(docs) > 1:
        # a small corpus may have no file in the validation bucket: take the lowest-hash file
        val_names = {min((d.name for d in docs), key=lambda n: zlib.crc32(n.encode()))}
    train = [d for d in docs if d.name not in val_names]
    val = [d for d in docs if d.name in val_names]
    if not train or not val:
        raise DataError(
            f"corpus of {len(docs)} files gives {len(train)} train / {len(val)} validation files; "
            "need at least one of each (add more files)"
        )
    return train, val


class LMBatches:
    """Deterministic next-token-prediction batches from one long token stream.

    ``batches(step, micro_step)`` returns ``{"input_ids": (b, L), "labels": (b, L)}``
    with ``b = micro_batch_size`` windows at offsets drawn from a generator seeded
    by (seed, step, micro_step). The same call always returns the same batch, which
    makes resumed and distributed training exact.
    """

    def __init__(self, tokens: np.ndarray, micro_batch_size: int, seq_len: int, seed: int = 0):
        if len(tokens) <= seq_len + 1:
            raise DataError(
                f"token stream of {len(tokens)} tokens is shorter than seq_len + 1 = {seq_len + 1}"
            )
        self.tokens = torch.from_numpy(tokens.astype(np.int64))
        self.micro_batch_size = micro_batch_size
        self.seq_len = seq_len
        self.seed = seed

    def __call__(self, step: int, micro_step: int = 0) -> dict[str, torch.Tensor]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + step * 1_009 + micro_step)
        starts = torch.randint(
            0, len(self.tokens) - self.seq_len - 1, (self.micro_batch_size,), generator=gen
        )
        idx = starts[:, None] + torch.arange(self.seq_len + 1)  # (b, L+1)
        window = self.tokens[idx]
        return {"input_ids": window[:, :-1], "labels": window[:, 1:]}
