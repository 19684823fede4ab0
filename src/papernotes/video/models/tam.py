"""TAM: the temporal adaptive module of TANet, a video-specific temporal kernel learned per channel.

Paper: Liu, Wang, Qian & Lu 2021, "TAM: Temporal Adaptive Module for Video Recognition", arXiv:2005.06803.

Idea: pool each frame's feature map to one value per channel, x̂ (N, C, T), and from it learn two things:

* Local branch (location sensitive, eq. 3-4): Conv1d(C -> C/β, k=3) -> BN -> ReLU -> Conv1d(C/β -> C, k=1)
  -> sigmoid gives a per-frame, per-channel importance V (N, C, T); the features are re-weighted,
  Z = V ⊙ X.
* Global branch (location invariant, eq. 5): per channel, Linear(T -> αT) -> BN -> ReLU -> Linear(αT -> K)
  -> softmax gives an adaptive temporal kernel Θ (N, C, K) that sums to 1; it aggregates along time as a
  depth-wise temporal convolution, Y[t] = Σ_j Θ_j · Z[t + j - K//2] (eq. 6), zero padded.

α = 2, β = 4, K = 3 (the paper's defaults). TANet inserts TAM after conv1 of each residual block. Here it
runs at the input of each block's conv2, which receives exactly conv1 -> BN -> ReLU: the wrapped
convolution keeps its state-dict names, so ImageNet ResNet weights load unchanged, and the branches sit
under ``...conv2.tam``. Branches, placement and normalisation are those of the official code
(liu-zhy/temporal-adaptive-module, ``ops/temporal_module.py``).

Initialisation (our change). With PyTorch's default initialisation (the official code's) the global
branch's logits are small, so every kernel starts near (1/3, 1/3, 1/3): a temporal blur in every block.
Four stacked blurs over K = 4 segments average the clip before anything can compare its frames, and a blur
is the same forwards and backwards, so training from scratch never found the order (pair accuracy at
chance, like TSN). Here the last layer of the global branch gets a bias, initialised with zero weights to
the logits (−3, 3, −3): every kernel starts at ≈ (0, 1, 0), the identity along time, so TANet starts as
TSN with the local branch's per-frame gating and learns how much of its neighbours each channel mixes in
(``test_tam_starts_as_the_identity_along_time``).

Signed kernel (our ablation, ``signed_kernel=True``, registered as ``"tam-signed"``; not the paper's). The
softmax makes every kernel a convex combination of a channel's own neighbouring frames: a blur, which reads
the same forwards and backwards, so a block can tell the order of its frames only through the local
branch's per-frame gates. Without the softmax (the last layer's bias starts at (0, 1, 0), the exact
identity), a kernel can take differences such as Z[t] − Z[t − 1], a channel's change over time. At the
default ``reproduce`` size this lifted TAM's mean pair accuracy on the order pairs from 71.5 ± 4.7 % to
93.8 ± 1.4 % (three seeds; docs/tam.md, "Measured").

Dimension letters: N clips, T frames (segments), C channels, H x W pixels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from papernotes.errors import ConfigError, DataError
from papernotes.video.models.backbone import AdoptedConv2d
from papernotes.video.models.tsn import TSN

ALPHA = 2  # global branch: hidden width α·T
BETA = 4  # local branch: channel reduction C / β
KERNEL = 3  # K: size of the adaptive temporal kernel
IDENTITY_LOGIT = 3.0  # initial logit of the centre tap (the others −3): softmax ≈ (0.0025, 0.995, 0.0025)


class TemporalAdaptiveModule(nn.Module):
    """(N·T, C, H, W) -> (N·T, C, H, W): local re-weighting, then an adaptive temporal convolution."""

    def __init__(
        self,
        channels: int,
        num_segments: int,
        alpha: int = ALPHA,
        beta: int = BETA,
        kernel: int = KERNEL,
        signed_kernel: bool = False,
    ):
        super().__init__()
        if kernel % 2 == 0:
            raise ConfigError(f"TAM kernel size must be odd (centred on frame t), got {kernel}")
        self.num_segments = num_segments
        self.kernel = kernel
        self.local = nn.Sequential(
            nn.Conv1d(channels, channels // beta, 3, padding=1, bias=False),
            nn.BatchNorm1d(channels // beta),
            nn.ReLU(inplace=True),
            nn.Conv1d(channels // beta, channels, 1, bias=False),
            nn.Sigmoid(),
        )
        self.glob = nn.Sequential(
            nn.Linear(num_segments, num_segments * alpha, bias=False),
            nn.BatchNorm1d(num_segments * alpha),
            nn.ReLU(inplace=True),
            nn.Linear(num_segments * alpha, kernel),
            nn.Identity() if signed_kernel else nn.Softmax(dim=-1),
        )
        last = self.glob[3]
        with torch.no_grad():  # start every kernel at the identity along time (module docstring)
            last.weight.zero_()
            if signed_kernel:  # the taps themselves: exactly (0, 1, 0)
                last.bias.zero_()
                last.bias[kernel // 2] = 1.0
            else:  # softmax logits: ≈ (0, 1, 0)
                last.bias.fill_(-IDENTITY_LOGIT)
                last.bias[kernel // 2] = IDENTITY_LOGIT

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nt, c, h, w = x.shape
        T = self.num_segments
        if nt % T:
            raise DataError(f"TAM: batch of {nt} frames is not a multiple of num_segments={T}")
        n = nt // T
        x = x.view(n, T, c, h, w)  # (N, T, C, H, W)
        pooled = x.mean(dim=(3, 4)).transpose(1, 2)  # (N, C, T)
        importance = self.local(pooled)  # (N, C, T), eq. 4
        kernel = self.glob(pooled.reshape(n * c, T)).view(n * c, 1, self.kernel, 1)  # (N·C, 1, K, 1), eq. 5
        z = x * importance.transpose(1, 2)[..., None, None]  # (N, T, C, H, W) re-weighted
        # eq. 6 as a grouped convolution: one group per (clip, channel), time along height, pixels along width
        z = z.permute(0, 2, 1, 3, 4).reshape(1, n * c, T, h * w)  # (1, N·C, T, H·W)
        y = F.conv2d(z, kernel, padding=(self.kernel // 2, 0), groups=n * c)  # (1, N·C, T, H·W)
        return y.view(n, c, T, h, w).transpose(1, 2).reshape(nt, c, h, w)  # (N·T, C, H, W)


class TAMConv2d(AdoptedConv2d):
    """A block's conv2 that first applies TAM to its input (the output of conv1 -> BN -> ReLU).

    It takes over the wrapped convolution's Parameters, so ``layer1.0.conv2.weight`` keeps its name.
    """

    def __init__(self, conv: nn.Conv2d, num_segments: int, signed_kernel: bool = False):
        super().__init__(conv)
        self.tam = TemporalAdaptiveModule(conv.in_channels, num_segments, signed_kernel=signed_kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.tam(x))


def apply_tam(resnet: nn.Module, num_segments: int, signed_kernel: bool = False) -> int:
    """Insert TAM into every residual block of a torchvision ResNet; return the count."""
    count = 0
    for stage in (resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4):
        for block in stage:
            block.conv2 = TAMConv2d(block.conv2, num_segments, signed_kernel)
            count += 1
    return count


def build_tam(
    num_classes: int, num_segments: int, backbone: str = "resnet18", signed_kernel: bool = False
) -> TSN:
    """TANet: TSN's recognizer with TAM in every residual block (``signed_kernel``: module docstring)."""
    model = TSN(num_classes, num_segments, backbone)
    apply_tam(model.backbone, num_segments, signed_kernel)
    return model
