"""A causal dilated temporal-convolution detector: ``nn.dilated.DilatedTemporalStack`` over the stream.

Not one of the notes' three detectors: a convolutional baseline with a fixed, exactly known history
(the receptive field 1 + Σ (k − 1)·d frames; rates (1, 2, 4, 8) and k = 3 give 31 frames, about 8 s at
4 fps), in the spirit of TCN (Bai et al. 2018, arXiv:1803.01271). Causal padding keeps frame t from
reading the future, so streaming is the stack's own ``step``.

forward: features (B, T, D) -> scores (B, T, C+1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from papernotes.core.train import IGNORE_INDEX
from papernotes.nn.dilated import DilatedTemporalStack
from papernotes.video.online.stream import check_features, frame_loss


@dataclass
class TCNConfig:
    feature_dim: int = 3072  # D: THUMOS'14 RGB + flow features
    num_classes: int = 21  # C + 1
    hidden: int = 512  # channels of the stack
    kernel_size: int = 3
    dilations: tuple[int, ...] = (1, 2, 4, 8)  # receptive field 31 frames
    dropout: float = 0.1


PRESETS = {
    "default": TCNConfig(),
    "tiny": TCNConfig(feature_dim=16, num_classes=5, hidden=32, dilations=(1, 2)),
}


class TCNDetector(nn.Module):
    def __init__(self, cfg: TCNConfig):
        super().__init__()
        self.cfg = cfg
        self.stack = DilatedTemporalStack(
            cfg.feature_dim,
            cfg.hidden,
            cfg.num_classes,
            cfg.kernel_size,
            cfg.dilations,
            causal=True,
            dropout=cfg.dropout,
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        check_features(features, self.cfg.feature_dim)
        return self.stack(features)

    def loss(
        self, features: torch.Tensor, targets: torch.Tensor, ignore_index: int = IGNORE_INDEX
    ) -> torch.Tensor:
        return frame_loss(self(features), targets, ignore_index)

    def stream(self) -> _TCNStream:
        return _TCNStream(self)


class _TCNStream:
    def __init__(self, model: TCNDetector):
        self.model = model
        model.stack.reset()

    def reset(self) -> None:
        self.model.stack.reset()

    @torch.no_grad()
    def step(self, feature: torch.Tensor) -> torch.Tensor:
        return self.model.stack.step(feature[None])[0]
