"""Whether a detected chessboard grid is the board's own, or a grid shifted by one square onto its edge.

Not a paper method; a guard for rigs. When the board runs off the image, a detector can lock onto a grid
shifted by one square, whose outer "corners" lie where the board's outer squares meet the paper margin.
That view is self-consistent (``calibrateCamera`` just moves the board by a square), but in a rig it
contradicts the other cameras. What gives it away is the far side of that outer row: a board's own
grid has its outer ring of squares there, alternating dark and light in the opposite phase to the
squares just inside the grid; a shifted grid has the plain margin there.

The test, per side of the grid: sample the image a short way (``DEPTH`` of a square) beyond and within the
outer row of corners, at the middle of each edge between two neighbouring corners, and compare how much
the two rows of samples alternate. Everything is local (each sample is placed from its own two corners and
the next row in), because the first version of this check extrapolated a homography to the centres of
the ring squares and failed on every real photograph (issue 20): under strong lens distortion the
extrapolation lands half a square off, and printed boards are often trimmed inside the outer ring. The
alternation is measured by second differences, which a lighting gradient or vignetting does not fake.
Sides whose ring lies outside the image, or whose inner row shows no contrast, are not judged.
"""

from __future__ import annotations

import cv2
import numpy as np

DEPTH = 0.25  # how far beyond and within the grid's outer row to sample, in squares (a trim leaves >= 0.5)
ALONG = (-0.2, 0.0, 0.2)  # offsets along the edge from its midpoint, in edge lengths: three samples averaged
MIN_RATIO = 0.5  # the ring alternates at least half as strongly as the row inside, in opposite phase
MIN_CONTRAST = 8.0  # grey levels of alternation the inner row needs for a side to be judged at all
SIDES = ("first row", "last row", "first column", "last column")


def _bilinear(image: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Values of a float image (H, W) at points (P, 2) (x, y); NaN within a pixel of the border or beyond."""
    height, width = image.shape
    x, y = points[:, 0], points[:, 1]
    inside = (x >= 1) & (x <= width - 2) & (y >= 1) & (y <= height - 2)
    values = np.full(len(points), np.nan)
    x, y = x[inside], y[inside]
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = x - x0, y - y0
    values[inside] = (
        image[y0, x0] * (1 - fx) * (1 - fy)
        + image[y0, x0 + 1] * fx * (1 - fy)
        + image[y0 + 1, x0] * (1 - fx) * fy
        + image[y0 + 1, x0 + 1] * fx * fy
    )
    return values


def _alternation(values: np.ndarray) -> float:
    """Mean of (−1)^k (x_k − (x_{k−1} + x_{k+1}) / 2) over the k whose three samples exist: ±2A for a row
    alternating ±A, 0 for a ramp (a lighting gradient); NaN when no such k exists."""
    terms = [(-1) ** k * (values[k] - (values[k - 1] + values[k + 1]) / 2) for k in range(1, len(values) - 1)]
    terms = [t for t in terms if np.isfinite(t)]
    return float(np.mean(terms)) if terms else float("nan")


def side_ratios(grey: np.ndarray, corners: np.ndarray, pattern: tuple[int, int]) -> dict[str, float]:
    """Per side of the grid: how strongly the squares beyond it alternate against the squares within it
    (about 1 for a board's own ring, about 0 for a plain margin; NaN where the side is not judged)."""
    cols, rows = pattern
    grid = np.asarray(corners, np.float64).reshape(rows, cols, 2)  # grid[j, i]: OpenCV's order, i fastest
    edges = {
        "first row": (grid[0], grid[1]),
        "last row": (grid[-1], grid[-2]),
        "first column": (grid[:, 0], grid[:, 1]),
        "last column": (grid[:, -1], grid[:, -2]),
    }
    smooth = cv2.GaussianBlur(np.asarray(grey, np.float64), (0, 0), 1.0)  # JPEG blocks and sensor noise
    ratios = {}
    for side, (outer, inner) in edges.items():
        middle = (outer[1:] + outer[:-1]) / 2  # (E, 2) midpoints of the outer row's edges
        outward = middle - (inner[1:] + inner[:-1]) / 2  # one square outward, locally
        along = outer[1:] - outer[:-1]  # (E, 2) the edges themselves
        ring, within = np.zeros(len(middle)), np.zeros(len(middle))
        for s in ALONG:
            ring += _bilinear(smooth, middle + DEPTH * outward + s * along) / len(ALONG)
            within += _bilinear(smooth, middle - DEPTH * outward + s * along) / len(ALONG)
        judged = np.isfinite(ring) & np.isfinite(within)
        ring[~judged] = within[~judged] = np.nan  # compare the two rows over the same edges only
        a_within, a_ring = _alternation(within), _alternation(ring)
        usable = np.isfinite(a_within) and abs(a_within) >= MIN_CONTRAST
        ratios[side] = -a_ring / a_within if usable else float("nan")
    return ratios


def ring_problem(grey: np.ndarray, corners: np.ndarray, pattern: tuple[int, int]) -> str | None:
    """None when every judged side of the grid has a board's ring beyond it; otherwise why not, in words."""
    for side, ratio in side_ratios(grey, corners, pattern).items():
        if ratio < MIN_RATIO:  # NaN (not judged) compares False
            return (
                f"{pattern[0]}x{pattern[1]} grid rejected: the squares beyond its {side} do not alternate "
                f"like a board's outer ring ({ratio:.2f} of the inner row's contrast, need {MIN_RATIO}); "
                "a grid shifted by one square onto the board's edge?"
            )
    return None


def board_is_whole(grey: np.ndarray, corners: np.ndarray, pattern: tuple[int, int]) -> bool:
    """Whether the detected grid is the board's own (no side shows a plain margin where its ring must be)."""
    return ring_problem(grey, corners, pattern) is None
