"""Embedded untrimmed feature streams for online action detection, where one frame is not enough.

Not a paper method: an offline stand-in for THUMOS'14 features (20 actions, long untrimmed sessions with
mostly background, ambiguous frames at action boundaries), generated from a seed, nothing downloaded.

Design. Actions come in pairs (2k − 1, 2k). Both classes of pair k move on the same circle in their own
random 2-D subspace of the feature space: x_t = a·(u_k cos φ_t + v_k sin φ_t) + noise, with the phase
advancing by +ω per frame for one class and −ω for the other (ω drawn per instance, 0.3-0.8 rad). Any single
frame of class 2k − 1 is equally likely under class 2k (the same circle, a uniformly random phase), so a
per-frame model can find the pair but not the class within it; the direction of rotation, visible over a
few frames of history, tells them apart. Background frames are noise plus a weak random drift, and
``ambiguous_margin`` frames at each action boundary carry the ambiguous label (``ignore_index`` =
num_actions + 1), which the THUMOS protocol drops.

Layout written by :func:`write_synthetic_streams`: ``video.online.features`` (``data_info.json``,
``<rgb_dir>/<session>.npy``, ``target_perframe/<session>.npy``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from papernotes.errors import ConfigError
from papernotes.video.online.data.features import DataInfo, Session, write_sessions


@dataclass
class StreamConfig:
    num_actions: int = 20  # C: actions in pairs that differ only in their direction of motion
    feature_dim: int = 64  # D
    train_sessions: int = 40
    test_sessions: int = 20
    session_frames: tuple[int, int] = (300, 600)  # length range (frames at 4 fps: 75-150 s)
    action_frames: tuple[int, int] = (8, 40)  # duration range of one action instance
    gap_frames: tuple[int, int] = (4, 30)  # background between instances
    amplitude: float = 2.0  # radius of the action circles
    noise: float = 0.3  # std of the per-frame Gaussian noise
    ambiguous_margin: int = 1  # frames at each action boundary labelled ambiguous
    fps: float = 4.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_actions < 2 or self.num_actions % 2:
            raise ConfigError(
                f"num_actions must be an even number >= 2 (classes come in pairs), got {self.num_actions}"
            )
        if self.feature_dim < self.num_actions:
            raise ConfigError(
                f"feature_dim ({self.feature_dim}) must be >= num_actions ({self.num_actions}): "
                "each pair needs its own 2-D subspace"
            )


PRESETS = {
    "default": StreamConfig(),
    "tiny": StreamConfig(
        num_actions=4, feature_dim=16, train_sessions=4, test_sessions=2, session_frames=(60, 90)
    ),
}


def _session(rng: np.random.Generator, cfg: StreamConfig, basis: np.ndarray, name: str) -> Session:
    T = int(rng.integers(cfg.session_frames[0], cfg.session_frames[1] + 1))
    C1 = cfg.num_actions + 2  # background, actions, ambiguous
    ambiguous = cfg.num_actions + 1
    drift = rng.normal(0, 0.1, cfg.feature_dim)
    features = rng.normal(0, cfg.noise, (T, cfg.feature_dim)) + drift  # background everywhere first
    labels = np.zeros(T, dtype=np.int64)
    t = int(rng.integers(*cfg.gap_frames))
    while t < T:
        action = int(rng.integers(1, cfg.num_actions + 1))
        length = min(int(rng.integers(cfg.action_frames[0], cfg.action_frames[1] + 1)), T - t)
        pair = (action - 1) // 2
        direction = 1.0 if action % 2 else -1.0
        phase = rng.uniform(0, 2 * np.pi) + direction * rng.uniform(0.3, 0.8) * np.arange(length)
        u, v = basis[pair]
        circle = cfg.amplitude * (np.cos(phase)[:, None] * u + np.sin(phase)[:, None] * v)  # (length, D)
        features[t : t + length] += circle
        labels[t : t + length] = action
        m = cfg.ambiguous_margin
        if m:
            labels[t : t + min(m, length)] = ambiguous
            labels[max(t, t + length - m) : t + length] = ambiguous
        t += length + int(rng.integers(cfg.gap_frames[0], cfg.gap_frames[1] + 1))
    targets = np.eye(C1, dtype=np.float32)[labels]  # (T, C+2) one-hot
    return Session(name, features.astype(np.float32), targets)


def generate_streams(cfg: StreamConfig) -> tuple[list[Session], list[Session], DataInfo]:
    """Train and test sessions and their DataInfo; a pure function of ``cfg``."""
    rng = np.random.default_rng(cfg.seed)
    # an orthonormal 2-D subspace per pair: the pairs never share directions
    q, _ = np.linalg.qr(rng.normal(size=(cfg.feature_dim, cfg.feature_dim)))
    basis = q[:, : cfg.num_actions].T.reshape(cfg.num_actions // 2, 2, cfg.feature_dim)  # (pairs, 2, D)
    train = [_session(rng, cfg, basis, f"train_{i:03d}") for i in range(cfg.train_sessions)]
    test = [_session(rng, cfg, basis, f"test_{i:03d}") for i in range(cfg.test_sessions)]
    names = ["Background"] + [
        f"pair{(a - 1) // 2}_{'cw' if a % 2 else 'ccw'}" for a in range(1, cfg.num_actions + 1)
    ]
    info = DataInfo(
        class_names=[*names, "Ambiguous"],
        train_session_set=[s.name for s in train],
        test_session_set=[s.name for s in test],
        ignore_index=cfg.num_actions + 1,
        fps=cfg.fps,
        rgb_dir="features",
        flow_dir=None,
        extra={"generator": "papernotes synthetic streams", "config": dataclasses.asdict(cfg)},
    )
    return train, test, info


def write_synthetic_streams(root: str | Path, cfg: StreamConfig) -> DataInfo:
    """Generate and write the streams in the THUMOS feature layout; returns their DataInfo."""
    train, test, info = generate_streams(cfg)
    write_sessions(root, train + test, info)
    return info
