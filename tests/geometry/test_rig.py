"""Rig extrinsics from noisy projected corners: both starts (calibrateMultiview and the spanning tree)."""

import cv2
import numpy as np
import pytest

from papernotes.geometry.calibration import calibrate_from_corners
from papernotes.geometry.experiments import IMAGE_SIZE, PATTERN, SQUARE, rig_truth
from papernotes.geometry.rig import solve_rig
from papernotes.geometry.synthetic_board import board_in_view, board_points, random_poses


def _corners(rvec, tvec, K, dist, rng):
    points = cv2.projectPoints(board_points(PATTERN, SQUARE), rvec, tvec, K, dist)[0].reshape(-1, 2)
    return (
        (points + rng.normal(0, 0.1, points.shape)).astype(np.float32)
        if board_in_view(points, IMAGE_SIZE)
        else None
    )


@pytest.mark.parametrize("method", ["tree", "multiview"])
def test_both_starts_recover_the_rig(method):
    if method == "multiview" and not hasattr(cv2, "calibrateMultiview"):
        pytest.skip("this OpenCV has no calibrateMultiview")
    truth, rng = rig_truth(), np.random.default_rng(0)
    cameras = []
    for c in range(4):
        found = {}
        for v, (r, t) in enumerate(random_poses(25, PATTERN, SQUARE, distance=0.9, seed=c)):
            corners = _corners(r, t, truth["K"][c], truth["dist"][c], rng)
            if corners is not None:
                found[f"v{v}"] = corners
        cameras.append(calibrate_from_corners(found, PATTERN, SQUARE, IMAGE_SIZE))
    corners = [[None] * 15 for _ in range(4)]
    for f, (r, t) in enumerate(random_poses(15, PATTERN, SQUARE, distance=1.2, seed=9)):
        Rb = cv2.Rodrigues(r)[0]
        for c in range(4):
            rc = cv2.Rodrigues(truth["R"][c] @ Rb)[0]
            corners[c][f] = _corners(
                rc, truth["R"][c] @ t + truth["T"][c], truth["K"][c], truth["dist"][c], rng
            )
    keep = [f for f in range(15) if any(corners[c][f] is not None for c in range(4))]
    corners = [[row[f] for f in keep] for row in corners]
    R, T, rms, per_camera, used = solve_rig(corners, board_points(PATTERN, SQUARE), cameras, method=method)
    assert used == method and rms < 0.2 and max(per_camera) < 0.2  # 0.1 px noise -> about 0.14 px
    for c in range(1, 4):
        angle = np.rad2deg(np.linalg.norm(cv2.Rodrigues(R[c] @ truth["R"][c].T)[0]))
        assert angle < 0.2 and np.linalg.norm(T[c] - truth["T"][c]) < 0.005
