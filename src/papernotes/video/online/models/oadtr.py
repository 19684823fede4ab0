"""OadTR: online action detection with transformers.

Paper: Wang, Zhang, Qing, Gao, Zhang, Sang & Tao 2021, "OadTR: Online Action Detection with Transformers",
ICCV 2021, arXiv:2106.11149.

Idea: the score of frame t comes from a transformer encoder over the last W frames (W = 64) plus a
learnable task token, with learned position embeddings (§3.2). A decoder with Q = 8 learnable queries
attends to the encoder output and predicts the classes of the next 8 frames (§3.3); the classifier of the
current frame reads [task-token output ‖ mean of the decoder outputs] (eq. 8). Training loss:
CE(current) + λ·CE(future), λ = 0.5 (eq. 10).

Windows that start before the session are zero padded on the left and the padding is masked out of the
attention, so frame t's score depends only on real frames t − W + 1 .. t, both offline (all windows at once)
and streaming (a ring buffer of W features; ``test_streaming_equals_offline``).

Dimension letters: B sequences, T frames, W window, D input features, E model width, Q future queries.
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
class OadTRConfig:
    feature_dim: int = 3072  # D: THUMOS'14 RGB (2048) + flow (1024)
    num_classes: int = 21  # C + 1 (background at 0)
    window: int = 64  # W: encoder history (frames)
    dim: int = 1024  # E: model width after the linear projection
    heads: int = 8  # attention heads (encoder and decoder)
    encoder_layers: int = 3
    decoder_layers: int = 5
    future_steps: int = 8  # Q: decoder queries, one per future frame
    dropout: float = 0.1
    future_weight: float = 0.5  # λ of the future loss


PRESETS = {
    "default": OadTRConfig(),
    "tiny": OadTRConfig(
        feature_dim=16,
        num_classes=5,
        window=8,
        dim=32,
        heads=2,
        encoder_layers=1,
        decoder_layers=1,
        future_steps=3,
    ),
}


class OadTR(nn.Module):
    def __init__(self, cfg: OadTRConfig):
        super().__init__()
        self.cfg = cfg
        E = cfg.dim
        self.project = nn.Linear(cfg.feature_dim, E)
        self.task_token = nn.Parameter(torch.zeros(1, 1, E))
        self.positions = nn.Parameter(torch.zeros(1, cfg.window + 1, E))  # learned; task token at index 0
        nn.init.trunc_normal_(self.task_token, std=0.02)
        nn.init.trunc_normal_(self.positions, std=0.02)
        layer = nn.TransformerEncoderLayer(
            E, cfg.heads, 4 * E, cfg.dropout, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, cfg.encoder_layers, enable_nested_tensor=False)
        self.queries = nn.Parameter(torch.zeros(1, cfg.future_steps, E))
        nn.init.trunc_normal_(self.queries, std=0.02)
        dec_layer = nn.TransformerDecoderLayer(
            E, cfg.heads, 4 * E, cfg.dropout, batch_first=True, norm_first=True
        )
        self.decoder = nn.TransformerDecoder(dec_layer, cfg.decoder_layers)
        self.norm = nn.LayerNorm(E)
        self.future_classifier = nn.Linear(E, cfg.num_classes)
        self.classifier = nn.Linear(2 * E, cfg.num_classes)

    def score_windows(self, windows: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Windows (N, W, D) of which the last ``valid`` (N,) frames are real -> current scores (N, C+1) and
        future scores (N, Q, C+1)."""
        N, W, _ = windows.shape
        tokens = self.project(windows)  # (N, W, E)
        tokens = torch.cat((self.task_token.expand(N, -1, -1), tokens), dim=1) + self.positions  # (N, 1+W, E)
        # True = padding: frame slots before the session start; the task token is always attended
        slot = torch.arange(W, device=windows.device)
        padding = torch.cat(
            (torch.zeros(N, 1, dtype=torch.bool, device=windows.device), slot < W - valid[:, None]), 1
        )
        memory = self.encoder(tokens, src_key_padding_mask=padding)  # (N, 1+W, E)
        future = self.decoder(
            self.queries.expand(N, -1, -1), memory, memory_key_padding_mask=padding
        )  # (N, Q, E)
        future = self.norm(future)
        current = torch.cat((memory[:, 0], future.mean(dim=1)), dim=-1)  # eq. 8: [task ‖ mean future]
        return self.classifier(current), self.future_classifier(future)

    def forward(self, features: torch.Tensor, return_future: bool = False):
        """features (B, T, D) -> scores (B, T, C+1) [and future scores (B, T, Q, C+1)]."""
        check_features(features, self.cfg.feature_dim)
        B, T, _ = features.shape
        windows, valid = sliding_windows(features, self.cfg.window)  # (B·T, W, D), (B·T,)
        current, future = self.score_windows(windows, valid)
        current = current.view(B, T, -1)  # (B·T, C+1) -> (B, T, C+1)
        if return_future:
            return current, future.view(B, T, self.cfg.future_steps, -1)  # (B, T, Q, C+1)
        return current

    def loss(
        self, features: torch.Tensor, targets: torch.Tensor, ignore_index: int = IGNORE_INDEX
    ) -> torch.Tensor:
        """Eq. 10: CE(current) + λ·CE(future). ``targets`` (B, T) class indices; future targets beyond the
        sequence end are ignored."""
        current, future = self(features, return_future=True)
        B, T, Q, C = future.shape
        loss = F.cross_entropy(current.reshape(-1, C), targets.reshape(-1), ignore_index=ignore_index)
        # future target of frame t, query q: the label of frame t + 1 + q (ignored past the end)
        padded = torch.cat((targets, targets.new_full((B, Q), ignore_index)), dim=1)  # (B, T + Q)
        future_targets = padded.unfold(1, Q, 1)[:, 1 : T + 1]  # (B, T, Q)
        future_loss = F.cross_entropy(
            future.reshape(-1, C), future_targets.reshape(-1), ignore_index=ignore_index
        )
        return loss + self.cfg.future_weight * future_loss

    def stream(self) -> FunctionStream:
        """Frame-by-frame scores from a ring buffer of the last W features."""
        if self.training:
            raise DataError("call .eval() before streaming: dropout would make the scores random")
        buffer = WindowBuffer(
            self.cfg.window, self.cfg.feature_dim, self.positions.dtype, self.positions.device
        )

        def score(window: torch.Tensor, valid: int) -> torch.Tensor:
            current, _ = self.score_windows(window, torch.tensor([valid], device=window.device))
            return current[0]

        return FunctionStream(buffer, score)
