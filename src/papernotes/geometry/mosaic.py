"""The "crop four-way data" step: recorder frames that tile several cameras -> per-camera images.

A multi-camera recorder often writes one frame holding a rows x cols grid of camera pictures. Splitting is
pure slicing; the folder and video front-ends name each output after its source frame, so that the
per-camera folders stay synchronised by file name (which is how the rig calibration pairs them).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
from tqdm.auto import tqdm

from papernotes.errors import ConfigError, DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def split_mosaic(frame: np.ndarray, layout: tuple[int, int] = (2, 2)) -> list[np.ndarray]:
    """A recorder frame holding a rows x cols grid of cameras -> the per-camera images, row by row."""
    rows, cols = layout
    if rows < 1 or cols < 1:
        raise ConfigError(f"layout must be (rows, cols) >= 1, got {layout}")
    height, width = frame.shape[:2]
    if height % rows or width % cols:
        raise DataError(f"a {height}x{width} frame does not split evenly into a {rows}x{cols} mosaic")
    h, w = height // rows, width // cols
    return [frame[r * h : (r + 1) * h, c * w : (c + 1) * w].copy() for r in range(rows) for c in range(cols)]


def image_files(folder: Path) -> list[Path]:
    """The images in a folder, sorted by name; an error if it is not a folder or holds none."""
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def recording_frames(source: Path, every: int = 1) -> Iterator[tuple[str, np.ndarray]]:
    """(name, BGR frame) from a folder of images or a video file, keeping every ``every``-th frame."""
    if every < 1:
        raise ConfigError(f"every must be >= 1, got {every}")
    if source.is_dir():
        for i, path in enumerate(image_files(source)):
            if i % every == 0:
                frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
                if frame is None:
                    raise DataError(f"cannot read image {path}")
                yield path.stem, frame
        return
    if not source.is_file():
        raise DataError(f"{source} is neither a folder of images nor a video file")
    capture = cv2.VideoCapture(str(source))
    if not capture.isOpened():
        raise DataError(f"cannot open video {source}")
    try:
        index = 0
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            if index % every == 0:
                yield f"frame_{index:06d}", frame
            index += 1
    finally:
        capture.release()
    if index == 0:
        raise DataError(f"{source}: no frames could be decoded")


def split_recording(
    source: str | Path,
    out_dir: str | Path,
    layout: tuple[int, int] = (2, 2),
    every: int = 1,
    progress: bool = True,
) -> list[Path]:
    """Split each frame of a folder or video into ``out_dir/cam<k>/<frame>.png``; returns the folders."""
    source, out_dir = Path(source), Path(out_dir)
    folders = [out_dir / f"cam{k}" for k in range(layout[0] * layout[1])]
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
    written = 0
    frames = recording_frames(source, every)
    for name, frame in tqdm(frames, desc="split", unit="frame", disable=not progress):
        for folder, tile in zip(folders, split_mosaic(frame, layout)):
            tmp = folder / f".{name}.tmp.png"
            if not cv2.imwrite(str(tmp), tile):
                raise DataError(f"cannot write {folder / name}.png")
            tmp.replace(folder / f"{name}.png")  # no half-written image is ever visible
        written += 1
    if written == 0:
        raise DataError(f"{source}: no frames to split")
    return folders
