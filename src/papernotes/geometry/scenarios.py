"""The synthetic calibration set-ups with known truth that the ``calibration`` experiment, the translation
study and the tests share: a four-camera rig, a stereo pair, and corners observed with Gaussian noise.

Not a paper method. Corners are the true projections (``cv2.projectPoints``) plus N(0, ``noise`` px), so
that numbers built on them measure the calibration, not the detector.
"""

from __future__ import annotations

import cv2
import numpy as np

from papernotes.geometry.rig import relative_to
from papernotes.geometry.synthetic_board import board_in_view, board_points, look_at

PATTERN, SQUARE, IMAGE_SIZE = (9, 6), 0.04, (640, 480)  # inner corners, metres per square, (W, H) pixels
NOISE_PX = 0.1  # corner noise, pixels (a good detector on a sharp image)


def rig_truth() -> dict[str, list[np.ndarray]]:
    """Four cameras on a 50 x 30 cm frame aimed at a point 1.2 m ahead, with different lenses."""
    positions = [(-0.25, -0.15, 0), (0.25, -0.15, 0), (-0.25, 0.15, 0), (0.25, 0.15, 0)]
    poses = [look_at(p, (0, 0, 1.2)) for p in positions]
    lenses = [(800, 320, 240), (790, 325, 238), (810, 318, 243), (805, 322, 236)]
    K = [np.array([[f, 0, cx], [0, f, cy], [0, 0, 1.0]]) for f, cx, cy in lenses]
    dist = [
        np.array(d)
        for d in (
            [-0.12, 0.08, 0, 0, 0],
            [-0.1, 0.05, 0.001, 0, 0],
            [-0.15, 0.1, 0, 0.001, 0],
            [-0.08, 0.02, 0, 0, 0],
        )
    ]
    R, T = relative_to([r for r, _ in poses], [t for _, t in poses], 0)
    return {"K": K, "dist": dist, "R": R, "T": T}


def stereo_truth(aim: float = 1.7) -> dict[str, list[np.ndarray]]:
    """A 12 cm stereo pair, each camera toed in towards a point ``aim`` metres ahead (2 degrees at 1.7 m)."""
    poses = [look_at(p, (0, 0, aim)) for p in ((-0.06, 0, 0), (0.06, 0, 0))]
    K = [
        np.array([[700.0, 0, 322], [0, 700, 241], [0, 0, 1]]),
        np.array([[705.0, 0, 317], [0, 705, 238], [0, 0, 1]]),
    ]
    dist = [np.array([-0.2, 0.1, 0, 0, 0]), np.array([-0.18, 0.09, 0, 0, 0])]
    R, T = relative_to([r for r, _ in poses], [t for _, t in poses], 0)
    return {"K": K, "dist": dist, "R": R, "T": T}


def noisy_corners(
    rvec, tvec, K, dist, rng: np.random.Generator, noise: float = NOISE_PX
) -> np.ndarray | None:
    """True projections + N(0, noise px), or None where the board is not wholly in the picture."""
    points, _ = cv2.projectPoints(board_points(PATTERN, SQUARE), rvec, tvec, K, dist)
    points = points.reshape(-1, 2)
    if not board_in_view(points, IMAGE_SIZE):
        return None
    return (points + rng.normal(0, noise, points.shape)).astype(np.float32)


def board_to_camera(rvec, tvec, R, T) -> tuple[np.ndarray, np.ndarray]:
    """A board pose in the reference camera's frame -> the same board seen by camera (R, T)."""
    Rb = cv2.Rodrigues(np.asarray(rvec, float))[0]
    return cv2.Rodrigues(R @ Rb)[0].reshape(3), R @ np.asarray(tvec, float) + T
