"""Action-recognition datasets: mmaction-style list files, TSN segment sampling, rawframes and video files.

Wang et al. 2016, "Temporal Segment Networks: Towards Good Practices for Deep Action Recognition",
arXiv:1608.00859. TSN divides a video into K equal segments and takes one snippet per segment: a random
position inside the segment when training, the segment centre when testing. A snippet is one RGB frame
(TSN, TSM), L consecutive frames (TDN: L = 5, for RGB differences) or a stack of L optical-flow (x, y)
pairs (the TSN/two-stream flow stream).

List files are mmaction2's formats, one video per line, fields separated by whitespace:

    rawframes:  ``some/frame_dir 120 3``   (folder of img_00001.jpg ..., number of frames, label)
    videos:     ``some/clip.mp4 3``        (video file, label)

Relative paths resolve against ``root`` (by default the list file's own folder).

Dimension letters: K segments, L frames per segment, V clips (test-time views), N = V*K*L frames,
C channels, H x W pixels.

Tests hold :func:`sample_indices` to TSN's rules (offsets inside their segments when training, centres when
testing, repetition for videos shorter than K) and the datasets to the tiny synthetic benchmark.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from papernotes.core.files import write_text_atomic
from papernotes.errors import ConfigError, DataError
from papernotes.video.data.transforms import to_float_clip
from papernotes.video.data.video_io import (
    FLOW_TEMPLATE,
    RGB_TEMPLATE,
    read_frames,
    read_video,
)

logger = logging.getLogger(__name__)

MODES = ("train", "test")
ON_ERROR = ("raise", "skip")
Transform = Callable[[np.ndarray], torch.Tensor]


# ------------------------------------------------------------------------------------------------ sampling


def sample_indices(
    num_frames: int,
    num_segments: int,
    frames_per_segment: int = 1,
    mode: str = "train",
    rng: np.random.Generator | int | None = None,
    num_clips: int = 1,
) -> np.ndarray:
    """TSN segment sampling: 0-based frame indices shaped (num_clips, num_segments * frames_per_segment).

    A snippet is ``frames_per_segment`` (L) consecutive frames starting at the chosen point. As in TSN's
    ``new_length``, the K segments divide the S = num_frames - L + 1 possible snippet starts, so snippets stay
    inside the video; segment k covers starts [k*S/K, (k+1)*S/K).

    * ``"train"``: a uniformly random start inside each segment, drawn independently for each clip.
    * ``"test"``: deterministic. Clip v of V takes the point at fraction (v + 0.5)/V of every segment, so one
      clip takes the segment centres (TSN's test sampling) and V clips are V evenly shifted centre sets.

    Segments are real-valued, so every frame can be drawn (TSN's integer segments never draw the last
    S mod K frames when training). A video with fewer starts than segments (S < K) gets the same rule: the
    segments are shorter than a frame, so indices repeat and spread evenly over the video. A video shorter
    than one snippet (num_frames < L) repeats its last frame: indices are clamped to [0, num_frames - 1].
    """
    if num_frames < 1:
        raise DataError(f"cannot sample frames from a video with {num_frames} frames")
    if num_segments < 1 or frames_per_segment < 1 or num_clips < 1:
        raise ConfigError(
            "num_segments, frames_per_segment and num_clips must be positive, got "
            f"{num_segments}, {frames_per_segment}, {num_clips}"
        )
    if mode not in MODES:
        raise ConfigError(f"mode must be one of {MODES}, got {mode!r}")
    starts = max(num_frames - frames_per_segment + 1, 1)  # S
    segment = starts / num_segments  # segment length in frames; may be < 1
    if mode == "train":
        rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        fraction = rng.random((num_clips, num_segments))  # (V, K) position inside each segment
    else:
        fraction = np.broadcast_to(
            ((np.arange(num_clips) + 0.5) / num_clips)[:, None], (num_clips, num_segments)
        )
    # floor(segment * (k + fraction)) lies in segment k; min() guards the float edge at k + fraction -> K
    offsets = np.minimum(np.floor(segment * (np.arange(num_segments) + fraction)), starts - 1).astype(
        np.int64
    )
    indices = offsets[:, :, None] + np.arange(frames_per_segment)  # (V, K, L)
    indices = np.clip(indices, 0, num_frames - 1)
    return indices.reshape(num_clips, num_segments * frames_per_segment)  # (V, K*L)


# ------------------------------------------------------------------------------------------------ list files


@dataclass(frozen=True)
class ListEntry:
    """One line of a list file."""

    path: Path  # frame folder or video file, resolved against the root
    label: int  # class index, >= 0
    num_frames: int | None  # rawframe lists only: frames (or flow frames) in the folder
    source: str  # "list_file:line" for error messages


def _parse_int(text: str, what: str, where: str, expected: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise DataError(f"{where}: {what} {text!r} is not an integer; expected {expected}") from None
    if value < 0:
        raise DataError(f"{where}: {what} {value} is negative; expected {expected}")
    return value


def _read_list(list_file: str | Path, root: str | Path | None, fields: int, expected: str) -> list[ListEntry]:
    list_file = Path(list_file)
    if not list_file.is_file():
        raise DataError(f"list file {list_file} does not exist")
    root = Path(root) if root is not None else list_file.parent
    entries = []
    for lineno, line in enumerate(list_file.read_text().splitlines(), start=1):
        if not line.strip():
            continue  # blank lines (a trailing newline, an empty last line) carry nothing
        where = f"{list_file}:{lineno}"
        # split from the right so that paths containing spaces still parse
        parts = line.strip().rsplit(maxsplit=fields - 1)
        if len(parts) != fields:
            raise DataError(f"{where}: expected '{expected}' ({fields} fields), got {line.strip()!r}")
        label = _parse_int(parts[-1], "label", where, expected)
        num_frames = _parse_int(parts[1], "frame count", where, expected) if fields == 3 else None
        entries.append(ListEntry(root / parts[0], label, num_frames, where))
    if not entries:
        raise DataError(f"list file {list_file} has no entries; expected lines '{expected}'")
    return entries


def read_rawframe_list(list_file: str | Path, root: str | Path | None = None) -> list[ListEntry]:
    """Parse an mmaction rawframe list (``frame_dir num_frames label`` per line); bad line -> DataError."""
    return _read_list(list_file, root, 3, "frame_dir num_frames label")


def read_video_list(list_file: str | Path, root: str | Path | None = None) -> list[ListEntry]:
    """Parse an mmaction video list (``path label`` per line); bad line -> DataError naming file and line."""
    return _read_list(list_file, root, 2, "path label")


def write_rawframe_list(list_file: str | Path, rows: list[tuple[str, int, int]]) -> Path:
    """Write ``(frame_dir, num_frames, label)`` rows as an mmaction rawframe list."""
    return write_text_atomic(list_file, "".join(f"{d} {n} {label}\n" for d, n, label in rows))


def write_video_list(list_file: str | Path, rows: list[tuple[str, int]]) -> Path:
    """Write ``(path, label)`` rows as an mmaction video list."""
    return write_text_atomic(list_file, "".join(f"{p} {label}\n" for p, label in rows))


# ------------------------------------------------------------------------------------------------ datasets


class _SegmentDataset(Dataset):
    """Shared logic: sampling, transforms and the on_error policy. Subclasses implement ``_load``."""

    def __init__(
        self,
        entries: list[ListEntry],
        list_file: Path,
        num_segments: int,
        frames_per_segment: int,
        mode: str,
        num_clips: int,
        transform: Transform | None,
        on_error: str,
    ) -> None:
        if on_error not in ON_ERROR:
            raise ConfigError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        # validate the sampling arguments now rather than on the first item
        sample_indices(1, num_segments, frames_per_segment, mode, rng=0, num_clips=num_clips)
        self.entries = entries
        self.list_file = list_file
        self.num_segments = num_segments
        self.frames_per_segment = frames_per_segment
        self.mode = mode
        self.num_clips = num_clips
        self.transform = transform or to_float_clip
        self.on_error = on_error
        # (path, reason) of entries that failed to load. With DataLoader workers every worker process has its
        # own copy, so this list only fills in the main process (num_workers=0); workers log a warning.
        self.skipped: list[tuple[str, str]] = []
        self._bad: set[int] = set()

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def labels(self) -> list[int]:
        return [e.label for e in self.entries]

    def _indices(self, num_frames: int) -> np.ndarray:
        """Flat 0-based frame indices (V*K*L,) for one video."""
        # train: draw from torch's RNG, which torch.manual_seed and the DataLoader's per-worker seeds govern
        rng = None if self.mode == "test" else int(torch.randint(2**62, ()).item())
        return sample_indices(
            num_frames, self.num_segments, self.frames_per_segment, self.mode, rng, self.num_clips
        ).reshape(-1)

    def _load(self, entry: ListEntry) -> torch.Tensor:
        raise NotImplementedError

    def __getitem__(self, index: int) -> dict[str, Any]:
        """{"frames": float (V*K*L, C, H, W) (flow: (V*K, 2L, H, W)), "label": int, "index": int}.

        With ``on_error="skip"`` a failing entry is recorded in ``skipped`` and replaced by the next entry
        that loads (wrapping around), so "index" is the entry actually returned.
        """
        for attempt in range(len(self)):
            i = (index + attempt) % len(self)
            if i in self._bad:
                continue
            entry = self.entries[i]
            try:
                frames = self._load(entry)
            except DataError as exc:
                if self.on_error == "raise":
                    raise DataError(f"{entry.source}: {exc}") from exc
                self._bad.add(i)
                self.skipped.append((str(entry.path), str(exc)))
                logger.warning("skipping %s (%s): %s", entry.path, entry.source, exc)
                continue
            return {"frames": frames, "label": entry.label, "index": i}
        raise DataError(f"no entry of {self.list_file} could be loaded; skipped: {self.skipped[:3]}")


# decoded rawframe folders: (folder, file name template, flow axis or None) -> uint8 (N, H, W[, 3])
FrameCache = dict[tuple[Path, str, str | None], np.ndarray]


class RawFrameDataset(_SegmentDataset):
    """Frame folders listed in an mmaction rawframe list (``frame_dir num_frames label``).

    ``modality="rgb"`` reads ``img_00001.jpg``-style frames and yields "frames" (V*K*L, 3, H, W).
    ``modality="flow"`` reads ``flow_x_00001.jpg``/``flow_y_00001.jpg`` (TSN's dense_flow output; the list's
    frame count is then the number of flow frames) and stacks the L (x, y) pairs of each snippet into
    channels ordered x1, y1, x2, y2, ... as TSN does, yielding (V*K, 2L, H, W). ``filename_tmpl`` is a
    ``str.format`` pattern of the 1-based index (flow: of the axis letter, then the index).
    """

    def __init__(
        self,
        list_file: str | Path,
        *,
        root: str | Path | None = None,
        num_segments: int = 8,
        frames_per_segment: int = 1,
        mode: str = "train",
        num_clips: int = 1,
        transform: Transform | None = None,
        modality: str = "rgb",
        filename_tmpl: str | None = None,
        start_index: int = 1,
        on_error: str = "raise",
        cache_frames: bool | FrameCache = False,
    ) -> None:
        if modality not in ("rgb", "flow"):
            raise ConfigError(f"modality must be 'rgb' or 'flow', got {modality!r}")
        list_file = Path(list_file)
        super().__init__(
            read_rawframe_list(list_file, root),
            list_file,
            num_segments,
            frames_per_segment,
            mode,
            num_clips,
            transform,
            on_error,
        )
        self.modality = modality
        self.filename_tmpl = filename_tmpl or (RGB_TEMPLATE if modality == "rgb" else FLOW_TEMPLATE)
        self.start_index = start_index
        # (folder, template, axis) -> uint8 frames of the whole folder, when cache_frames; a dict passed in is
        # shared with the other datasets that read the same folders (the models of one experiment)
        self.frame_cache: FrameCache | None = (
            cache_frames if isinstance(cache_frames, dict) else ({} if cache_frames else None)
        )

    def _read(self, entry: ListEntry, indices: np.ndarray, axis: str | None = None) -> np.ndarray:
        grayscale = self.modality == "flow"
        if self.frame_cache is None:
            return read_frames(entry.path, indices, self.filename_tmpl, self.start_index, grayscale, axis)
        key = (entry.path, self.filename_tmpl, axis)
        frames = self.frame_cache.get(key)
        if frames is None:
            every = np.arange(entry.num_frames)
            frames = read_frames(entry.path, every, self.filename_tmpl, self.start_index, grayscale, axis)
            self.frame_cache[key] = frames
        return frames[indices]

    def _load(self, entry: ListEntry) -> torch.Tensor:
        if not entry.num_frames:
            raise DataError(f"frame folder {entry.path} is listed with 0 frames")
        indices = self._indices(entry.num_frames)
        if self.modality == "rgb":
            return self.transform(self._read(entry, indices))
        x, y = (self._read(entry, indices, axis) for axis in ("x", "y"))
        clip = self.transform(np.stack([x, y], axis=-1))  # (N, H, W, 2) -> (N, 2, H, W), N = V*K*L
        n, _, h, w = clip.shape
        # (N, 2, H, W) -> (V*K, L, 2, H, W) -> (V*K, 2L, H, W): channels x1, y1, x2, y2, ...
        return clip.reshape(n // self.frames_per_segment, 2 * self.frames_per_segment, h, w)


class VideoDataset(_SegmentDataset):
    """Video files listed in an mmaction video list (``path label``), decoded with PyAV or OpenCV.

    Each item decodes the whole file (up to ``max_frames``), samples V*K*L frames and yields "frames"
    (V*K*L, 3, H, W). Clips of a few hundred frames decode in milliseconds; for long videos extract
    rawframes once and use :class:`RawFrameDataset`.
    """

    def __init__(
        self,
        list_file: str | Path,
        *,
        root: str | Path | None = None,
        num_segments: int = 8,
        frames_per_segment: int = 1,
        mode: str = "train",
        num_clips: int = 1,
        transform: Transform | None = None,
        max_frames: int | None = None,
        on_error: str = "raise",
    ) -> None:
        list_file = Path(list_file)
        super().__init__(
            read_video_list(list_file, root),
            list_file,
            num_segments,
            frames_per_segment,
            mode,
            num_clips,
            transform,
            on_error,
        )
        self.max_frames = max_frames

    def _load(self, entry: ListEntry) -> torch.Tensor:
        video = read_video(entry.path, self.max_frames)  # (T, H, W, 3)
        return self.transform(video[self._indices(len(video))])
