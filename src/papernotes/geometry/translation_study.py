"""Why the stereo translation goal (< 1 mm per metre of baseline) is missed: the error of T against the
board's distance and against the number of views, with 0.1 px corner noise.

Not a paper method; the numbers behind the goal's verdict in ``docs/calibration.md``. Each camera is first
calibrated on its own session (:func:`~papernotes.geometry.calibration.calibrate_from_corners`), then
``cv2.stereoCalibrate`` finds R and T from synchronised frames with the intrinsics fixed (OpenCV's default,
as :mod:`~papernotes.geometry.stereo` does), or refined jointly (``CALIB_USE_INTRINSIC_GUESS``).

Why distance matters: a focal error δ makes a camera see the board at depth Z(1 + δ). Two cameras with
independent errors δ_l, δ_r disagree about where the board is by about Z·|δ_l − δ_r| along the viewing
direction, and T absorbs that. The error in millimetres therefore grows with Z and does not shrink with the
baseline, so per metre of a short baseline it is large. Fewer pixels of noise per view, or more views, shrink
δ only as 1/√N.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from papernotes.geometry.calibration import calibrate_from_corners
from papernotes.geometry.scenarios import (
    IMAGE_SIZE,
    PATTERN,
    SQUARE,
    board_to_camera,
    noisy_corners,
    stereo_truth,
)
from papernotes.geometry.synthetic_board import board_points, random_poses

INTRINSIC_DISTANCE = 0.9  # metres: each camera's own session, where the board fills much of its picture


@dataclass
class TranslationTrial:
    distance_m: float  # board distance in the stereo session, metres
    views: int  # board poses tried per camera for its intrinsics; the stereo session tries 3/4 as many
    seed: int
    baseline_m: float
    focal_pct: float  # the worse camera's |f / f_true − 1|, per cent
    focal_gap_pct: float  # |δ_left − δ_right|, per cent: the part that moves T
    translation_mm: float  # |T − T_true| with the intrinsics fixed
    translation_mm_joint: float  # the same with the intrinsics refined in the stereo step
    frames: int  # stereo frames where both cameras saw the whole board (NaN errors below 3)


def stereo_trial(
    distance: float,
    views: int,
    seed: int,
    noise: float = 0.1,
    intrinsic_distance: float = INTRINSIC_DISTANCE,
) -> TranslationTrial:
    """One stereo calibration of :func:`~papernotes.geometry.scenarios.stereo_truth` (a fixed pair: only the
    board moves) from noisy corners."""
    truth = stereo_truth()
    rng = np.random.default_rng(seed)
    object_points = board_points(PATTERN, SQUARE)
    cameras = []
    for c in range(2):
        found = {}
        poses = random_poses(views, PATTERN, SQUARE, distance=intrinsic_distance, seed=seed * 10 + c)
        for v, (r, t) in enumerate(poses):
            corners = noisy_corners(r, t, truth["K"][c], truth["dist"][c], rng, noise)
            if corners is not None:
                found[f"view{v}"] = corners
        cameras.append(calibrate_from_corners(found, PATTERN, SQUARE, IMAGE_SIZE))
    left, right = [], []
    frames = random_poses(max(3, 3 * views // 4), PATTERN, SQUARE, distance=distance, seed=seed * 10 + 7)
    for r, t in frames:
        in_cameras = [board_to_camera(r, t, truth["R"][c], truth["T"][c]) for c in range(2)]
        seen = [
            noisy_corners(*pose, truth["K"][c], truth["dist"][c], rng, noise)
            for c, pose in enumerate(in_cameras)
        ]
        if seen[0] is not None and seen[1] is not None:
            left.append(seen[0])
            right.append(seen[1])
    errors = [float("nan"), float("nan")]
    for k, flags in enumerate((cv2.CALIB_FIX_INTRINSIC, cv2.CALIB_USE_INTRINSIC_GUESS)):
        if len(left) < 3:  # the board no longer fits both pictures at this distance
            break
        *_, T, _, _ = cv2.stereoCalibrate(
            [object_points] * len(left), left, right,
            cameras[0].K.copy(), cameras[0].dist.copy(), cameras[1].K.copy(), cameras[1].dist.copy(),
            IMAGE_SIZE, flags=flags,
        )  # fmt: skip
        errors[k] = 1000 * float(np.linalg.norm(T.reshape(3) - truth["T"][1]))
    deltas = [cam.K[0, 0] / K[0, 0] - 1 for cam, K in zip(cameras, truth["K"])]
    return TranslationTrial(
        distance, views, seed, float(np.linalg.norm(truth["T"][1])),
        100 * max(abs(d) for d in deltas), 100 * abs(deltas[0] - deltas[1]), errors[0], errors[1],
        len(left),
    )  # fmt: skip


def translation_study(
    distances: Sequence[float], views: Sequence[int], seeds: int, base_distance: float, base_views: int
) -> dict[str, list[dict[str, float]]]:
    """Mean over ``seeds`` trials of each cell: one sweep over the stereo session's distance (at
    ``base_views``), one over the number of views (at ``base_distance``). Rows hold distance, views, focal
    errors, the predicted and measured T error in mm, and mm per metre of baseline, fixed and joint."""

    def row(distance: float, n: int) -> dict[str, float]:
        trials = [stereo_trial(distance, n, seed) for seed in range(seeds)]
        mean = {k: float(np.nanmean([getattr(t, k) for t in trials])) for k in vars(trials[0])}
        baseline = mean["baseline_m"]
        return {
            "distance_m": distance,
            "views": n,
            "frames": mean["frames"],
            "focal_pct": mean["focal_pct"],
            "focal_gap_pct": mean["focal_gap_pct"],
            "predicted_mm": 10 * mean["focal_gap_pct"] * distance,  # Z·|δ_l − δ_r|, the model above
            "translation_mm": mean["translation_mm"],
            "mm_per_m": mean["translation_mm"] / baseline,
            "joint_mm_per_m": mean["translation_mm_joint"] / baseline,
        }

    return {
        "by_distance": [row(d, base_views) for d in distances],
        "by_views": [row(base_distance, n) for n in views],
    }
