"""3-D CNN baselines: torchvision's R3D-18 and R(2+1)D-18 on the same K-frame clips.

Paper: Tran, Wang, Torresani, Ray, LeCun & Paluri 2018, "A Closer Look at Spatiotemporal Convolutions for
Action Recognition", arXiv:1711.11248 (R3D: full 3x3x3 convolutions; R(2+1)D: each factorised into a 2-D
spatial and a 1-D temporal convolution with a matched parameter count).

They are the heavy alternative that the 2-D temporal models (TSM, TDN, TAM) claim to make unnecessary;
``reproduce --only video-recognition`` compares their FLOPs, latency and accuracy with the 2-D models'.

Input (B, K, 3, H, W) like every recognizer; the K sampled frames become the time axis (B, 3, K, H, W).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from torch import nn

from papernotes.errors import ConfigError, DataError
from papernotes.video.models.backbone import load_backbone_weights

ARCHITECTURES = {"r3d": torchvision.models.video.r3d_18, "r2plus1d": torchvision.models.video.r2plus1d_18}


class Video3D(nn.Module):
    """A torchvision video ResNet-18 with a new classifier."""

    frames_per_segment = 1
    modality = "rgb"

    def __init__(self, num_classes: int, num_segments: int, arch: str = "r3d", dropout: float = 0.5):
        super().__init__()
        if arch not in ARCHITECTURES:
            raise ConfigError(f"3-D architecture must be one of {sorted(ARCHITECTURES)}, got {arch!r}")
        self.arch = arch
        self.num_segments = num_segments
        self.backbone = ARCHITECTURES[arch](weights=None)
        features = self.backbone.fc.in_features
        self.backbone.fc = nn.Identity()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(features, num_classes)

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        if clip.dim() != 5 or clip.shape[1] != self.num_segments or clip.shape[2] != 3:
            raise DataError(f"expected a clip (B, {self.num_segments}, 3, H, W), got {tuple(clip.shape)}")
        features = self.backbone(clip.transpose(1, 2))  # (B, K, 3, H, W) -> (B, 3, K, H, W) -> (B, 512)
        return self.fc(self.dropout(features))

    def load_pretrained(self, path: str | Path) -> list[str]:
        """Kinetics weights of torchvision's video ResNet from a local file (its classifier is dropped)."""
        return load_backbone_weights(self.backbone, path, ARCHITECTURES[self.arch](weights=None))


def build_video3d(arch: str) -> callable:
    """A recognizer constructor for ``arch`` with the common signature; the 3-D models are 18 layers deep."""

    def build(num_classes: int, num_segments: int, backbone: str = "resnet18") -> Video3D:
        if backbone != "resnet18":
            raise ConfigError(
                f"{arch} exists at depth 18 only (backbone='resnet18'), got backbone={backbone!r}"
            )
        return Video3D(num_classes, num_segments, arch)

    return build
