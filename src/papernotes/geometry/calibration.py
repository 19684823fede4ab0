"""Camera calibration from chessboard views: corner detection, intrinsics, and OpenCV YAML files.

Zhang 2000, "A Flexible New Technique for Camera Calibration", IEEE TPAMI 22(11): closed-form initialisation
from plane homographies, then Levenberg-Marquardt on the reprojection error, as ``cv2.calibrateCamera``
implements it with the Brown-Conrady distortion model (k1, k2, p1, p2, k3).

* :func:`detect_chessboard`: ``findChessboardCornersSB`` (sub-pixel accurate by construction), or the
  classic detector refined with ``cornerSubPix``.
* :func:`calibrate_camera`: views without a board are excluded and listed, never fatal; optionally views
  whose RMS reprojection error exceeds ``max_view_error`` px are rejected and the camera re-calibrated.
* :func:`save_calibration` / :func:`load_calibration`: OpenCV FileStorage YAML (``camera_matrix``,
  ``dist_coeffs``, ``image_size``, ``rms``), readable by any OpenCV program.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from papernotes.errors import ConfigError, DataError
from papernotes.geometry.synthetic_board import board_points

logger = logging.getLogger(__name__)

MIN_VIEWS = 3  # calibrateCamera needs several board poses to constrain K


@dataclass
class CameraCalibration:
    K: np.ndarray  # (3, 3) camera matrix
    dist: np.ndarray  # (5,) k1, k2, p1, p2, k3
    image_size: tuple[int, int]  # (width, height)
    rms: float  # overall RMS reprojection error, pixels
    rvecs: list[np.ndarray] = field(default_factory=list)  # per used view, board -> camera
    tvecs: list[np.ndarray] = field(default_factory=list)
    view_errors: dict[str, float] = field(default_factory=dict)  # RMS per used view, pixels
    excluded: dict[str, str] = field(default_factory=dict)  # view name -> why it was left out


def _grey(image: np.ndarray, name: str) -> np.ndarray:
    if image is None or image.ndim not in (2, 3):
        raise DataError(f"{name}: not an image")
    return image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)


def detect_chessboard(
    image: np.ndarray, pattern: tuple[int, int], sector_based: bool = True
) -> np.ndarray | None:
    """Inner corners (cols·rows, 2) float32 in OpenCV's order, or None when no full board is found."""
    if len(pattern) != 2 or min(pattern) < 2:
        raise ConfigError(f"pattern must be (cols, rows) inner corners, each >= 2, got {pattern}")
    grey = _grey(image, "image")
    if sector_based:
        found, corners = cv2.findChessboardCornersSB(grey, pattern, flags=cv2.CALIB_CB_EXHAUSTIVE)
    else:
        found, corners = cv2.findChessboardCorners(grey, pattern, flags=cv2.CALIB_CB_ADAPTIVE_THRESH)
        if found:
            criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 50, 1e-3)
            corners = cv2.cornerSubPix(grey, corners, (5, 5), (-1, -1), criteria)
    return corners.reshape(-1, 2).astype(np.float32) if found else None


def read_image(path: str | Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise DataError(f"cannot read image {path}")
    return image


def calibrate_camera(
    images: Sequence[np.ndarray | str | Path],
    pattern: tuple[int, int],
    square: float,
    names: Sequence[str] | None = None,
    max_view_error: float | None = None,
) -> CameraCalibration:
    """Intrinsics from chessboard views (arrays or image paths); ``square`` in metres (or any unit)."""
    names = (
        list(names)
        if names is not None
        else [str(x) if isinstance(x, (str, Path)) else f"view{i}" for i, x in enumerate(images)]
    )
    object_points = board_points(pattern, square)
    found, excluded, size = {}, {}, None
    for name, item in zip(names, images):
        image = read_image(item) if isinstance(item, (str, Path)) else _grey(item, name)
        view_size = (image.shape[1], image.shape[0])
        if size is None:
            size = view_size
        elif view_size != size:
            raise DataError(
                f"{name}: image size {view_size} differs from the first view's {size} (one camera)"
            )
        corners = detect_chessboard(image, pattern)
        if corners is None:
            excluded[name] = f"no {pattern[0]}x{pattern[1]} board found"
        else:
            found[name] = corners
    while True:
        if len(found) < MIN_VIEWS:
            raise DataError(
                f"only {len(found)} usable views (need {MIN_VIEWS}); without a board: {sorted(excluded)[:10]}"
            )
        rms, K, dist, rvecs, tvecs = cv2.calibrateCamera(
            [object_points] * len(found), list(found.values()), size, None, None
        )
        errors = {}
        for (name, corners), r, t in zip(found.items(), rvecs, tvecs):
            projected, _ = cv2.projectPoints(object_points, r, t, K, dist)
            errors[name] = float(np.sqrt(np.mean(np.sum((projected.reshape(-1, 2) - corners) ** 2, axis=1))))
        worst = max(errors, key=errors.get)
        if max_view_error is None or errors[worst] <= max_view_error or len(found) <= MIN_VIEWS:
            break
        excluded[worst] = f"reprojection error {errors[worst]:.3f} px > {max_view_error} px"
        del found[worst]  # reject the worst view and calibrate again
    for name, why in excluded.items():
        logger.info("calibration: %s excluded (%s)", name, why)
    return CameraCalibration(
        K, dist.reshape(-1), size, float(rms), list(rvecs), list(tvecs), errors, excluded
    )


def save_calibration(calibration: CameraCalibration, path: str | Path) -> Path:
    """OpenCV FileStorage YAML: camera_matrix, dist_coeffs, image_size, rms."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.yaml")
    storage = cv2.FileStorage(str(tmp), cv2.FILE_STORAGE_WRITE)
    storage.write("camera_matrix", calibration.K)
    storage.write("dist_coeffs", calibration.dist.reshape(1, -1))
    storage.write("image_size", np.array(calibration.image_size, np.int32).reshape(1, 2))
    storage.write("rms", calibration.rms)
    storage.release()
    tmp.replace(path)  # atomic: a reader never sees half a file
    return path


def load_calibration(path: str | Path) -> CameraCalibration:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"calibration file {path} does not exist")
    storage = cv2.FileStorage(str(path), cv2.FILE_STORAGE_READ)
    try:
        K = storage.getNode("camera_matrix").mat()
        dist = storage.getNode("dist_coeffs").mat()
        size = storage.getNode("image_size").mat()
        rms = storage.getNode("rms").real()
    finally:
        storage.release()
    if K is None or dist is None or size is None:
        raise DataError(f"{path}: expected camera_matrix, dist_coeffs and image_size")
    return CameraCalibration(K, dist.reshape(-1), tuple(int(v) for v in size.reshape(-1)), float(rms))


@dataclass
class StereoCalibration:
    R: np.ndarray  # (3, 3) rotation from camera 1's frame to camera 2's
    T: np.ndarray  # (3,) translation, same unit as ``square``
    E: np.ndarray  # essential matrix
    F: np.ndarray  # fundamental matrix
    rms: float
    pairs: list[str]  # the synchronised view pairs used
    excluded: dict[str, str]


def calibrate_stereo(
    left: CameraCalibration,
    right: CameraCalibration,
    left_images: Sequence[np.ndarray],
    right_images: Sequence[np.ndarray],
    pattern: tuple[int, int],
    square: float,
    names: Sequence[str] | None = None,
) -> StereoCalibration:
    """Extrinsics of a synchronised pair with the intrinsics fixed (``cv2.stereoCalibrate``).

    Only pairs where both views show the board count. The board's corner order is made the same in both
    views (a half-turn-symmetric board may be detected from either end).
    """
    if len(left_images) != len(right_images):
        raise DataError(
            f"{len(left_images)} left views but {len(right_images)} right views: they must be synchronised"
        )
    names = list(names) if names is not None else [f"pair{i}" for i in range(len(left_images))]
    object_points = board_points(pattern, square)
    used, excluded, pts1, pts2 = [], {}, [], []
    for name, a, b in zip(names, left_images, right_images):
        c1, c2 = detect_chessboard(a, pattern), detect_chessboard(b, pattern)
        if c1 is None or c2 is None:
            excluded[name] = "board not found in " + (
                "both views" if c1 is None and c2 is None else "one view"
            )
            continue
        c2 = _same_order(c1, c2, object_points, left, right)
        used.append(name)
        pts1.append(c1)
        pts2.append(c2)
    if len(used) < MIN_VIEWS:
        raise DataError(
            f"only {len(used)} usable pairs (need {MIN_VIEWS}); excluded: {sorted(excluded)[:10]}"
        )
    rms, _, _, _, _, R, T, E, F = cv2.stereoCalibrate(
        [object_points] * len(used),
        pts1,
        pts2,
        left.K,
        left.dist,
        right.K,
        right.dist,
        left.image_size,
        flags=cv2.CALIB_FIX_INTRINSIC,
    )
    return StereoCalibration(R, T.reshape(-1), E, F, float(rms), used, excluded)


def _same_order(c1, c2, object_points, left: CameraCalibration, right: CameraCalibration) -> np.ndarray:
    """``c2`` in the order that puts board corner 0 at the same physical corner as in ``c1``.

    The board's x axis is solved in each camera's frame for both orders of ``c2``; the order whose axis
    points most nearly the same way as in the left view wins. This holds for cameras whose optical axes
    differ by less than 90 degrees, as in a stereo pair or a forward-facing rig.
    """
    _, r1, _ = cv2.solvePnP(object_points, c1, left.K, left.dist)
    axis1 = cv2.Rodrigues(r1)[0][:, 0]
    best, score = c2, -np.inf
    for candidate in (c2, c2[::-1].copy()):
        _, r2, _ = cv2.solvePnP(object_points, candidate, right.K, right.dist)
        agreement = float(cv2.Rodrigues(r2)[0][:, 0] @ axis1)
        if agreement > score:
            best, score = candidate, agreement
    return best


def split_mosaic(frame: np.ndarray, layout: tuple[int, int] = (2, 2)) -> list[np.ndarray]:
    """A recorder frame holding a rows x cols grid of cameras -> the per-camera images, row by row."""
    rows, cols = layout
    height, width = frame.shape[:2]
    if rows < 1 or cols < 1 or height % rows or width % cols:
        raise DataError(f"a {height}x{width} frame does not split evenly into a {rows}x{cols} mosaic")
    h, w = height // rows, width // cols
    return [frame[r * h : (r + 1) * h, c * w : (c + 1) * w].copy() for r in range(rows) for c in range(cols)]
