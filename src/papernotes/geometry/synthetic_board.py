"""Rendered chessboard views with known intrinsics, distortion and poses: the ground truth for calibration.

Not a paper method. Each output pixel is traced back to the board: its normalised, undistorted ray
(``cv2.undistortPoints`` inverts the Brown-Conrady distortion model of OpenCV) is intersected with the
board plane z = 0 of the board frame, and the board's checker colour at that point is the pixel value
(2x2 supersampled). The true corner positions come from ``cv2.projectPoints`` with the same model, so
a calibration can be compared with the truth. Noise and blur make the views realistic.

Board geometry: ``pattern = (cols, rows)`` inner corners, ``square`` metres per square; corner (i, j) sits
at (i·square, j·square, 0), and the board has one more square on each side plus a white margin.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from papernotes.errors import ConfigError


@dataclass
class BoardView:
    image: np.ndarray  # (H, W) uint8
    corners: np.ndarray  # (cols·rows, 2) true pixel positions, row-major from corner (0, 0)
    rvec: np.ndarray  # (3,) board -> camera rotation (Rodrigues)
    tvec: np.ndarray  # (3,) board -> camera translation, metres


def board_in_view(corners: np.ndarray, image_size: tuple[int, int], margin: float = 40.0) -> bool:
    """Whether every inner corner lies at least ``margin`` pixels inside the image (room for the outer
    squares, so that a detector sees the whole board)."""
    width, height = image_size
    x, y = corners[:, 0], corners[:, 1]
    return bool(
        x.min() >= margin and y.min() >= margin and x.max() < width - margin and y.max() < height - margin
    )


def board_points(pattern: tuple[int, int], square: float) -> np.ndarray:
    """Inner-corner coordinates (cols·rows, 3) on the board plane, in the order OpenCV detects them."""
    cols, rows = pattern
    if cols < 2 or rows < 2:
        raise ConfigError(f"pattern must have at least 2x2 inner corners, got {pattern}")
    grid = np.mgrid[0:cols, 0:rows].T.reshape(-1, 2).astype(np.float32)  # (i, j), i fastest
    return np.hstack([grid * square, np.zeros((len(grid), 1), np.float32)])


def render_view(
    K: np.ndarray,
    dist: np.ndarray,
    rvec: np.ndarray,
    tvec: np.ndarray,
    pattern: tuple[int, int],
    square: float,
    image_size: tuple[int, int],
    noise: float = 2.0,
    blur: float = 0.6,
    rng: np.random.Generator | None = None,
) -> BoardView:
    """One grey view (H, W) of the board at pose (rvec, tvec) through camera (K, dist)."""
    width, height = image_size
    rng = rng or np.random.default_rng(0)
    sub = 2  # supersampling factor per axis
    ys, xs = np.mgrid[0 : height * sub, 0 : width * sub].astype(np.float64)
    pixels = np.stack([(xs + 0.5) / sub - 0.5, (ys + 0.5) / sub - 0.5], axis=-1).reshape(-1, 1, 2)
    rays = cv2.undistortPoints(pixels, K, dist).reshape(-1, 2)  # normalised, distortion removed
    R, _ = cv2.Rodrigues(np.asarray(rvec, np.float64))
    t = np.asarray(tvec, np.float64).reshape(3)
    normal = R[:, 2]  # the board's z axis in the camera frame
    directions = np.hstack([rays, np.ones((len(rays), 1))])  # (P, 3)
    depth = (normal @ t) / (directions @ normal)  # ray parameter where it meets the board plane
    points = (directions * depth[:, None] - t) @ R  # board-frame coordinates (R^T applied row-wise)
    u, v = points[:, 0] / square, points[:, 1] / square
    cols, rows = pattern
    on_board = (u >= -1) & (u < cols) & (v >= -1) & (v < rows) & (depth > 0)
    dark = ((np.floor(u) + np.floor(v)) % 2 == 0) & on_board
    image = np.where(dark, 30.0, 225.0).reshape(height * sub, width * sub)
    image = image.reshape(height, sub, width, sub).mean(axis=(1, 3))  # (H, W) box-filtered
    if blur > 0:
        image = cv2.GaussianBlur(image, (0, 0), blur)
    image = np.clip(image + rng.normal(0, noise, image.shape), 0, 255).astype(np.uint8)
    corners, _ = cv2.projectPoints(board_points(pattern, square), rvec, tvec, K, dist)
    return BoardView(image, corners.reshape(-1, 2), np.asarray(rvec, float), np.asarray(tvec, float))


def random_poses(
    count: int,
    pattern: tuple[int, int],
    square: float,
    distance: float = 0.6,
    seed: int = 0,
    offset: tuple[float, float] = (0.0, 0.0),
    max_tilt: float = 0.5,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Board poses facing the camera, tilted up to ``max_tilt`` radians about x and y and turned up to
    0.3 rad in plane, centred near (x, y) = ``offset`` metres off the optical axis."""
    rng = np.random.default_rng(seed)
    cols, rows = pattern
    centre = np.array([(cols - 1) * square / 2, (rows - 1) * square / 2, 0.0])
    poses = []
    for _ in range(count):
        tilt = rng.uniform(-max_tilt, max_tilt, 2)
        rvec = np.array([tilt[0], tilt[1], rng.uniform(-0.3, 0.3)])
        R, _ = cv2.Rodrigues(rvec)
        target = np.array(
            [
                offset[0] + rng.uniform(-0.1, 0.1) * distance,
                offset[1] + rng.uniform(-0.08, 0.08) * distance,
                distance * rng.uniform(0.85, 1.2),
            ]
        )
        poses.append((rvec, target - R @ centre))  # the board centre lands at `target`
    return poses


def look_at(position, target) -> tuple[np.ndarray, np.ndarray]:
    """(R, T) of an upright camera at ``position`` aimed at ``target``: X_cam = R X_world + T.

    The world follows OpenCV's camera convention (x right, y down, z forward), so a camera at the origin
    looking down +z has R = I.
    """
    position, target = np.asarray(position, float), np.asarray(target, float)
    z = (target - position) / np.linalg.norm(target - position)
    x = np.cross([0.0, 1.0, 0.0], z)  # image x: perpendicular to world "down" and the viewing direction
    x /= np.linalg.norm(x)
    R = np.stack([x, np.cross(z, x), z])  # rows: the camera's axes in world coordinates
    return R, -R @ position


def render_rig(
    Ks: list[np.ndarray],
    dists: list[np.ndarray],
    Rs: list[np.ndarray],
    Ts: list[np.ndarray],
    board_poses: list[tuple[np.ndarray, np.ndarray]],
    pattern: tuple[int, int],
    square: float,
    image_size: tuple[int, int],
    noise: float = 2.0,
    blur: float = 0.6,
    seed: int = 0,
) -> list[list[BoardView]]:
    """Synchronised views [camera][frame] of boards posed in the world frame (X_world = R_b X_board + t_b)
    by cameras with X_cam = R_c X_world + T_c."""
    rng = np.random.default_rng(seed)
    views = []
    for K, dist, Rc, Tc in zip(Ks, dists, Rs, Ts):
        row = []
        for rvec, tvec in board_poses:
            Rb = cv2.Rodrigues(np.asarray(rvec, np.float64))[0]
            r_cam = cv2.Rodrigues(Rc @ Rb)[0].reshape(3)  # board -> camera: R_c R_b, R_c t_b + T_c
            t_cam = Rc @ np.asarray(tvec, float).reshape(3) + np.asarray(Tc, float).reshape(3)
            row.append(render_view(K, dist, r_cam, t_cam, pattern, square, image_size, noise, blur, rng))
        views.append(row)
    return views
