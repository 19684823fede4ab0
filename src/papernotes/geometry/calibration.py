"""Camera calibration from chessboard views: corner detection and intrinsics.

Zhang 2000, "A Flexible New Technique for Camera Calibration", IEEE TPAMI 22(11): closed-form initialisation
from plane homographies, then Levenberg-Marquardt on the reprojection error, as ``cv2.calibrateCamera``
implements it with the Brown-Conrady distortion model (k1, k2, p1, p2, k3).

* :func:`find_chessboard` / :func:`detect_chessboard`: ``findChessboardCornersSB`` (sub-pixel accurate by
  construction), or the classic detector refined with ``cornerSubPix``; a grid shifted onto the board's
  edge is refused (:mod:`~papernotes.geometry.board_check`), and the reason is kept.
* :func:`calibrate_camera`: views without a usable board are excluded and listed with the reason, never
  fatal; optionally views whose RMS reprojection error exceeds ``max_view_error`` px are rejected and the
  camera re-calibrated.
* :func:`calibrate_from_corners`: the same from corners found elsewhere (the rig detects once for both).

Stereo pairs are in :mod:`~papernotes.geometry.stereo`, rigs in :mod:`~papernotes.geometry.rig`, files in
:mod:`~papernotes.geometry.calibration_io`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from papernotes.errors import ConfigError, DataError
from papernotes.geometry.board_check import ring_problem
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
    excluded: dict[str, str] = field(default_factory=dict)  # view name -> why it was left out (in words)
    corners: dict[str, np.ndarray] = field(default_factory=dict)  # per used view, (N, 2) detected corners


def _grey(image: np.ndarray, name: str) -> np.ndarray:
    if image is None or image.ndim not in (2, 3):
        raise DataError(f"{name}: not an image")
    return image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)


def find_chessboard(
    image: np.ndarray, pattern: tuple[int, int], sector_based: bool = True
) -> tuple[np.ndarray | None, str]:
    """(inner corners (cols·rows, 2) float32 in canonical order, "") or (None, why no board was taken)."""
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
    if not found:
        return None, f"no {pattern[0]}x{pattern[1]} board found"
    corners = corners.reshape(-1, 2).astype(np.float32)
    problem = ring_problem(grey, corners, pattern)
    if problem is not None:  # a grid shifted by one square onto the board's edge: consistent, but wrong
        return None, problem
    return canonical_order(corners, pattern), ""


def detect_chessboard(
    image: np.ndarray, pattern: tuple[int, int], sector_based: bool = True
) -> np.ndarray | None:
    """Inner corners (cols·rows, 2) float32 in canonical order, or None (:func:`find_chessboard` says why)."""
    return find_chessboard(image, pattern, sector_based)[0]


def canonical_order(corners: np.ndarray, pattern: tuple[int, int]) -> np.ndarray:
    """The corners ordered so that the board's first row runs left to right in the image.

    A chessboard whose inner-corner grid looks the same after a half turn can be detected from either end,
    which would give two cameras of a rig (or two views) opposite board frames. Reversing the order is that
    half turn: it flips the direction of the first row, so fixing the direction fixes the board frame for
    every upright camera. (Where the first row is near vertical in the image, it runs downwards.)
    """
    row = corners[pattern[0] - 1] - corners[0]  # image direction of the board's x axis
    keep = row[0] > 0 if abs(row[0]) >= abs(row[1]) * 0.25 else row[1] > 0
    return corners if keep else corners[::-1].copy()


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
    fix_k3: bool = False,
    progress: Callable[[int], None] | None = None,
) -> CameraCalibration:
    """Intrinsics from chessboard views (arrays or image paths); ``square`` in metres (or any unit).

    ``progress(1)`` is called after each view is searched (a progress bar's ``update``).
    """
    names = (
        list(names)
        if names is not None
        else [str(x) if isinstance(x, (str, Path)) else f"view{i}" for i, x in enumerate(images)]
    )
    found, excluded, size = {}, {}, None
    for name, item in zip(names, images):
        image = read_image(item) if isinstance(item, (str, Path)) else _grey(item, name)
        view_size = (image.shape[1], image.shape[0])
        if size is None:
            size = view_size
        elif view_size != size:
            raise DataError(
                f"{name}: image size {view_size} differs from the first view's {size}; "
                "one camera's views must not differ in size"
            )
        corners, why = find_chessboard(image, pattern)
        if progress is not None:
            progress(1)
        if corners is None:
            excluded[name] = why
        else:
            found[name] = corners
    return calibrate_from_corners(found, pattern, square, size, max_view_error, excluded, fix_k3)


def calibrate_from_corners(
    found: dict[str, np.ndarray],
    pattern: tuple[int, int],
    square: float,
    image_size: tuple[int, int],
    max_view_error: float | None = None,
    excluded: dict[str, str] | None = None,
    fix_k3: bool = False,
) -> CameraCalibration:
    """Intrinsics from corners detected per view name (``cv2.calibrateCamera``); as calibrate_camera."""
    found, excluded = dict(found), dict(excluded or {})
    object_points = board_points(pattern, square)
    while True:
        if len(found) < MIN_VIEWS:
            raise DataError(
                f"only {len(found)} usable views (need {MIN_VIEWS}); excluded: {sorted(excluded)[:10]}; "
                f"why: {'; '.join(sorted(set(excluded.values()))[:3])}"
            )
        rms, K, dist, rvecs, tvecs = cv2.calibrateCamera(
            [object_points] * len(found),
            list(found.values()),
            image_size,
            None,
            None,
            flags=cv2.CALIB_FIX_K3 if fix_k3 else 0,
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
        K, dist.reshape(-1), image_size, float(rms), list(rvecs), list(tvecs), errors, excluded, found
    )
