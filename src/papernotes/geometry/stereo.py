"""Extrinsics of a synchronised camera pair, and the rectification that makes its epipolar lines rows.

``cv2.stereoCalibrate`` with the intrinsics fixed (``CALIB_FIX_INTRINSIC``, OpenCV's default: each camera
is calibrated on its own first, which is better conditioned than a joint fit) gives R, T, E and F;
``cv2.stereoRectify`` (Bouguet's method) gives the rectifying rotations R1, R2, projections P1, P2 and the
disparity-to-depth matrix Q.

* :func:`calibrate_stereo`: from the two cameras' images (each searched for the board);
* :func:`stereo_from_calibrations`: from the corners the two intrinsic calibrations already found, paired by
  view name, so that no image is searched twice;
* :func:`stereo_from_corners`: from corner pairs found elsewhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from papernotes.errors import DataError
from papernotes.geometry.calibration import MIN_VIEWS, CameraCalibration, find_chessboard
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
    pairs, excluded = {}, {}
    for name, a, b in zip(names, left_images, right_images):
        (c1, why1), (c2, why2) = find_chessboard(a, pattern), find_chessboard(b, pattern)
        if c1 is None or c2 is None:
            excluded[name] = "; ".join(
                f"{side} view: {why}" for side, why in (("left", why1), ("right", why2)) if why
            )
        else:
            pairs[name] = (c1, c2)
    return stereo_from_corners(left, right, pairs, pattern, square, excluded)


def stereo_from_calibrations(
    left: CameraCalibration, right: CameraCalibration, pattern: tuple[int, int], square: float
) -> StereoCalibration:
    """Extrinsics from the corners the two intrinsic calibrations already found, pairing views by name
    (each image is searched once); a view either camera left out is excluded with its reason."""
    if not left.corners or not right.corners:
        raise DataError("these calibrations hold no corners (loaded from a file?): use calibrate_stereo")
    names = sorted(set(left.corners) | set(left.excluded) | set(right.corners) | set(right.excluded))
    pairs, excluded = {}, {}
    for name in names:
        if name in left.corners and name in right.corners:
            pairs[name] = (left.corners[name], right.corners[name])
            continue
        why = [
            f"{side} view: {camera.excluded.get(name, 'no such view')}"
            for side, camera in (("left", left), ("right", right))
            if name not in camera.corners
        ]
        excluded[name] = "; ".join(why)
    return stereo_from_corners(left, right, pairs, pattern, square, excluded)


def stereo_from_corners(
    left: CameraCalibration,
    right: CameraCalibration,
    pairs: dict[str, tuple[np.ndarray, np.ndarray]],
    pattern: tuple[int, int],
    square: float,
    excluded: dict[str, str] | None = None,
) -> StereoCalibration:
    """Extrinsics from corners found in synchronised pairs (name -> (left (N, 2), right (N, 2)), in the same
    board order), intrinsics fixed; ``excluded`` (pair name -> why) is carried into the result."""
    if left.image_size != right.image_size:
        raise DataError(f"left images are {left.image_size} but right images {right.image_size}")
    excluded = dict(excluded or {})
    used = list(pairs)
    pts1, pts2 = [pairs[n][0] for n in used], [pairs[n][1] for n in used]
    object_points = board_points(pattern, square)
    if len(used) < MIN_VIEWS:
        raise DataError(
            f"only {len(used)} usable pairs (need {MIN_VIEWS}); excluded: {sorted(excluded)[:10]}; "
            f"why: {'; '.join(sorted(set(excluded.values()))[:3])}"
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
