"""A dilated temporal-convolution head on per-frame 2-D features (``papernotes.nn.dilated`` as a recognizer).

Not one paper's recognizer: it applies the notes' dilated convolution (Yu & Koltun 2016, arXiv:1511.07122)
along time, as temporal convolutional networks do for action segmentation and detection (Lea et al. 2017,
arXiv:1611.05267; Bai et al. 2018, arXiv:1803.01271). TSN's backbone scores every segment; instead of
averaging the features, a centred stack with hybrid rates (1, 2) mixes neighbouring segments, then the
classifier sees the time average. Unlike TSN's consensus the result depends on frame order.

Input (B, K, 3, H, W), output logits (B, num_classes).
"""

from __future__ import annotations

import torch
from torch import nn

from papernotes.nn.dilated import DilatedTemporalStack
from papernotes.video.models.tsn import TSN

HIDDEN = 256  # width of the temporal stack
DILATIONS = (1, 2)  # receptive field 1 + 2·(1 + 2) = 7 segments: the whole clip at K = 8


class DilatedTemporalHead(TSN):
    """TSN's backbone -> dilated temporal stack over the K segment features -> mean over time -> linear."""

    def __init__(
        self,
        num_classes: int,
        num_segments: int,
        backbone: str = "resnet18",
        dropout: float = 0.5,
        dilations: tuple[int, ...] = DILATIONS,
    ):
        super().__init__(num_classes, num_segments, backbone, dropout)
        features = self.fc.in_features
        self.temporal = DilatedTemporalStack(features, HIDDEN, dilations=dilations, causal=False)
        self.fc = nn.Linear(HIDDEN, num_classes)

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        mixed = self.temporal(self.frame_features(clip))  # (B, K, D) -> (B, K, HIDDEN)
        return self.fc(self.dropout(mixed.mean(dim=1)))
