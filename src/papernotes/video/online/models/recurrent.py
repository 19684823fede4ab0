"""TRN: the Temporal Recurrent Network for online action detection (not the relation network of video/trn.py).

Paper: Xu, Gao, Yazici, Lu, Han & Crandall 2019, "Temporal Recurrent Networks for Online Action
Detection", ICCV 2019, arXiv:1811.07391.

Idea: an LSTM cell (the "spatiotemporal accumulator") reads the stream; before each step a decoder LSTM,
started from the accumulator's state, anticipates the next ``decoder_steps`` frames. Each decoder step is
classified, and its scores, embedded by a linear layer + ReLU, feed the next decoder step. The average of
those embeddings is the *future representation*, concatenated to the next frame's input of the
accumulator (§3.2, Fig. 2). So the current prediction sees the past (the state) and an anticipated future.
Losses (eq. 4): CE of the current frame + CE of each anticipated frame.

Order of one step at frame t (as the official TRN.pytorch code): the accumulator reads
[x_t ‖ future_{t−1}] and classifies frame t; then the decoder, from the new state, anticipates frames
t+1 .. t+S and gives future_t for the next step. Streaming keeps (h, c) and future_{t−1}: bounded state.

Dimension letters: B sequences, T frames, D features, H hidden, S decoder steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from papernotes.core.train import IGNORE_INDEX
from papernotes.errors import DataError
from papernotes.video.online.stream import check_features


@dataclass
class RecurrentConfig:
    feature_dim: int = 3072  # D: THUMOS'14 RGB + flow
    num_classes: int = 21  # C + 1
    embed: int = 512  # input embedding of the features (Linear + ReLU)
    hidden: int = 512  # H: LSTM state size (accumulator and decoder)
    decoder_steps: int = 8  # S: anticipated frames (2 s at 4 fps)
    dropout: float = 0.1


PRESETS = {
    "default": RecurrentConfig(),
    "tiny": RecurrentConfig(feature_dim=16, num_classes=5, embed=24, hidden=24, decoder_steps=3),
}


class TemporalRecurrentNetwork(nn.Module):
    def __init__(self, cfg: RecurrentConfig):
        super().__init__()
        self.cfg = cfg
        H = cfg.hidden
        self.embed = nn.Sequential(nn.Linear(cfg.feature_dim, cfg.embed), nn.ReLU())
        self.accumulator = nn.LSTMCell(cfg.embed + H, H)
        self.to_decoder_h, self.to_decoder_c = nn.Linear(H, H), nn.Linear(H, H)
        self.decoder = nn.LSTMCell(H, H)
        self.fusion = nn.Sequential(nn.Linear(cfg.num_classes, H), nn.ReLU())  # scores -> next decoder input
        self.dropout = nn.Dropout(cfg.dropout)
        self.classifier = nn.Linear(H, cfg.num_classes)  # shared by the current and the anticipated frames

    def initial_state(self, batch: int, like: torch.Tensor) -> tuple[torch.Tensor, ...]:
        zeros = like.new_zeros(batch, self.cfg.hidden)
        return zeros, zeros, zeros  # h, c, future representation

    def cell(
        self, x_t: torch.Tensor, state: tuple[torch.Tensor, ...]
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]:
        """One frame: embedded x_t (B, E) -> current scores (B, C+1), anticipated (B, S, C+1), state."""
        h, c, future = state
        h, c = self.accumulator(torch.cat((x_t, future), dim=-1), (h, c))
        current = self.classifier(self.dropout(h))
        dec_h, dec_c = self.to_decoder_h(h), self.to_decoder_c(c)
        dec_input = torch.zeros_like(h)
        future = torch.zeros_like(h)
        anticipated = []
        for _ in range(self.cfg.decoder_steps):
            dec_h, dec_c = self.decoder(self.dropout(dec_input), (dec_h, dec_c))
            scores = self.classifier(self.dropout(dec_h))
            anticipated.append(scores)
            dec_input = self.fusion(scores)
            future = future + dec_input
        future = future / self.cfg.decoder_steps  # the pooled future representation
        return current, torch.stack(anticipated, dim=1), (h, c, future)

    def forward(self, features: torch.Tensor, return_future: bool = False):
        """features (B, T, D) -> scores (B, T, C+1) [and anticipated (B, T, S, C+1)], from zero state."""
        check_features(features, self.cfg.feature_dim)
        B, T, _ = features.shape
        x = self.embed(features)  # (B, T, E): one matrix product for all frames
        state = self.initial_state(B, x)
        currents, futures = [], []
        for t in range(T):
            current, anticipated, state = self.cell(x[:, t], state)
            currents.append(current)
            futures.append(anticipated)
        scores = torch.stack(currents, dim=1)  # (B, T, C+1)
        if return_future:
            return scores, torch.stack(futures, dim=1)  # (B, T, S, C+1)
        return scores

    def loss(
        self, features: torch.Tensor, targets: torch.Tensor, ignore_index: int = IGNORE_INDEX
    ) -> torch.Tensor:
        """Eq. 4: CE(current) + mean over anticipated steps of CE(frame t + s); targets (B, T) indices."""
        current, future = self(features, return_future=True)
        B, T, S, C = future.shape
        loss = F.cross_entropy(current.reshape(-1, C), targets.reshape(-1), ignore_index=ignore_index)
        padded = torch.cat((targets, targets.new_full((B, S), ignore_index)), dim=1)  # (B, T + S)
        future_targets = padded.unfold(1, S, 1)[:, 1 : T + 1]  # (B, T, S): frame t + 1 + s
        return loss + F.cross_entropy(
            future.reshape(-1, C), future_targets.reshape(-1), ignore_index=ignore_index
        )

    def stream(self) -> _RecurrentStream:
        if self.training:
            raise DataError("call .eval() before streaming: dropout would make the scores random")
        return _RecurrentStream(self)


class _RecurrentStream:
    """Keeps (h, c, future): three vectors of size H, whatever the stream's length."""

    def __init__(self, model: TemporalRecurrentNetwork):
        self.model = model
        self.state: tuple[torch.Tensor, ...] | None = None

    def reset(self) -> None:
        self.state = None

    @torch.no_grad()
    def step(self, feature: torch.Tensor) -> torch.Tensor:
        check_features(feature[None, None], self.model.cfg.feature_dim)
        if not torch.isfinite(feature).all():
            raise DataError("stream step got a non-finite feature")
        x = self.model.embed(feature[None])  # (1, E)
        if self.state is None:
            self.state = self.model.initial_state(1, x)
        current, _, self.state = self.model.cell(x, self.state)
        return current[0]
