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

from pathlib import Path

import torch
from torch import nn

from papernotes.errors import DataError
from papernotes.video.models.backbone import BACKBONES, FEATURE_DIMS, load_backbone_weights, resnet_backbone


class TSN(nn.Module):
    """Per-frame backbone -> dropout -> linear classifier -> average over segments.

    ``in_channels`` = 3 for RGB. The flow stream of Two-Stream is a TSN whose snippets are stacks of L
    optical-flow (x, y) pairs: ``in_channels`` = 2L, clip (B, K, 2L, H, W), ``modality`` = "flow".
    """

    frames_per_segment = 1

    def __init__(
        self,
        num_classes: int,
        num_segments: int,
        backbone: str = "resnet18",
        dropout: float = 0.5,
        in_channels: int = 3,
    ):
        super().__init__()
        self.num_segments = num_segments
        self.backbone_name = backbone
        self.in_channels = in_channels
        self.modality = "rgb" if in_channels == 3 else "flow"
        self.backbone = resnet_backbone(backbone)
        if in_channels != 3:
            stem = self.backbone.conv1
            self.backbone.conv1 = nn.Conv2d(
                in_channels, stem.out_channels, stem.kernel_size, stem.stride, stem.padding, bias=False
            )
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(FEATURE_DIMS[backbone], num_classes)

    def check_clip(self, clip: torch.Tensor) -> None:
        if clip.dim() != 5 or clip.shape[1] != self.num_segments:
            raise DataError(f"expected a clip (B, {self.num_segments}, C, H, W), got {tuple(clip.shape)}")
        if clip.shape[2] != self.in_channels:
            what = (
                "RGB" if self.modality == "rgb" else f"optical flow: x, y of {self.in_channels // 2} frames"
            )
            raise DataError(
                f"{self.modality} stream expects {self.in_channels} channels per snippet ({what}), "
                f"got {clip.shape[2]} in a clip of shape {tuple(clip.shape)}"
            )

    def frame_features(self, clip: torch.Tensor) -> torch.Tensor:
        """clip (B, K, C, H, W) -> per-segment backbone features (B, K, D)."""
        self.check_clip(clip)
        B, K = clip.shape[:2]
        return self.backbone(clip.flatten(0, 1)).view(B, K, -1)  # (B·K, D) -> (B, K, D)

    def frame_scores(self, clip: torch.Tensor) -> torch.Tensor:
        """clip (B, K, C, H, W) -> per-segment logits (B, K, num_classes)."""
        return self.fc(self.dropout(self.frame_features(clip)))

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        return self.frame_scores(clip).mean(dim=1)  # average consensus, eq. 1

    def load_pretrained(self, path: str | Path) -> list[str]:
        """ImageNet weights of the backbone from a local file (a flow stem gets the cross-modality init)."""
        return load_backbone_weights(self.backbone, path, BACKBONES[self.backbone_name](weights=None))
