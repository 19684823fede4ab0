"""The per-frame baseline: an MLP that scores each frame from its own feature, with no history.

Not a paper method. It is the floor every history model must beat (the online-detection issue's goal): on
streams whose classes differ in their dynamics, one frame is not enough.

forward: features (B, T, D) -> scores (B, T, C+1); ``stream().step(feature (D,))`` -> (C+1,).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from papernotes.core.train import IGNORE_INDEX
from papernotes.video.online.stream import check_features, frame_loss


@dataclass
class FrameMLPConfig:
    feature_dim: int = 3072  # D: THUMOS'14 RGB (2048) + flow (1024) features
    num_classes: int = 21  # C + 1: 20 actions and background
    hidden: int = 1024  # hidden width
    dropout: float = 0.5


PRESETS = {"default": FrameMLPConfig(), "tiny": FrameMLPConfig(feature_dim=16, num_classes=5, hidden=32)}


class FrameMLP(nn.Module):
    def __init__(self, cfg: FrameMLPConfig):
        super().__init__()
        self.cfg = cfg
        self.net = nn.Sequential(
            nn.Linear(cfg.feature_dim, cfg.hidden),
            nn.ReLU(),
            nn.Dropout(cfg.dropout),
            nn.Linear(cfg.hidden, cfg.num_classes),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        check_features(features, self.cfg.feature_dim)
        return self.net(features)

    def loss(
        self, features: torch.Tensor, targets: torch.Tensor, ignore_index: int = IGNORE_INDEX
    ) -> torch.Tensor:
        return frame_loss(self(features), targets, ignore_index)

    def stream(self) -> _FrameStream:
        return _FrameStream(self)


class _FrameStream:
    def __init__(self, model: FrameMLP):
        self.model = model

    def reset(self) -> None:
        """Nothing to forget: the model keeps no state."""

    @torch.no_grad()
    def step(self, feature: torch.Tensor) -> torch.Tensor:
        return self.model(feature[None, None])[0, 0]
