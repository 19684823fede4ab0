"""The shifted-grid guard: a grid shifted by one square onto the board's edge is refused (with its reason,
listed by the calibration), while real-looking boards are kept; and the renderer's photo effects."""

import cv2
import numpy as np
import pytest

from papernotes.errors import ConfigError
from papernotes.geometry.board_check import ring_problem, side_ratios
from papernotes.geometry.calibration import calibrate_camera, find_chessboard
from papernotes.geometry.photo_effects import PHOTO_STYLES, PhotoStyle
from papernotes.geometry.synthetic_board import board_in_view, random_poses, render_view

K = np.array([[800.0, 0, 320], [0, 800.0, 240], [0, 0, 1]])
DIST = np.array([-0.12, 0.08, 0.0, 0.0, 0.0])
PATTERN, SQUARE, SIZE = (9, 6), 0.04, (640, 480)
STYLES = {
    "ideal": PhotoStyle(),  # white paper to infinity, the old renderer
    "margin": PhotoStyle(paper_margin=0.3, background=60.0),  # a thin margin on a dark desk
    "photo": PHOTO_STYLES["photo"],  # trimmed ring, margin, room, light, lens, shake, JPEG
}
# a board running off the bottom of the image, photo style: findChessboardCornersSB locks onto a grid whose
# last column is the board's edge (found by a search over such poses; full precision keeps it reproducible)
SHIFTED_POSE = (
    np.array([-0.003071180322326339, -0.2940891441882726, -0.2918396128369794]),
    np.array([-0.17988899907289108, 0.05522567021501605, 0.7936388889417935]),
)


def project(u, v, rvec, tvec):
    """Board points (u, v) in squares -> pixels (N, 2)."""
    points = np.stack([np.ravel(u), np.ravel(v), np.zeros(np.size(u))], axis=1) * SQUARE
    return cv2.projectPoints(points, rvec, tvec, K, DIST)[0].reshape(-1, 2)


def shifted_grids(rvec, tvec, ring: float) -> dict[str, np.ndarray]:
    """The grids a detector sees when it takes the board's edge for a row of corners: the true grid less
    one outer row or column, plus the row where the printed ring ends, in OpenCV's order."""
    cols, rows = PATTERN
    i, j = np.meshgrid(np.arange(cols, dtype=float), np.arange(rows, dtype=float))  # (rows, cols)
    grids = {}
    for name, di, dj in (("+i", 1, 0), ("-i", -1, 0), ("+j", 0, 1), ("-j", 0, -1)):
        u, v = i + di, j + dj
        u = np.where(
            u > cols - 1, cols - 1 + ring, np.where(u < 0, -ring, u)
        )  # the edge, not a lattice point
        v = np.where(v > rows - 1, rows - 1 + ring, np.where(v < 0, -ring, v))
        grids[name] = project(u, v, rvec, tvec)
    return grids


@pytest.fixture(scope="module")
def whole_views():
    """Per style, two views whose board (and ring) is wholly in the picture."""
    poses = random_poses(6, PATTERN, SQUARE, distance=0.8, seed=5)
    out = {}
    for name, style in STYLES.items():
        views = [render_view(K, DIST, r, t, PATTERN, SQUARE, SIZE, style=style) for r, t in poses[:3]]
        out[name] = [v for v in views if board_in_view(v.corners, SIZE, margin=60)][:2]
        assert len(out[name]) == 2
    return out


def test_true_grids_are_kept_and_grids_shifted_onto_the_edge_are_refused(whole_views):
    for name, views in whole_views.items():
        for view in views:
            assert ring_problem(view.image, view.corners, PATTERN) is None, name
            assert min(side_ratios(view.image, view.corners, PATTERN).values()) > 0.8, name
            for shift, grid in shifted_grids(view.rvec, view.tvec, STYLES[name].ring).items():
                why = ring_problem(view.image, grid, PATTERN)
                assert why is not None and "a grid shifted by one square" in why, (name, shift)


def test_a_shifted_grid_found_by_the_detector_is_refused_and_listed_with_its_reason(whole_views):
    view = render_view(K, DIST, *SHIFTED_POSE, PATTERN, SQUARE, SIZE, style=STYLES["photo"])
    assert not board_in_view(view.corners, SIZE, margin=0)  # the board runs off the image
    found, raw = cv2.findChessboardCornersSB(view.image, PATTERN, flags=cv2.CALIB_CB_EXHAUSTIVE)
    # the precondition: OpenCV's detector does return a grid, the board's own but for one row of corners
    # that is not the board's (the true one is off the image; the detector took the edge instead)
    distance = np.linalg.norm(raw.reshape(-1, 1, 2) - view.corners[None], axis=2).min(axis=1)
    assert found and (distance < 1).sum() >= 40 and (distance > 3).sum() >= 5, (
        "the detector no longer returns the shifted grid this test needs"
    )
    corners, why = find_chessboard(view.image, PATTERN)
    assert corners is None and "grid rejected" in why and "last column" in why
    good = [v.image for v in whole_views["photo"]] + [whole_views["margin"][0].image]
    calib = calibrate_camera([*good, view.image], PATTERN, SQUARE, names=["a", "b", "c", "shifted"])
    assert set(calib.view_errors) == {"a", "b", "c"} and calib.excluded == {"shifted": why}


def test_photo_effects_switch_one_by_one_and_keep_the_ground_truth():
    r, t = random_poses(1, PATTERN, SQUARE, distance=0.8, seed=2)[0]
    ideal = render_view(K, DIST, r, t, PATTERN, SQUARE, SIZE)
    switches = {
        "ring": PhotoStyle(ring=0.5),
        "paper_margin": PhotoStyle(paper_margin=0.5),
        "lighting": PhotoStyle(lighting=0.4),
        "vignetting": PhotoStyle(vignetting=0.4),
        "defocus": PhotoStyle(defocus=1.5),
        "motion_blur": PhotoStyle(motion_blur=3.0),
        "jpeg_quality": PhotoStyle(jpeg_quality=50),
    }
    for name, style in switches.items():
        view = render_view(K, DIST, r, t, PATTERN, SQUARE, SIZE, style=style)
        assert np.array_equal(view.corners, ideal.corners), name  # the truth does not move
        assert np.abs(view.image.astype(int) - ideal.image).mean() > 0.3, name  # the switch does something
    photo = render_view(K, DIST, r, t, PATTERN, SQUARE, SIZE, style=PHOTO_STYLES["photo"])
    corners, why = find_chessboard(photo.image, PATTERN)
    assert why == "" and np.abs(corners - photo.corners).max() < 0.6  # symmetric kernels keep corners
    with pytest.raises(ConfigError, match="ring"):
        PhotoStyle(ring=1.5)
    with pytest.raises(ConfigError, match="jpeg_quality"):
        PhotoStyle(jpeg_quality=0)
