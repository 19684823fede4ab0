"""TSN: Temporal Segment Networks, a per-frame 2-D CNN with average consensus.

Paper: Wang et al. 2016, "Temporal Segment Networks: Towards Good Practices for Deep Action
Recognition", arXiv:1608.00859.

Idea: sample one snippet from each of K equal segments of the video (``video.data``), score every
snippet with the same 2-D network, and average: G = (1/K) Σ_k F(T_k; W) (eq. 1, average consensus).
The average ignores frame order, which is the weakness the temporal models (TSM, TRN, TDN, TAM)
address; ``test_tsn_consensus_is_order_invariant`` holds it to that.

Input (B, K, C, H, W) (B clips, K segments), output logits (B, num_classes).
"""

from __future__ import annotations

import torch
import torchvision
from torch import nn

from papernotes.errors import ConfigError, DataError

BACKBONES = {"resnet18": torchvision.models.resnet18, "resnet50": torchvision.models.resnet50}


def resnet_backbone(name: str) -> nn.Module:
    """A torchvision ResNet with random weights (no download) and its classifier removed."""
    if name not in BACKBONES:
        raise ConfigError(f"backbone must be one of {sorted(BACKBONES)}, got {name!r}")
    model = BACKBONES[name](weights=None)
    model.fc = nn.Identity()  # features out; the recognizer owns the classifier
    return model


class TSN(nn.Module):
    """Per-frame backbone -> dropout -> linear classifier -> average over segments."""

    frames_per_segment = 1
    modality = "rgb"

    def __init__(self, num_classes: int, num_segments: int, backbone: str = "resnet18", dropout: float = 0.5):
        super().__init__()
        self.num_segments = num_segments
        self.backbone = resnet_backbone(backbone)
        features = 512 if backbone == "resnet18" else 2048
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(features, num_classes)

    def frame_scores(self, clip: torch.Tensor) -> torch.Tensor:
        """clip (B, K, C, H, W) -> per-segment logits (B, K, num_classes)."""
        if clip.dim() != 5 or clip.shape[1] != self.num_segments:
            raise DataError(f"expected a clip (B, {self.num_segments}, C, H, W), got {tuple(clip.shape)}")
        B, K = clip.shape[:2]
        features = self.backbone(clip.flatten(0, 1))  # (B·K, D): frames of a clip stay adjacent
        return self.fc(self.dropout(features)).view(B, K, -1)  # (B, K, classes)

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        return self.frame_scores(clip).mean(dim=1)  # average consensus, eq. 1
