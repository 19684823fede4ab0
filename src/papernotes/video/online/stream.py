"""Frame-by-frame streaming for online action detectors, and the check that it equals the offline forward.

Not a paper method: the shared contract (the README's "Architecture" section). Every detector has

* ``forward(features (B, T, D)) -> scores (B, T, C+1)``: score of frame t from frames <= t only;
* ``stream()``: an object whose ``step(feature (D,)) -> scores (C+1,)`` gives the same score for the frame
  just fed, from state of bounded size (a ring buffer of the window, or a recurrent state).

:class:`WindowBuffer` is the ring buffer that window models (OadTR, IDN) keep: the last W features and how
many of them are real, so that a stream's first frames see the same left padding as the offline forward.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from papernotes.core.train import IGNORE_INDEX
from papernotes.errors import DataError


class DetectorStream(Protocol):
    def step(self, feature: torch.Tensor) -> torch.Tensor: ...

    def reset(self) -> None: ...


def check_features(features: torch.Tensor, feature_dim: int) -> None:
    """Refuse anything but (B, T, feature_dim) with a message that says what the model expects."""
    if features.dim() != 3 or features.shape[-1] != feature_dim:
        raise DataError(
            f"expected features (B, T, {feature_dim}) (the model's feature_dim), got {tuple(features.shape)}"
        )


def frame_loss(scores: torch.Tensor, targets: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Cross-entropy of every frame: scores (B, T, C+1), targets (B, T) class indices."""
    return F.cross_entropy(
        scores.reshape(-1, scores.shape[-1]), targets.reshape(-1), ignore_index=ignore_index
    )


class WindowBuffer:
    """The last ``window`` feature vectors of one stream, oldest first, zeros before the stream starts."""

    def __init__(self, window: int, dim: int, dtype: torch.dtype = torch.float32, device=None):
        self.window, self.dim = window, dim
        self.data = torch.zeros(window, dim, dtype=dtype, device=device)  # (W, D)
        self.seen = 0  # frames fed since the last reset

    def reset(self) -> None:
        self.data.zero_()
        self.seen = 0

    def push(self, feature: torch.Tensor) -> None:
        if feature.shape != (self.dim,):
            raise DataError(
                f"stream step expects one feature vector of size {self.dim}, got {tuple(feature.shape)}"
            )
        if not torch.isfinite(feature).all():
            raise DataError(f"stream step got a non-finite feature at frame {self.seen}")
        # shift by one: a copy of W·D numbers per frame, small next to the model's own work
        self.data = torch.cat((self.data[1:], feature[None].to(self.data.dtype)))
        self.seen += 1

    @property
    def valid(self) -> int:
        """Real (not padding) frames in the window."""
        return min(self.seen, self.window)


class FunctionStream:
    """A stream from a function of the window: ``score_fn(window (1, W, D), valid) -> (C+1,)``."""

    def __init__(self, buffer: WindowBuffer, score_fn: Callable[[torch.Tensor, int], torch.Tensor]):
        self.buffer, self.score_fn = buffer, score_fn

    def reset(self) -> None:
        self.buffer.reset()

    @torch.no_grad()
    def step(self, feature: torch.Tensor) -> torch.Tensor:
        self.buffer.push(feature)
        return self.score_fn(self.buffer.data[None], self.buffer.valid)


def sliding_windows(features: torch.Tensor, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T, D) -> windows (B·T, W, D) ending at each frame (zero padded on the left) and the number of real
    frames in each window (B·T,). Window b·T + t holds frames t − W + 1 .. t of sequence b."""
    B, T, D = features.shape
    padded = torch.cat((features.new_zeros(B, window - 1, D), features), dim=1)  # (B, W − 1 + T, D)
    windows = padded.unfold(1, window, 1)  # (B, T, D, W)
    windows = windows.permute(0, 1, 3, 2).reshape(B * T, window, D)  # (B·T, W, D)
    valid = torch.arange(1, T + 1, device=features.device).clamp(max=window).repeat(B)  # (B·T,)
    return windows, valid


@torch.no_grad()
def stream_scores(detector: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """Feed one session (T, D) frame by frame through ``detector.stream()``; scores (T, C+1)."""
    stream = detector.stream()
    return torch.stack([stream.step(features[t]) for t in range(len(features))])


@torch.no_grad()
def stream_rate(detector: nn.Module, features: torch.Tensor, warmup: int = 0) -> float:
    """Frames per second of ``detector.stream()`` over ``features[warmup:]`` (T, D), after stepping through
    the first ``warmup`` frames untimed (so that window caches are full, as in a long stream)."""
    if not 0 <= warmup < len(features):
        raise DataError(f"warmup must leave frames to time: {warmup} of {len(features)}")
    stream = detector.stream()
    for t in range(warmup):
        stream.step(features[t])
    start = time.perf_counter()
    for t in range(warmup, len(features)):
        stream.step(features[t])
    return (len(features) - warmup) / (time.perf_counter() - start)
