"""Reading and writing video files and frame folders.

Not a paper method; infrastructure for :mod:`papernotes.video.data.datasets`,
:mod:`~papernotes.video.data.synthetic` and :mod:`~papernotes.video.data.flow`. Frames are uint8 RGB
arrays shaped (N, H, W, 3), N frames of H x W pixels.

* Video files are decoded with PyAV (FFmpeg bundled in its wheel; no system FFmpeg needed) and, when PyAV is
  missing or fails on a file, with OpenCV's ``VideoCapture``. Both failing gives one DataError that names the
  file and both reasons.
* Frame folders follow the mmaction2 "rawframes" layout: ``img_00001.jpg``, ``img_00002.jpg``, ... (1-based),
  and for optical flow ``flow_x_00001.jpg`` / ``flow_y_00001.jpg`` (TSN's dense_flow naming).
* Outputs are written atomically (:mod:`papernotes.core.files`), without fsync: these folders hold tens of
  thousands of small regenerable files, and at about 4 ms per fsync that would dominate the run time. A crash
  of the process still never leaves a half-written folder under the final name. This module also avoids
  importing torch, so the process-pool workers of :mod:`~papernotes.video.data.flow` start quickly.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from papernotes.core.files import atomic_write_file
from papernotes.errors import ConfigError, DataError

try:  # PyAV is the primary decoder; OpenCV alone still reads and writes mp4
    import av
except ImportError:  # pragma: no cover - exercised only where PyAV is not installed
    av = None

logger = logging.getLogger(__name__)

RGB_TEMPLATE = "img_{:05d}.jpg"  # mmaction2 / TSN rawframe names, 1-based
FLOW_TEMPLATE = "flow_{}_{:05d}.jpg"  # formatted with "x" or "y", then the 1-based index
_CONTAINER_FORMATS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".avi": "avi"}


# ----------------------------------------------------------------------------------------------- decoding


def _read_pyav(path: Path, max_frames: int | None) -> list[np.ndarray]:
    frames = []
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise DataError(f"video {path} has no video stream")
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray(format="rgb24"))
            if max_frames is not None and len(frames) >= max_frames:
                break
    return frames


def _read_opencv(path: Path, max_frames: int | None) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise DataError(f"OpenCV cannot open {path}")
    frames = []
    try:
        while max_frames is None or len(frames) < max_frames:
            ok, bgr = capture.read()
            if not ok:
                break
            frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    finally:
        capture.release()
    return frames


def read_video(path: str | Path, max_frames: int | None = None) -> np.ndarray:
    """Decode a video file into uint8 RGB frames (N, H, W, 3); only the first ``max_frames`` if given.

    PyAV first, OpenCV if PyAV is missing or fails. A missing, empty or undecodable file -> DataError.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"video file {path} does not exist")
    if path.stat().st_size == 0:
        raise DataError(f"video file {path} is empty (0 bytes)")
    if max_frames is not None and max_frames < 1:
        raise ConfigError(f"max_frames must be at least 1, got {max_frames}")
    reasons = []
    readers = ([("PyAV", _read_pyav)] if av is not None else []) + [("OpenCV", _read_opencv)]
    for name, reader in readers:
        try:
            frames = reader(path, max_frames)
        except (DataError, OSError, ValueError) as exc:  # av's FFmpegError is a ValueError
            reasons.append(f"{name}: {exc}")
            continue
        if frames:
            return np.stack(frames)  # (N, H, W, 3)
        reasons.append(f"{name}: no frames decoded")
    raise DataError(f"cannot decode video {path} ({'; '.join(reasons)})")


def read_video_times(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Decode a video into uint8 RGB frames (N, H, W, 3) and their presentation times (N,) in seconds,
    counted from the first frame.

    PyAV reads each frame's timestamp (pts x time base), so variable and fractional frame rates (23.976,
    29.97) come out exact; where a frame has none, or with OpenCV, frame i is at i / fps.
    """
    path = Path(path)
    frames = read_video(path)
    times = None
    if av is not None:
        with contextlib.suppress(Exception), av.open(str(path)) as container:
            stamps = [frame.time for frame in container.decode(video=0)]
            if len(stamps) == len(frames) and all(t is not None for t in stamps):
                times = np.asarray(stamps, dtype=np.float64)
    if times is None:
        times = np.arange(len(frames), dtype=np.float64) / video_fps(path)
    return frames, times - times[0]


# ----------------------------------------------------------------------------------------------- encoding


def video_fps(path: str | Path, default: float = 25.0) -> float:
    """Frames per second stored in a video file (PyAV, then OpenCV); ``default`` if the file does not say."""
    path = Path(path)
    if av is not None:
        with contextlib.suppress(Exception), av.open(str(path)) as container:
            rate = container.streams.video[0].average_rate
            if rate:
                return float(rate)
    capture = cv2.VideoCapture(str(path))
    try:
        fps = capture.get(cv2.CAP_PROP_FPS) if capture.isOpened() else 0.0
    finally:
        capture.release()
    return float(fps) if fps and fps > 0 else default


def default_codec() -> str:
    """H.264 (libx264) when the installed PyAV has it, else MPEG-4 part 2; 'mp4v' for the OpenCV writer."""
    if av is None:
        return "mp4v"
    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


def _check_frames(frames: np.ndarray, what: str) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise ConfigError(
            f"{what} must be a non-empty uint8 RGB array (N, H, W, 3), got {frames.dtype} {frames.shape}"
        )
    return frames


def frame_rate(fps: float) -> Fraction:
    """``fps`` as an exact ratio: the NTSC rates 23.976, 29.97 and 59.94 are N·1000/1001 (24000/1001 ...),
    others the nearest fraction with a denominator up to 1001."""
    ntsc = round(fps * 1.001)
    if abs(fps * 1.001 - ntsc) < 1e-3 and abs(fps - ntsc) > 1e-3:
        return Fraction(ntsc * 1000, 1001)
    return Fraction(fps).limit_denominator(1001)


def _write_pyav(path: Path, frames: np.ndarray, fps: float, codec: str, container_format: str) -> None:
    height, width = frames.shape[1:3]
    rate = frame_rate(fps)
    with av.open(str(path), "w", format=container_format) as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if codec in ("libx264", "h264"):
            # near-lossless; "ultrafast" because the frames are small and there are many files
            stream.options = {"crf": "17", "preset": "ultrafast"}
        else:
            stream.bit_rate = 4_000_000
        if height * width <= 256 * 256:
            stream.codec_context.thread_count = 1  # encoder threads cost more to start than tiny frames take
        for rgb in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode())  # flush the encoder's delayed frames


def _write_opencv(path: Path, frames: np.ndarray, fps: float) -> None:
    height, width = frames.shape[1:3]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    if not writer.isOpened():
        raise DataError(f"OpenCV cannot open a video writer for {path}")
    try:
        for rgb in frames:
            writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    finally:
        writer.release()


def write_video(
    path: str | Path, frames: np.ndarray, fps: float = 16, codec: str | None = None, atomic: bool = True
) -> Path:
    """Encode uint8 RGB frames (N, H, W, 3) into a video file (container from the suffix, pixels yuv420p).

    ``fps`` may be fractional: 23.976 and 29.97 are stored as 24000/1001 and 30000/1001.

    ``codec`` is a PyAV encoder name ("libx264", "mpeg4", ...); the default is :func:`default_codec`.
    H and W must be even (yuv420p halves the chroma planes). With ``atomic`` the file appears under its
    final name only once complete; pass False when the whole folder is already written atomically.
    """
    path = Path(path)
    frames = _check_frames(frames, f"frames for {path}")
    if frames.shape[1] % 2 or frames.shape[2] % 2:
        raise ConfigError(f"video {path}: height and width must be even for yuv420p, got {frames.shape[1:3]}")
    container_format = _CONTAINER_FORMATS.get(path.suffix.lower())
    if container_format is None:
        raise ConfigError(
            f"video {path}: unknown container suffix; expected one of {sorted(_CONTAINER_FORMATS)}"
        )
    codec = codec or default_codec()

    def write(target: Path) -> None:
        if av is None or codec == "mp4v":
            _write_opencv(target, frames, fps)
        else:
            if codec not in av.codecs_available:
                raise ConfigError(f"codec {codec!r} is not available in PyAV {av.__version__}")
            _write_pyav(target, frames, fps, codec, container_format)

    if atomic:
        with atomic_write_file(path, durable=False) as tmp:
            write(tmp)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(path)
    return path


# ------------------------------------------------------------------------------------------ frame folders


def frame_path(
    directory: str | Path,
    index: int,
    filename_tmpl: str = RGB_TEMPLATE,
    start_index: int = 1,
    axis: str | None = None,
) -> Path:
    """Path of 0-based frame ``index`` in a rawframe folder; ``axis`` ("x"/"y") fills a flow template."""
    number = index + start_index
    name = filename_tmpl.format(axis, number) if axis is not None else filename_tmpl.format(number)
    return Path(directory) / name


def read_frames(
    directory: str | Path,
    indices: Sequence[int] | np.ndarray,
    filename_tmpl: str = RGB_TEMPLATE,
    start_index: int = 1,
    grayscale: bool = False,
    axis: str | None = None,
) -> np.ndarray:
    """Read the given 0-based frames of a rawframe folder: uint8 (N, H, W, 3) RGB, or (N, H, W) grayscale.

    Each distinct index is read once, so the repeated indices of short videos cost nothing extra. A missing or
    unreadable image, or images of different sizes -> DataError naming the file.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"frame folder {directory} does not exist")
    flags = cv2.IMREAD_GRAYSCALE if grayscale else cv2.IMREAD_COLOR
    cache: dict[int, np.ndarray] = {}
    for index in dict.fromkeys(int(i) for i in indices):  # unique, in order
        path = frame_path(directory, index, filename_tmpl, start_index, axis)
        image = cv2.imread(str(path), flags)
        if image is None:
            reason = "does not exist" if not path.exists() else "is not a readable image"
            raise DataError(f"frame {path} {reason}")
        cache[index] = image if grayscale else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    shapes = {image.shape for image in cache.values()}
    if len(shapes) > 1:
        raise DataError(f"frames in {directory} have different sizes: {sorted(shapes)}")
    return np.stack([cache[int(i)] for i in indices])


def write_frames(
    directory: str | Path,
    frames: np.ndarray,
    filename_tmpl: str = RGB_TEMPLATE,
    start_index: int = 1,
    jpeg_quality: int = 95,
    axis: str | None = None,
) -> None:
    """Write uint8 frames, (N, H, W, 3) RGB or (N, H, W) grayscale, as numbered image files (not atomic)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    params = [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)]
    for i, image in enumerate(np.asarray(frames)):
        path = frame_path(directory, i, filename_tmpl, start_index, axis)
        if image.ndim == 3:
            image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
        if not cv2.imwrite(str(path), image, params):
            raise DataError(f"cannot write frame {path}")
