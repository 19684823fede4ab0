"""IDN: the Information Discrimination Network for online action detection.

Paper: Eun, Moon, Park & Ham 2020, "Learning to Discriminate Information for Online Action Detection",
CVPR 2020, arXiv:2001.04136.

Idea: a GRU-like cell, the information discrimination unit (IDU, §3.2), reads the window of past frames
x_{t−W+1} .. x_t, but its gates also see the *current* frame x_0 = x_t, so that it can tell which past
information is relevant to what is happening now:

    r_j = σ(W_hr h_{j−1} + W_0r e_0)               reset gate: drop history unrelated to the current frame
    z_j = σ(W_xz e_j + W_0z e_0)                   update gate: admit the input if it relates to now
    h̃_j = tanh(W_xh e_j + W_hh (r_j ⊙ h_{j−1}))
    h_j = (1 − z_j) ⊙ h_{j−1} + z_j ⊙ h̃_j           (eq. 1-4)

e_j = ReLU(W_e x_j) is the early embedding (§3.3), trained with a contrastive loss that pulls e_j towards
e_0 when frame j has the current frame's label and pushes it at least a margin m away otherwise (eq. 5).
The final state h_t is classified. Loss = CE + λ·contrastive.

Because every gate depends on the current frame, the window is re-read for each new frame: the offline
forward scores all windows at once, and a stream keeps a ring buffer of the last W features (bounded
memory), not a recurrent state. Windows before the session start are zero padded on the left and the
padded steps leave the state unchanged, so offline and streaming scores agree.

Dimension letters: B sequences, T frames, W window, D features, E embedding, H hidden.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from papernotes.core.train import IGNORE_INDEX
from papernotes.errors import DataError
from papernotes.video.online.stream import FunctionStream, WindowBuffer, check_features, sliding_windows


@dataclass
class IDNConfig:
    feature_dim: int = 3072  # D: THUMOS'14 RGB + flow
    num_classes: int = 21  # C + 1
    window: int = 16  # W: frames read for each decision (the paper's 16 chunks)
    embed: int = 512  # E: early embedding
    hidden: int = 512  # H
    dropout: float = 0.1
    margin: float = 1.0  # m of the contrastive loss
    contrastive_weight: float = 0.3  # λ (REFERENCES: the contrastive term weighted 0.3)


PRESETS = {
    "default": IDNConfig(),
    "tiny": IDNConfig(feature_dim=16, num_classes=5, window=6, embed=24, hidden=24),
}


class IDN(nn.Module):
    def __init__(self, cfg: IDNConfig):
        super().__init__()
        self.cfg = cfg
        E, H = cfg.embed, cfg.hidden
        self.early = nn.Sequential(nn.Linear(cfg.feature_dim, E), nn.ReLU())
        self.reset_h, self.reset_0 = nn.Linear(H, H), nn.Linear(E, H, bias=False)
        self.update_x, self.update_0 = nn.Linear(E, H), nn.Linear(E, H, bias=False)
        self.candidate_x, self.candidate_h = nn.Linear(E, H), nn.Linear(H, H, bias=False)
        self.dropout = nn.Dropout(cfg.dropout)
        self.classifier = nn.Linear(H, cfg.num_classes)
        self.early_classifier = nn.Linear(E, cfg.num_classes)  # §3.3: keeps e_0 discriminative

    @property
    def history(self) -> int:
        """How many frames (the current one included) a score depends on: the window W."""
        return self.cfg.window

    def read_windows(self, windows: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Windows (N, W, D), the last ``valid`` (N,) frames real -> scores (N, C+1), embeddings (N, W, E)."""
        N, W, _ = windows.shape
        e = self.early(windows)  # (N, W, E)
        e0 = e[:, -1]  # the current frame's embedding
        reset_0, update_0 = self.reset_0(e0), self.update_0(e0)  # the current frame's share of the gates
        h = windows.new_zeros(N, self.cfg.hidden)
        for j in range(W):
            r = torch.sigmoid(self.reset_h(h) + reset_0)
            z = torch.sigmoid(self.update_x(e[:, j]) + update_0)
            candidate = torch.tanh(self.candidate_x(e[:, j]) + self.candidate_h(r * h))
            new_h = (1 - z) * h + z * candidate
            real = (j >= W - valid)[:, None]  # padded slots before the session leave the state as it is
            h = torch.where(real, new_h, h)
        return self.classifier(self.dropout(h)), e

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features (B, T, D) -> scores (B, T, C+1)."""
        check_features(features, self.cfg.feature_dim)
        B, T, _ = features.shape
        windows, valid = sliding_windows(features, self.cfg.window)  # (B·T, W, D)
        scores, _ = self.read_windows(windows, valid)
        return scores.view(B, T, -1)  # (B·T, C+1) -> (B, T, C+1)

    def loss(
        self, features: torch.Tensor, targets: torch.Tensor, ignore_index: int = IGNORE_INDEX
    ) -> torch.Tensor:
        """CE of each frame + λ · contrastive loss of the early embeddings against the current one (eq. 5)."""
        check_features(features, self.cfg.feature_dim)
        B, T, _ = features.shape
        W = self.cfg.window
        windows, valid = sliding_windows(features, W)
        scores, e = self.read_windows(windows, valid)
        loss = F.cross_entropy(scores, targets.reshape(-1), ignore_index=ignore_index)
        early = self.early_classifier(self.dropout(e[:, -1]))  # (B·T, C+1) from the current frame alone
        loss = loss + F.cross_entropy(early, targets.reshape(-1), ignore_index=ignore_index)
        # labels of every window slot; padded slots and ignored labels take no part
        padded = torch.cat((targets.new_full((B, W - 1), ignore_index), targets), dim=1)  # (B, W − 1 + T)
        slot_labels = padded.unfold(1, W, 1).reshape(B * T, W)  # (B·T, W)
        current = slot_labels[:, -1:]  # (B·T, 1)
        usable = (slot_labels != ignore_index) & (current != ignore_index)
        unit = F.normalize(e, dim=-1)
        distance = (unit - unit[:, -1:]).norm(dim=-1)  # (B·T, W)
        same = slot_labels == current
        pairwise = torch.where(same, distance.square(), F.relu(self.cfg.margin - distance).square())
        contrastive = pairwise[usable].mean() if usable.any() else distance.sum() * 0
        return loss + self.cfg.contrastive_weight * contrastive

    def stream(self) -> FunctionStream:
        """Frame-by-frame scores from a ring buffer of the last W features."""
        if self.training:
            raise DataError("call .eval() before streaming: dropout would make the scores random")
        buffer = WindowBuffer(self.cfg.window, self.cfg.feature_dim, self.classifier.weight.dtype)

        def score(window: torch.Tensor, valid: int) -> torch.Tensor:
            scores, _ = self.read_windows(window, torch.tensor([valid], device=window.device))
            return scores[0]

        return FunctionStream(buffer, score)
