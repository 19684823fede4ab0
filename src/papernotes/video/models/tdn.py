"""TDN: Temporal Difference Networks, motion from RGB differences instead of optical flow.

Paper: Wang, Tong, Ji & Wu 2021, "TDN: Temporal Difference Networks for Efficient Action Recognition",
arXiv:2012.10071. Structure as in the official code (MCG-NJU/TDN, ``ops/tdn_net.py`` and
``ops/base_module.py``), adapted to ResNets of BasicBlocks as well as Bottlenecks.

Short-term module (S-TDM, eq. 3): each segment contributes L = 5 consecutive frames. The 4 differences of
neighbouring frames are stacked along channels (12 channels), average-pooled to half resolution, and a
convolution of the stem's shape (initialised as the stem's kernel averaged over RGB and repeated, TSN's
cross-modality init), BN and ReLU turn them into motion features, max-pooled like the RGB stem. They are
fused twice into the RGB stream of the centre frame, x ← α·x + β·motion: after the stem's max-pool, and
after layer1, where the motion goes through its own copy of layer1. α, β = 0.5, 0.5 at 8 segments and
0.75, 0.25 otherwise (the official ``tdn_net``).

Long-term module (L-TDM, eq. 4-5) sits inside every residual block of stages 2-4, on the residual branch
after conv1 → BN → ReLU: channels are reduced by r = 16; each segment's features are compared with a
depth-wise 3x3 convolution of its neighbour's, forward D(t) = conv(F(t+1)) − F(t) and backward
D(t) = conv(F(t−1)) − F(t), zero at the clip's end; each difference goes through a pyramid (itself, a
3x3 conv at full and at 1/2 resolution, averaged) and a 1x1 convolution back to C channels, all with BN and
shared between the two directions; the enhancement is F + F ⊙ ½(σ(A_fwd) − ½ + σ(A_bwd) − ½).
It is followed by the official code's channel shift: a depth-wise temporal convolution initialised as
TSM's shift (1/8 of the channels from t + 1, 1/8 from t − 1, the rest in place) and then learned.

A difference changes sign when time runs backwards, so TDN sees direction inside a snippet
(``test_tdn_sees_the_direction_inside_a_snippet...``) and across segments.

Input (B, K·5, 3, H, W) (five consecutive frames per segment), output logits (B, num_classes).
Dimension letters: N = B·K snippets, L frames per snippet, T = K segments, C channels, H x W pixels.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from papernotes.errors import DataError
from papernotes.video.models.backbone import AdoptedConv2d, cross_modality_weight
from papernotes.video.models.tsn import TSN

SNIPPET = 5  # L: frames per segment (4 differences)
REDUCTION = 16  # L-TDM channel reduction (the official mSEModule)
SHIFT_DIV = 8  # 1/8 of the channels shift each way (the official ShiftModule, n_div = 8)


def fusion_weights(num_segments: int) -> tuple[float, float]:
    """S-TDM's (α, β): 0.5/0.5 at 8 segments, 0.75/0.25 otherwise (official ``tdn_net``)."""
    return (0.5, 0.5) if num_segments == 8 else (0.75, 0.25)


class ShortTermTDM(nn.Module):
    """S-TDM: snippets (N, L, 3, H, W) -> motion features at the stem's output (after max-pool), and the
    difference branch's own layer1."""

    def __init__(self, backbone: nn.Module, frames: int = SNIPPET):
        super().__init__()
        stem = backbone.conv1
        self.conv = nn.Conv2d(
            3 * (frames - 1), stem.out_channels, stem.kernel_size, stem.stride, stem.padding, bias=False
        )
        with torch.no_grad():  # cross-modality init from the stem (the official conv1_5)
            self.conv.weight.copy_(cross_modality_weight(stem.weight, self.conv.in_channels))
        self.bn = nn.BatchNorm2d(stem.out_channels)
        self.pool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        # the official code takes layer1 of a second ResNet built like the first (same pretrained weights)
        self.layer1 = copy.deepcopy(backbone.layer1)

    def forward(self, snippets: torch.Tensor) -> torch.Tensor:
        """(N, L, 3, H, W) -> motion features after the stem's max-pool (N, C1, H/8, W/8)."""
        n, L, c, h, w = snippets.shape
        diffs = (snippets[:, 1:] - snippets[:, :-1]).reshape(n, (L - 1) * c, h, w)  # (N, 3(L-1), H, W)
        diffs = F.avg_pool2d(diffs, 2, ceil_mode=True)  # (N, 3(L-1), H/2, W/2)
        return self.pool(F.relu(self.bn(self.conv(diffs))))


class LongTermTDM(nn.Module):
    """L-TDM (the official mSEModule): cross-segment difference attention, (N·T, C, H, W) -> same shape."""

    def __init__(self, channels: int, num_segments: int, reduction: int = REDUCTION):
        super().__init__()
        r = max(channels // reduction, 1)
        self.num_segments = num_segments
        self.reduce = nn.Sequential(nn.Conv2d(channels, r, 1, bias=False), nn.BatchNorm2d(r))
        self.neighbour = nn.Conv2d(r, r, 3, padding=1, groups=r, bias=False)  # conv of F(t ± 1)
        self.full_scale = nn.Sequential(nn.Conv2d(r, r, 3, padding=1, bias=False), nn.BatchNorm2d(r))
        self.half_scale = nn.Sequential(nn.Conv2d(r, r, 3, padding=1, bias=False), nn.BatchNorm2d(r))
        self.expand = nn.Sequential(nn.Conv2d(r, channels, 1, bias=False), nn.BatchNorm2d(channels))

    def attention(self, diff: torch.Tensor) -> torch.Tensor:
        """Multi-scale pyramid of one difference map (N·T, C', H, W) -> attention logits (N·T, C, H, W)."""
        half = self.half_scale(F.avg_pool2d(diff, 2, ceil_mode=True))
        half = F.interpolate(half, size=diff.shape[-2:], mode="nearest")
        return self.expand((diff + half + self.full_scale(diff)) / 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nt, c, h, w = x.shape
        T = self.num_segments
        if nt % T:
            raise DataError(f"L-TDM: batch of {nt} frames is not a multiple of num_segments={T}")
        y = self.reduce(x)
        moved = self.neighbour(y).view(nt // T, T, -1, h, w)  # (N, T, C', H, W)
        y = y.view(nt // T, T, -1, h, w)  # (N, T, C', H, W)
        zeros = torch.zeros_like(y[:, :1])
        forward_diff = torch.cat((moved[:, 1:] - y[:, :-1], zeros), dim=1)  # D(t) = conv(F(t+1)) − F(t)
        backward_diff = torch.cat((zeros, moved[:, :-1] - y[:, 1:]), dim=1)  # D(t) = conv(F(t−1)) − F(t)
        enhance = 0.5 * (
            torch.sigmoid(self.attention(forward_diff.flatten(0, 1)))
            - 0.5
            + torch.sigmoid(self.attention(backward_diff.flatten(0, 1)))
            - 0.5
        )  # (N·T, C, H, W), eq. 5
        return x + x * enhance


class TemporalChannelShift(nn.Module):
    """A depth-wise temporal convolution initialised as TSM's shift (the official ShiftModule, 'shift')."""

    def __init__(self, channels: int, num_segments: int, shift_div: int = SHIFT_DIV):
        super().__init__()
        self.num_segments = num_segments
        self.conv = nn.Conv1d(channels, channels, 3, padding=1, groups=channels, bias=False)
        fold = channels // shift_div
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[:fold, 0, 2] = 1  # from t + 1
            self.conv.weight[fold : 2 * fold, 0, 0] = 1  # from t − 1
            self.conv.weight[2 * fold :, 0, 1] = 1  # in place

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nt, c, h, w = x.shape
        T = self.num_segments
        y = x.view(nt // T, T, c, h, w).permute(0, 3, 4, 2, 1).reshape(-1, c, T)  # (N·H·W, C, T)
        y = self.conv(y).view(nt // T, h, w, c, T)
        return y.permute(0, 4, 3, 1, 2).reshape(nt, c, h, w)  # (N·T, C, H, W)


class TDMConv2d(AdoptedConv2d):
    """A residual block's conv2 that first applies L-TDM and the channel shift to its input (the output of
    conv1 → BN → ReLU). It takes over the wrapped convolution's Parameters, so state-dict names stay."""

    def __init__(self, conv: nn.Conv2d, num_segments: int):
        super().__init__(conv)
        self.long_term = LongTermTDM(conv.in_channels, num_segments)
        self.shift = TemporalChannelShift(conv.in_channels, num_segments)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.shift(self.long_term(x)))


class TDN(TSN):
    """TSN with S-TDM fused after the stem and after layer1, and L-TDM in every block of stages 2-4."""

    frames_per_segment = SNIPPET

    def __init__(
        self,
        num_classes: int,
        num_segments: int,
        backbone: str = "resnet18",
        dropout: float = 0.5,
        fusion: tuple[float, float] | None = None,
    ):
        super().__init__(num_classes, num_segments, backbone, dropout)
        self.fusion = tuple(fusion) if fusion is not None else fusion_weights(num_segments)
        self.short_term = ShortTermTDM(self.backbone, SNIPPET)
        for stage in (self.backbone.layer2, self.backbone.layer3, self.backbone.layer4):
            for block in stage:
                block.conv2 = TDMConv2d(block.conv2, num_segments)

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
        net, alpha, beta = self.backbone, *self.fusion
        x = net.maxpool(
            net.relu(net.bn1(net.conv1(snippets[:, SNIPPET // 2])))
        )  # centre frame (N, C1, H/4, W/4)
        motion = self.short_term(snippets)  # (N, C1, H/8, W/8)
        x = alpha * x + beta * F.interpolate(motion, size=x.shape[-2:])  # fusion 1 (nearest, as official)
        x = net.layer1(x)
        motion = self.short_term.layer1(motion)
        x = alpha * x + beta * F.interpolate(motion, size=x.shape[-2:])  # fusion 2
        x = net.layer4(net.layer3(net.layer2(x)))
        x = torch.flatten(net.avgpool(x), 1)  # (N, D)
        return x.view(B, K, -1)  # (B, K, D)

    def load_pretrained(self, path: str | Path) -> list[str]:
        """Backbone from ImageNet; the difference branch's layer1 from the same file; the S-TDM convolution
        by cross-modality averaging of the RGB stem."""
        names = super().load_pretrained(path)
        with torch.no_grad():
            stem = self.backbone.conv1.weight
            self.short_term.conv.weight.copy_(cross_modality_weight(stem, self.short_term.conv.in_channels))
        self.short_term.layer1.load_state_dict(self.backbone.layer1.state_dict())
        return names
