"""Extrinsics of a synchronised camera pair, and the rectification that makes its epipolar lines rows.

``cv2.stereoCalibrate`` with the intrinsics fixed (``CALIB_FIX_INTRINSIC``, OpenCV's default: each camera
is calibrated on its own first, which is better conditioned than a joint fit) gives R, T, E and F;
``cv2.stereoRectify`` (Bouguet's method) gives the rectifying rotations R1, R2, projections P1, P2 and the
disparity-to-depth matrix Q.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from papernotes.errors import DataError
from papernotes.geometry.calibration import MIN_VIEWS, CameraCalibration, detect_chessboard
from papernotes.geometry.synthetic_board import board_points


@dataclass
class StereoCalibration:
    left: CameraCalibration
    right: CameraCalibration
    R: np.ndarray  # (3, 3) rotation from the left camera's frame to the right's: X_r = R X_l + T
    T: np.ndarray  # (3,) translation, same unit as the board's square size
    E: np.ndarray  # (3, 3) essential matrix
    F: np.ndarray  # (3, 3) fundamental matrix
    rms: float  # RMS reprojection error over both views of every used pair, pixels
    pairs: list[str] = field(default_factory=list)  # the synchronised pairs used
    excluded: dict[str, str] = field(default_factory=dict)  # pair name -> why it was left out
    rectification: dict[str, np.ndarray] = field(default_factory=dict)  # R1, R2, P1, P2, Q


def rectify(stereo: StereoCalibration, alpha: float = 0.0) -> dict[str, np.ndarray]:
    """``cv2.stereoRectify``: alpha 0 crops to valid pixels only, 1 keeps every source pixel."""
    R1, R2, P1, P2, Q, _, _ = cv2.stereoRectify(
        stereo.left.K,
        stereo.left.dist,
        stereo.right.K,
        stereo.right.dist,
        stereo.left.image_size,
        stereo.R,
        stereo.T.reshape(3, 1),
        alpha=alpha,
    )
    return {"R1": R1, "R2": R2, "P1": P1, "P2": P2, "Q": Q}


def rectify_images(
    stereo: StereoCalibration, left: np.ndarray, right: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Both images remapped so that a scene point lies on the same row in each."""
    rect = stereo.rectification or rectify(stereo)
    out = []
    for camera, image, Rn, Pn in ((stereo.left, left, "R1", "P1"), (stereo.right, right, "R2", "P2")):
        maps = cv2.initUndistortRectifyMap(
            camera.K, camera.dist, rect[Rn], rect[Pn], camera.image_size, cv2.CV_32FC1
        )
        out.append(cv2.remap(image, *maps, cv2.INTER_LINEAR))
    return out[0], out[1]


def calibrate_stereo(
    left: CameraCalibration,
    right: CameraCalibration,
    left_images: Sequence[np.ndarray],
    right_images: Sequence[np.ndarray],
    pattern: tuple[int, int],
    square: float,
    names: Sequence[str] | None = None,
) -> StereoCalibration:
    """Extrinsics of a synchronised pair with the intrinsics fixed; only pairs where both views show the
    board count (:func:`~papernotes.geometry.calibration.detect_chessboard` orders the corners the same way
    in both)."""
    if len(left_images) != len(right_images):
        raise DataError(
            f"{len(left_images)} left views but {len(right_images)} right views: they must be synchronised"
        )
    if left.image_size != right.image_size:
        raise DataError(f"left images are {left.image_size} but right images {right.image_size}")
    names = list(names) if names is not None else [f"pair{i}" for i in range(len(left_images))]
    object_points = board_points(pattern, square)
    used, excluded, pts1, pts2 = [], {}, [], []
    for name, a, b in zip(names, left_images, right_images):
        c1, c2 = detect_chessboard(a, pattern), detect_chessboard(b, pattern)
        if c1 is None or c2 is None:
            excluded[name] = "board not found in " + (
                "both views" if c1 is None and c2 is None else "the left view" if c1 is None else "the right"
            )
            continue
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
    stereo = StereoCalibration(left, right, R, T.reshape(-1), E, F, float(rms), used, excluded)
    stereo.rectification = rectify(stereo)
    return stereo
