"""TRN: Temporal Relation Networks, a multi-scale relation head over ordered frame features.

Paper: Zhou, Andonian, Oliva & Torralba 2018, "Temporal Relational Reasoning in Videos", arXiv:1711.08496.

Idea: a relation over s ordered frames is an MLP applied to their concatenated features,
T_s(V) = h_φ(Σ_{i<j<...} g_θ(f_i, f_j, ...)) (eq. 1-2). The multi-scale TRN sums the scales
s = 2 ... K: MT_N(V) = T_2(V) + T_3(V) + ... + T_K(V) (eq. 3). The K-frame relation has one
combination; every other scale samples ``subsample`` ordered combinations per forward pass (3 in the
official code), each scale with its own MLP ReLU -> Linear(s·D', 256) -> ReLU -> Linear(256, classes).
Concatenation keeps the order of the frames, which TSN's average throws away
(``test_trn_is_sensitive_to_frame_order``).

Sampling: training draws the combinations from torch's RNG on every pass; evaluation uses a fixed,
evenly spaced set, so that a test result does not depend on the RNG.

Input (B, K, 3, H, W), output logits (B, num_classes).
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

from papernotes.errors import ConfigError
from papernotes.video.models.tsn import TSN

FEATURE_DIM = 256  # D': per-frame feature size fed to the relations (the official img_feature_dim)
HIDDEN = 256  # hidden width of each relation MLP
SUBSAMPLE = 3  # combinations sampled per scale below K


class RelationHead(nn.Module):
    """Multi-scale relation module on per-frame features (B, K, D') -> logits (B, classes)."""

    def __init__(self, num_segments: int, feature_dim: int, num_classes: int, subsample: int = SUBSAMPLE):
        super().__init__()
        if num_segments < 2 or subsample < 1:
            raise ConfigError(
                f"TRN needs num_segments >= 2 and subsample >= 1, got {num_segments}, {subsample}"
            )
        self.scales = list(range(num_segments, 1, -1))  # K, K-1, ..., 2
        self.subsample = subsample
        # ordered frame combinations per scale (itertools keeps indices increasing: time order)
        self.combinations = {s: list(itertools.combinations(range(num_segments), s)) for s in self.scales}
        self.mlps = nn.ModuleList(
            nn.Sequential(
                nn.ReLU(),
                nn.Linear(s * feature_dim, HIDDEN),
                nn.ReLU(),
                nn.Linear(HIDDEN, num_classes),
            )
            for s in self.scales
        )

    def chosen(self, scale: int) -> list[tuple[int, ...]]:
        """The combinations used for ``scale`` in this pass."""
        combos = self.combinations[scale]
        n = min(self.subsample, len(combos)) if scale != self.scales[0] else 1
        if self.training:
            picks = torch.randperm(len(combos))[:n].tolist()
        else:  # evenly spaced, fixed: evaluation does not depend on the RNG
            picks = torch.linspace(0, len(combos) - 1, n).round().long().tolist()
        return [combos[i] for i in picks]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        B = features.shape[0]
        total = 0
        for scale, mlp in zip(self.scales, self.mlps):
            for combo in self.chosen(scale):
                # (B, s, D') -> (B, s·D'): concatenation in time order
                total = total + mlp(features[:, list(combo)].reshape(B, -1))
        return total  # eq. 3: the sum over scales (and the sampled relations of each scale)


class TRN(TSN):
    """TSN's backbone, a per-frame projection to D' features, and the multi-scale relation head."""

    def __init__(
        self,
        num_classes: int,
        num_segments: int,
        backbone: str = "resnet18",
        dropout: float = 0.5,
        feature_dim: int = FEATURE_DIM,
        subsample: int = SUBSAMPLE,
    ):
        super().__init__(num_classes, num_segments, backbone, dropout)
        # TSN's classifier becomes the projection to relation features (the official code does the same)
        self.fc = nn.Linear(self.fc.in_features, feature_dim)
        self.relation = RelationHead(num_segments, feature_dim, num_classes, subsample)

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        return self.relation(self.frame_scores(clip))  # (B, K, D') -> (B, classes)
