"""Two-Stream: an RGB TSN and an optical-flow TSN, fused late by a weighted sum of class scores.

Papers: Simonyan & Zisserman 2014, "Two-Stream Convolutional Networks for Action Recognition in Videos",
arXiv:1406.2199; the TSN recipe (Wang et al. 2016, arXiv:1608.00859): flow snippets of L = 5 (x, y) pairs,
the flow network initialised from RGB weights by averaging the first kernel over its channels
(cross-modality initialisation, ``video.backbone.cross_modality_weight``), and fusion weights
RGB : flow = 1 : 1.5.

The streams share no parameters, so training them jointly on the sum of their two cross-entropy losses
gives each stream exactly the gradient of its own loss: that is the same as TSN's separate training, in one
loop. Only the test-time output fuses them.

Input: a dict {"rgb": (B, K, 3, H, W), "flow": (B, K, 2L, H, W)}. Output: fused logits (B, num_classes),
or with ``return_streams=True`` the dict {"rgb": logits, "flow": logits}.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from papernotes.errors import ConfigError, DataError
from papernotes.video.models.tsn import TSN

FLOW_LENGTH = 5  # L: (x, y) flow pairs per snippet (TSN)
FUSION_WEIGHTS = (1.0, 1.5)  # RGB : flow (TSN §4)


class TwoStream(nn.Module):
    """RGB TSN + flow TSN (first conv over 2L channels) with late score fusion."""

    frames_per_segment = 1  # of the RGB stream; the flow stream reads ``flow_length`` flow frames
    modality = "rgb+flow"

    def __init__(
        self,
        num_classes: int,
        num_segments: int,
        backbone: str = "resnet18",
        flow_length: int = FLOW_LENGTH,
        fusion_weights: tuple[float, float] = FUSION_WEIGHTS,
    ):
        super().__init__()
        if flow_length < 1 or len(fusion_weights) != 2 or min(fusion_weights) < 0:
            raise ConfigError(
                f"TwoStream: expected flow_length >= 1 and two non-negative fusion weights, "
                f"got {flow_length} and {fusion_weights}"
            )
        self.num_segments = num_segments
        self.flow_length = flow_length
        self.fusion_weights = tuple(fusion_weights)
        self.rgb = TSN(num_classes, num_segments, backbone)
        self.flow = TSN(num_classes, num_segments, backbone, in_channels=2 * flow_length)

    def forward(
        self, inputs: dict[str, torch.Tensor], return_streams: bool = False
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        if not isinstance(inputs, dict) or set(inputs) != {"rgb", "flow"}:
            got = sorted(inputs) if isinstance(inputs, dict) else type(inputs).__name__
            raise DataError(f"TwoStream expects a dict with keys 'rgb' and 'flow', got {got}")
        scores = {"rgb": self.rgb(inputs["rgb"]), "flow": self.flow(inputs["flow"])}
        if return_streams:
            return scores
        w_rgb, w_flow = self.fusion_weights
        return w_rgb * scores["rgb"] + w_flow * scores["flow"]  # late fusion of class scores

    def load_pretrained(self, path: str | Path) -> list[str]:
        """The same ImageNet file initialises both streams (the flow stem by cross-modality averaging)."""
        return self.rgb.load_pretrained(path) + self.flow.load_pretrained(path)
