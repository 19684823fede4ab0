"""Real photographs for the calibration tests: OpenCV's stereo chessboard samples, as Debian packages them.

``left01.jpg`` .. ``left14.jpg`` and ``right01.jpg`` .. ``right14.jpg`` (no 10): 13 synchronised pairs of a
printed 10 x 7-square board (9 x 6 inner corners), 640 x 480, JPEG, from a stereo pair with a strongly
distorting lens. The Debian package ``opencv-doc`` installs them under
``/usr/share/doc/opencv-doc/examples/data``; ``PAPERNOTES_OPENCV_SAMPLES`` may point elsewhere. Missing
photographs fail the tests (they never skip): CI installs the package.
"""

import os
from pathlib import Path

import pytest

SAMPLE_DIRS = [Path("/usr/share/doc/opencv-doc/examples/data")]
PAIRS = [f"{k:02d}" for k in range(1, 15) if k != 10]


def opencv_sample_dir() -> Path:
    candidates = [Path(p) for p in [os.environ.get("PAPERNOTES_OPENCV_SAMPLES")] if p] + SAMPLE_DIRS
    for folder in candidates:
        if all((folder / f"{side}{k}.jpg").is_file() for side in ("left", "right") for k in PAIRS):
            return folder
    pytest.fail(
        "OpenCV's sample chessboard photographs (left01.jpg .. right14.jpg) are missing: install them with "
        "`apt-get install -y opencv-doc` (they land in /usr/share/doc/opencv-doc/examples/data), or point "
        f"PAPERNOTES_OPENCV_SAMPLES at a folder holding them; looked in {[str(c) for c in candidates]}"
    )


@pytest.fixture(scope="session")
def stereo_photos() -> dict[str, list[Path]]:
    """{"left": [...], "right": [...]}: the 13 synchronised pairs, in the same order."""
    folder = opencv_sample_dir()
    return {side: [folder / f"{side}{k}.jpg" for k in PAIRS] for side in ("left", "right")}
