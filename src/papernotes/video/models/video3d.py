"""3-D CNN baselines: torchvision's R3D-18 and R(2+1)D-18 on the same K-frame clips.

Paper: Tran, Wang, Torresani, Ray, LeCun & Paluri 2018, "A Closer Look at Spatiotemporal Convolutions for
Action Recognition", arXiv:1711.11248 (R3D: full 3x3x3 convolutions; R(2+1)D: each factorised into a 2-D
spatial and a 1-D temporal convolution with a matched parameter count).

They are the heavy alternative that the 2-D temporal models (TSM, TDN, TAM) claim to make unnecessary;
``reproduce --only video-recognition`` compares their FLOPs, latency and accuracy with the 2-D models'.
With ``backbone="slim-resnet10"`` they are built from the same torchvision blocks with one block per stage
and widths 16-32-64-128, like the 2-D models' slim backbone (``video.models.backbone``).

Input (B, K, 3, H, W) like every recognizer; the K sampled frames become the time axis (B, 3, K, H, W).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision.models.video import resnet as video_resnet

from papernotes.errors import ConfigError, DataError
from papernotes.video.models.backbone import load_backbone_weights

ARCHITECTURES = {"r3d": torchvision.models.video.r3d_18, "r2plus1d": torchvision.models.video.r2plus1d_18}
SLIM_WIDTHS = (16, 32, 64, 128)


class SlimVideoResNet(video_resnet.VideoResNet):
    """torchvision's VideoResNet of BasicBlocks with stage widths ``widths`` and one block per stage.

    torchvision fixes the widths at 64-128-256-512, so this builds the same stem (R3D: a 3x7x7 convolution;
    R(2+1)D: 1x7x7 then 3x1x1) and ``_make_layer`` stages with other widths; ``forward`` is torchvision's.
    """

    def __init__(self, arch: str, widths: tuple[int, ...] = SLIM_WIDTHS) -> None:
        nn.Module.__init__(self)
        w = widths[0]
        if arch == "r3d":
            conv_maker = video_resnet.Conv3DSimple
            self.stem = nn.Sequential(
                nn.Conv3d(3, w, (3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3), bias=False),
                nn.BatchNorm3d(w),
                nn.ReLU(inplace=True),
            )
        else:
            conv_maker = video_resnet.Conv2Plus1D
            middle = (w * 45) // 64  # torchvision's 45 mid-channels for 64 outputs, scaled
            self.stem = nn.Sequential(
                nn.Conv3d(3, middle, (1, 7, 7), stride=(1, 2, 2), padding=(0, 3, 3), bias=False),
                nn.BatchNorm3d(middle),
                nn.ReLU(inplace=True),
                nn.Conv3d(middle, w, (3, 1, 1), padding=(1, 0, 0), bias=False),
                nn.BatchNorm3d(w),
                nn.ReLU(inplace=True),
            )
        self.inplanes = w
        block = video_resnet.BasicBlock
        self.layer1 = self._make_layer(block, conv_maker, widths[0], 1, stride=1)
        self.layer2 = self._make_layer(block, conv_maker, widths[1], 1, stride=2)
        self.layer3 = self._make_layer(block, conv_maker, widths[2], 1, stride=2)
        self.layer4 = self._make_layer(block, conv_maker, widths[3], 1, stride=2)
        self.avgpool = nn.AdaptiveAvgPool3d((1, 1, 1))
        self.fc = nn.Linear(widths[3], 400)
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


class Video3D(nn.Module):
    """A torchvision video ResNet-18 with a new classifier."""

    frames_per_segment = 1
    modality = "rgb"

    def __init__(
        self,
        num_classes: int,
        num_segments: int,
        arch: str = "r3d",
        dropout: float = 0.5,
        backbone: str = "resnet18",
    ):
        super().__init__()
        if arch not in ARCHITECTURES:
            raise ConfigError(f"3-D architecture must be one of {sorted(ARCHITECTURES)}, got {arch!r}")
        self.arch = arch
        self.num_segments = num_segments
        self.backbone_name = backbone
        slim = backbone == "slim-resnet10"
        self.backbone = SlimVideoResNet(arch) if slim else ARCHITECTURES[arch](weights=None)
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
        if self.backbone_name != "resnet18":
            raise ConfigError(f"no pretrained weights exist for a {self.arch} on {self.backbone_name}")
        return load_backbone_weights(self.backbone, path, ARCHITECTURES[self.arch](weights=None))


def build_video3d(arch: str) -> callable:
    """A recognizer constructor for ``arch`` with the common signature: 18 layers deep (torchvision's), or
    the slim 10-layer version of the 2-D models' "slim-resnet10"."""

    def build(num_classes: int, num_segments: int, backbone: str = "resnet18") -> Video3D:
        if backbone not in ("resnet18", "slim-resnet10"):
            raise ConfigError(
                f"{arch} exists as backbone='resnet18' or 'slim-resnet10' only, got backbone={backbone!r}"
            )
        return Video3D(num_classes, num_segments, arch, backbone=backbone)

    return build
