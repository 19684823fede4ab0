"""Rendered chessboard views with known intrinsics, distortion and poses: the ground truth for calibration.

Not a paper method. Each output pixel is traced back to the board: its normalised, undistorted ray
(``cv2.undistortPoints`` inverts the Brown-Conrady distortion model of OpenCV) is intersected with the
board plane z = 0 of the board frame, and the board's checker colour at that point is the pixel value
(2x2 supersampled). The true corner positions come from ``cv2.projectPoints`` with the same model, so
a calibration can be compared with the truth. Noise and blur make the views realistic; a
:class:`~papernotes.geometry.photo_effects.PhotoStyle` adds what real photographs of printed boards show
(a trimmed outer ring, a paper margin and the room beyond it, uneven lighting, vignetting, defocus, motion
blur, JPEG), each with its own switch.

Board geometry: ``pattern = (cols, rows)`` inner corners, ``square`` metres per square; corner (i, j) sits
at (i·square, j·square, 0), and the board has one more square on each side (``style.ring`` of it printed)
plus a white margin (``style.paper_margin``; by default the paper never ends).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import cv2
import numpy as np

from papernotes.errors import ConfigError
from papernotes.geometry.photo_effects import PhotoStyle, apply_photo_effects


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


SUPERSAMPLING = 2  # samples per pixel along each axis


def camera_rays(
    K: np.ndarray, dist: np.ndarray, image_size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Undistorted ray directions (x, y, 1) through every supersample of the image: x and y, (H·s · W·s,)."""
    K, dist = np.asarray(K, np.float64), np.asarray(dist, np.float64).reshape(-1)
    return _camera_rays(K.tobytes(), dist.tobytes(), tuple(image_size))


@functools.lru_cache(maxsize=4)  # a rig renders every frame through the same few cameras
def _camera_rays(
    K_bytes: bytes, dist_bytes: bytes, image_size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    K, dist = np.frombuffer(K_bytes).reshape(3, 3), np.frombuffer(dist_bytes)
    width, height = image_size
    sub = SUPERSAMPLING
    ys, xs = np.mgrid[0 : height * sub, 0 : width * sub].astype(np.float64)
    pixels = np.stack([(xs + 0.5) / sub - 0.5, (ys + 0.5) / sub - 0.5], axis=-1).reshape(-1, 1, 2)
    rays = cv2.undistortPoints(pixels, K, dist).reshape(-1, 2)  # normalised, distortion removed
    x, y = np.ascontiguousarray(rays[:, 0]), np.ascontiguousarray(rays[:, 1])
    x.flags.writeable = y.flags.writeable = False  # shared between calls
    return x, y


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
    style: PhotoStyle | None = None,
) -> BoardView:
    """One grey view (H, W) of the board at pose (rvec, tvec) through camera (K, dist); ``noise`` (grey
    levels) and ``blur`` (Gaussian sigma, pixels) always apply, ``style`` adds the photographic effects."""
    width, height = image_size
    rng = rng or np.random.default_rng(0)
    style = style or PhotoStyle()
    sub = SUPERSAMPLING
    x, y = camera_rays(K, dist, image_size)  # (P,) each, P = H·sub · W·sub; the ray is (x, y, 1)
    R, _ = cv2.Rodrigues(np.asarray(rvec, np.float64))
    t = np.asarray(tvec, np.float64).reshape(3)
    along = [x * R[0, k] + y * R[1, k] + R[2, k] for k in range(3)]  # the ray in the board's axes: R^T ray
    depth = (R[:, 2] @ t) / along[2]  # ray parameter where it meets the board plane (normal R[:, 2])
    origin = t @ R  # the board-frame point X = depth · ray − R^T t
    u = (depth * along[0] - origin[0]) / square  # board coordinates, in squares
    v = (depth * along[1] - origin[1]) / square
    cols, rows = pattern
    ring = style.ring  # the print holds this much of the outer squares
    printed = (u >= -ring) & (u < cols - 1 + ring) & (v >= -ring) & (v < rows - 1 + ring) & (depth > 0)
    with np.errstate(invalid="ignore"):  # rays that miss the board (infinite u, v) are masked by `printed`
        dark = ((np.floor(u) + np.floor(v)).astype(np.int64) & 1 == 0) & printed
    image = np.where(dark, 30.0, 225.0)
    if style.paper_margin is not None:  # beyond the paper: the room
        edge = ring + style.paper_margin
        paper = (u >= -edge) & (u < cols - 1 + edge) & (v >= -edge) & (v < rows - 1 + edge) & (depth > 0)
        image = np.where(paper, image, style.background)
    image = image.reshape(height, sub, width, sub).mean(axis=(1, 3))  # (H, W) box-filtered
    image = apply_photo_effects(image, style, noise, blur, rng)
    corners = project_board(K, dist, rvec, tvec, pattern, square)
    return BoardView(image, corners, np.asarray(rvec, float), np.asarray(tvec, float))


def project_board(K, dist, rvec, tvec, pattern: tuple[int, int], square: float) -> np.ndarray:
    """The true pixel positions (cols·rows, 2) of the inner corners, without rendering (to choose poses)."""
    corners, _ = cv2.projectPoints(board_points(pattern, square), rvec, tvec, K, dist)
    return corners.reshape(-1, 2)


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
    style: PhotoStyle | None = None,
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
            row.append(
                render_view(K, dist, r_cam, t_cam, pattern, square, image_size, noise, blur, rng, style)
            )
        views.append(row)
    return views
