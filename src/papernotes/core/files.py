"""Atomic file and folder writes: a temp name beside the target, then one rename.

Not a paper method; infrastructure for every writer in the toolkit (checkpoints, model directories, reports,
figures, list files, video folders). A reader never sees a half-written result under the final name, and an
exception removes the temp file or folder and leaves the target as it was.

``durable=True`` (the default) also fsyncs the data and the parent folder, so the result survives a power
loss; pass False for outputs of tens of thousands of files (frame folders) where the guarantee against an
interrupted process is enough. rename(2) cannot replace a non-empty directory, so :func:`atomic_write_dir`
first renames the old folder to ``.<name>.old`` and deletes it once the new one is in place; if a crash falls
between the two renames, the next write puts ``.<name>.old`` back (:func:`recover_dir`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def fsync_path(path: Path) -> None:
    """fsync a file or a directory (directory fsync makes renames/creations inside it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def umask() -> int:
    """The process's file-creation mask (read without changing it for long)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _backup_of(path: Path) -> Path:
    return path.parent / f".{path.name}.old"


def recover_dir(path: str | Path) -> None:
    """Undo a crash between the two renames of :func:`atomic_write_dir` (target gone, backup present)."""
    path = Path(path)
    backup = _backup_of(path)
    if backup.exists():
        if path.exists():
            shutil.rmtree(backup)  # the new directory made it; the backup is stale
        else:
            backup.rename(path)


@contextlib.contextmanager
def atomic_write_file(path: str | Path, durable: bool = True) -> Iterator[Path]:
    """Yield a temp file path beside ``path`` (same suffix); on success it is renamed over ``path``.

    Write with any writer that takes a path (``save_file(t, tmp)``, ``tmp.write_text(...)``,
    ``fig.savefig(tmp)``); the suffix is kept because OpenCV, PyAV and matplotlib pick the format from it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.stem}.tmp-", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    tmp.chmod(0o666 & ~umask())  # mkstemp makes it private (0600); the result should be an ordinary file
    try:
        yield tmp
        if durable:
            fsync_path(tmp)
        os.replace(tmp, path)  # atomic for files
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_path(path.parent)


@contextlib.contextmanager
def atomic_write_dir(path: str | Path, durable: bool = True) -> Iterator[Path]:
    """Yield a temp directory beside ``path``; on success it replaces ``path`` (a directory) by a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover_dir(path)
    # same parent => same filesystem => rename is atomic
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    tmp.chmod(0o777 & ~umask())  # mkdtemp makes it private (0700); the result should be an ordinary dir
    try:
        yield tmp
        if durable:
            for child in tmp.rglob("*"):
                if child.is_file():
                    fsync_path(child)
            fsync_path(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    backup = _backup_of(path)
    if path.exists():
        path.rename(backup)  # keep the old one until the new one is in place
    tmp.rename(path)
    if durable:
        fsync_path(path.parent)
    if backup.exists():
        shutil.rmtree(backup)


def write_text_atomic(path: str | Path, text: str, durable: bool = True) -> Path:
    """Write a small text file (a list file, a JSON summary, a report page) by temp file + rename."""
    with atomic_write_file(path, durable) as tmp:
        tmp.write_text(text)
    return Path(path)
