"""Drawing a rig: camera centres and optical axes on a matplotlib axis (for reports and ``reproduce``)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def draw_cameras(
    ax,
    R: Sequence[np.ndarray],
    T: Sequence[np.ndarray],
    dims: tuple[int, int] = (0, 2),
    marker: str = "o",
    axis_length: float = 0.1,
    labels: bool = False,
) -> None:
    """One marker per camera at its centre C = -R^T T and an arrow along its optical axis (R's third row),
    projected onto the reference-frame coordinates ``dims`` ((0, 2): seen from above)."""
    i, j = dims
    for c, (Rc, Tc) in enumerate(zip(R, T)):
        centre = -Rc.T @ np.asarray(Tc).reshape(3)  # camera centre in the reference frame
        axis = Rc[2] * axis_length
        ax.plot(centre[i], centre[j], marker, color=f"C{c}", ms=9)
        if labels:
            ax.annotate(f"cam {c}", (centre[i], centre[j]), textcoords="offset points", xytext=(5, 5))
        ax.annotate(
            "",
            (centre[i] + axis[i], centre[j] + axis[j]),
            (centre[i], centre[j]),
            arrowprops={"arrowstyle": "->", "color": f"C{c}"},
        )
