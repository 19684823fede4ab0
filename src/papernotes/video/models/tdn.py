"""TDN: Temporal Difference Networks, motion from RGB differences instead of optical flow.

Paper: Wang, Tong, Ji & Wu 2021, "TDN: Temporal Difference Networks for Efficient Action Recognition",
arXiv:2012.10071.

Short-term module (S-TDM, eq. 3): each segment contributes L = 5 consecutive frames around its centre. The
4 differences of neighbouring frames are stacked along channels (12 channels), average-pooled to half
resolution for speed, and a light convolution (the stem's shape, 12 input channels) turns them into
motion features of the stem's size. They are fused with the centre frame's stem features as
α·F(I_centre) + β·S(ΔI), α = β = 0.5 (the 8-segment setting).

Long-term module (L-TDM, eq. 4-5): at the output of each ResNet stage, features of neighbouring segments
are compared: D(t) = conv3x3(F(t+1)) − F(t) (forward) and the mirror image (backward), on channels
reduced by r = 4. A multi-scale pyramid (full, 1/2, 1/4 resolution) of each difference gives a channel
and spatial attention A; the feature is enhanced as F + F ⊙ (σ(A) − 0.5), averaged over both directions.

Differences change sign when time runs backwards, so TDN is sensitive to frame order
(``test_tdn_is_sensitive_to_frame_order``).

Input (B, K·5, 3, H, W) (five consecutive frames per segment), output logits (B, num_classes).
Dimension letters: N = B·K snippets, L frames per snippet, C channels, H x W pixels.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from papernotes.errors import DataError
from papernotes.video.models.backbone import cross_modality_weight
from papernotes.video.models.tsn import TSN

SNIPPET = 5  # L: frames per segment (4 differences)
FUSION = (0.5, 0.5)  # α, β of S-TDM at 8 segments
REDUCTION = 4  # L-TDM channel reduction


class ShortTermTDM(nn.Module):
    """Stacked RGB differences (N, L, 3, H, W) -> motion features shaped like the stem output."""

    def __init__(self, stem: nn.Conv2d, frames: int = SNIPPET):
        super().__init__()
        in_channels = 3 * (frames - 1)
        # same kernel as the stem; stride 1 because the average pool already halved the resolution
        self.conv = nn.Conv2d(in_channels, stem.out_channels, stem.kernel_size, 1, stem.padding, bias=False)
        self.bn = nn.BatchNorm2d(stem.out_channels)

    def forward(self, snippets: torch.Tensor) -> torch.Tensor:
        n, L, c, h, w = snippets.shape
        diffs = (snippets[:, 1:] - snippets[:, :-1]).reshape(n, (L - 1) * c, h, w)  # (N, 3(L-1), H, W)
        diffs = F.avg_pool2d(diffs, 2, ceil_mode=True)  # (N, 3(L-1), H/2, W/2)
        return F.relu(self.bn(self.conv(diffs)))


class _DifferenceAttention(nn.Module):
    """Multi-scale pyramid of one difference map (N, C', H, W) -> attention logits (N, C, H, W)."""

    def __init__(self, reduced: int, channels: int):
        super().__init__()
        self.pyramid = nn.ModuleList(nn.Conv2d(reduced, reduced, 3, padding=1, bias=False) for _ in range(2))
        self.expand = nn.Sequential(nn.Conv2d(reduced, channels, 1, bias=False), nn.BatchNorm2d(channels))

    def forward(self, diff: torch.Tensor) -> torch.Tensor:
        h, w = diff.shape[-2:]
        total = diff
        for level, conv in enumerate(self.pyramid, start=1):  # 1/2 and 1/4 resolution
            pooled = F.avg_pool2d(diff, 2**level, ceil_mode=True)
            total = total + F.interpolate(conv(pooled), size=(h, w), mode="nearest")
        return self.expand(total)


class LongTermTDM(nn.Module):
    """Cross-segment difference attention: (N, C, H, W) -> (N, C, H, W), N = B·K."""

    def __init__(self, channels: int, num_segments: int, reduction: int = REDUCTION):
        super().__init__()
        reduced = max(channels // reduction, 1)
        self.num_segments = num_segments
        self.reduce = nn.Sequential(nn.Conv2d(channels, reduced, 1, bias=False), nn.BatchNorm2d(reduced))
        self.shift_conv = nn.Conv2d(reduced, reduced, 3, padding=1, groups=reduced, bias=False)
        # one attention branch per direction: with shared weights, reversing the segments would only swap
        # the two differences, and their average would not see the order
        self.branches = nn.ModuleList(
            _DifferenceAttention(reduced, channels) for _ in ("forward", "backward")
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nk, c, h, w = x.shape
        K = self.num_segments
        if nk % K:
            raise DataError(f"L-TDM: batch of {nk} snippets is not a multiple of num_segments={K}")
        y = self.reduce(x)
        moved = self.shift_conv(y).view(nk // K, K, -1, h, w)  # (B, K, C', H, W)
        y = y.view(nk // K, K, -1, h, w)  # (B, K, C', H, W)
        zeros = torch.zeros_like(y[:, :1])
        forward_diff = torch.cat((moved[:, 1:] - y[:, :-1], zeros), dim=1)  # D(t) = conv(F(t+1)) - F(t)
        backward_diff = torch.cat((zeros, moved[:, :-1] - y[:, 1:]), dim=1)  # D(t) = conv(F(t-1)) - F(t)
        forward_branch, backward_branch = self.branches
        attention = 0.5 * (
            torch.sigmoid(forward_branch(forward_diff.flatten(0, 1)))
            + torch.sigmoid(backward_branch(backward_diff.flatten(0, 1)))
        )  # (B·K, C, H, W)
        return x + x * (attention - 0.5)  # eq. 5: enhancement centred on zero


class TDN(TSN):
    """TSN with S-TDM at the stem and L-TDM after each ResNet stage."""

    frames_per_segment = SNIPPET

    def __init__(
        self,
        num_classes: int,
        num_segments: int,
        backbone: str = "resnet18",
        dropout: float = 0.5,
        fusion: tuple[float, float] = FUSION,
    ):
        super().__init__(num_classes, num_segments, backbone, dropout)
        self.fusion = tuple(fusion)
        self.short_term = ShortTermTDM(self.backbone.conv1, SNIPPET)
        stages = (self.backbone.layer1, self.backbone.layer2, self.backbone.layer3, self.backbone.layer4)
        widths = [_stage_width(stage) for stage in stages]
        self.long_term = nn.ModuleList(LongTermTDM(width, num_segments) for width in widths)

    def check_clip(self, clip: torch.Tensor) -> None:
        expected = self.num_segments * SNIPPET
        if clip.dim() != 5 or clip.shape[1] != expected or clip.shape[2] != 3:
            raise DataError(
                f"TDN expects (B, {self.num_segments}·{SNIPPET} = {expected}, 3, H, W): {SNIPPET} consecutive"
                f" RGB frames per segment (frames_per_segment={SNIPPET}), got {tuple(clip.shape)}"
            )

    def frame_features(self, clip: torch.Tensor) -> torch.Tensor:
        self.check_clip(clip)
        B, K = clip.shape[0], self.num_segments
        snippets = clip.view(B * K, SNIPPET, *clip.shape[2:])  # (N, L, 3, H, W)
        net = self.backbone
        centre = net.relu(net.bn1(net.conv1(snippets[:, SNIPPET // 2])))  # (N, 64, H/2, W/2)
        motion = self.short_term(snippets)  # (N, 64, H/2, W/2)
        if motion.shape != centre.shape:  # odd sizes: ceil pooling vs the stride-2 stem
            motion = F.interpolate(motion, size=centre.shape[-2:], mode="nearest")
        alpha, beta = self.fusion
        x = net.maxpool(alpha * centre + beta * motion)  # S-TDM fusion
        for stage, tdm in zip((net.layer1, net.layer2, net.layer3, net.layer4), self.long_term):
            x = tdm(stage(x))
        x = torch.flatten(net.avgpool(x), 1)  # (N, D)
        return x.view(B, K, -1)  # (B, K, D)

    def load_pretrained(self, path: str | Path) -> list[str]:
        """Backbone from ImageNet; the S-TDM convolution by cross-modality averaging of the RGB stem."""
        names = super().load_pretrained(path)
        with torch.no_grad():
            stem = self.backbone.conv1.weight
            self.short_term.conv.weight.copy_(cross_modality_weight(stem, self.short_term.conv.in_channels))
        return names


def _stage_width(stage: nn.Sequential) -> int:
    """Output channels of a ResNet stage (BasicBlock: bn2, Bottleneck: bn3)."""
    last = stage[-1]
    return (last.bn3 if hasattr(last, "bn3") else last.bn2).num_features
