"""Train and score online action detectors on feature sessions, through ``core.train``.

Not a paper method: the shared harness that makes the detectors comparable.

* :class:`ChunkBatches` gives ``core.train`` random chunks (B, L, D) of the training sessions with their
  per-frame labels (B, L); which chunks is a pure function of (seed, step). Each detector's ``loss`` is its
  paper's loss on the chunk; a chunk starts from an empty history, as TRN's training does.
* :func:`score_session` scores a whole session offline, in pieces of bounded memory. For models whose score
  reads a bounded history (``model.history`` frames: IDN's window, OadTR's stacked sliding windows) a piece
  carries the ``history − 1`` frames before it, so the scores are exactly the full-session ones; recurrent
  and convolutional models read the whole session in one pass.
* :func:`score_sessions` concatenates the scores and labels of a list of sessions for
  ``metrics.online_detection``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from papernotes.core.train import IGNORE_INDEX, Batch
from papernotes.errors import DataError


def labels_of(targets: np.ndarray, ignore_index: int | None) -> np.ndarray:
    """One-hot targets (T, C+1) -> class indices (T,), with the ambiguous class mapped to -100 (ignored)."""
    labels = targets.argmax(axis=1).astype(np.int64)
    if ignore_index is not None:
        labels[labels == ignore_index] = IGNORE_INDEX
    return labels


class ChunkBatches:
    """``core.train``'s ``batches(step, micro_step)``: ``batch_size`` random chunks of ``length`` frames."""

    def __init__(
        self,
        features: list[np.ndarray],
        labels: list[np.ndarray],
        length: int,
        batch_size: int,
        seed: int = 0,
    ):
        usable = [i for i, f in enumerate(features) if len(f) >= length]
        if not usable:
            longest = max((len(f) for f in features), default=0)
            raise DataError(
                f"no training session has {length} frames (the chunk length); the longest has {longest}"
            )
        self.features = [torch.as_tensor(features[i], dtype=torch.float32) for i in usable]
        self.labels = [torch.as_tensor(labels[i]) for i in usable]
        self.weights = np.array([len(f) - length + 1 for f in self.features], dtype=np.float64)
        self.weights /= self.weights.sum()  # every chunk start equally likely, across sessions
        self.length, self.batch_size, self.seed = length, batch_size, seed

    def __call__(self, step: int, micro_step: int) -> Batch:
        rng = np.random.default_rng([self.seed, step, micro_step])
        sessions = rng.choice(len(self.features), self.batch_size, p=self.weights)
        xs, ys = [], []
        for s in sessions:
            start = int(rng.integers(0, len(self.features[s]) - self.length + 1))
            xs.append(self.features[s][start : start + self.length])
            ys.append(self.labels[s][start : start + self.length])
        return {"features": torch.stack(xs), "labels": torch.stack(ys)}  # (B, L, D), (B, L)


def detector_loss(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, int]:
    """``core.train``'s loss_fn: the detector's own training loss on a chunk batch."""
    return model.loss(batch["features"], batch["labels"]), int(batch["labels"].numel())


@torch.no_grad()
def score_session(model: nn.Module, features: torch.Tensor, piece: int = 1024) -> torch.Tensor:
    """Offline scores (T, C+1) of one session (T, D), computed in pieces of ``piece`` frames when the model
    reads a bounded history (so memory stays bounded on long sessions), in one pass otherwise."""
    model.eval()
    T = len(features)
    history = getattr(model, "history", None)
    if history is None or piece >= T:
        return model(features[None])[0]
    parts = []
    for start in range(0, T, piece):
        context = max(0, start - (history - 1))  # the frames the first scored frame can still see
        scores = model(features[None, context : start + piece])[0]  # (L, C+1)
        parts.append(scores[start - context :])
    return torch.cat(parts)


@torch.no_grad()
def score_sessions(
    model: nn.Module, features: list[np.ndarray], targets: list[np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Softmax scores (N, C+1) and one-hot targets (N, C+1) of all sessions, concatenated (THUMOS)."""
    if not features:
        raise DataError("no test sessions to score")
    scores = [
        torch.softmax(score_session(model, torch.as_tensor(f, dtype=torch.float32)), dim=-1).numpy()
        for f in features
    ]
    return np.concatenate(scores), np.concatenate(targets)
