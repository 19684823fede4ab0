"""OadTR: online action detection with transformers, with sliding-window attention over the stream.

Paper: Wang, Zhang, Qing, Gao, Zhang, Sang & Tao 2021, "OadTR: Online Action Detection with Transformers",
ICCV 2021, arXiv:2106.11149.

Idea (§3): the score of frame t comes from a transformer encoder over the recent frames plus a learnable
task token; a decoder with Q = 8 learnable queries attends to the encoder output and predicts the classes of
the next 8 frames (§3.3); the classifier of the current frame reads [task-token output ‖ mean of the decoder
outputs] (eq. 8). Training loss: CE(current) + λ·CE(future), λ = 0.5 (eq. 10).

What differs from the paper, and why. The paper encodes a window of the last W = 64 frames with learned
*absolute* positions inside the window and full attention among them, so every frame's encoding depends on
where the window starts: each new frame forces the whole window to be encoded again, and a training chunk
of T frames costs T separate windows. Here every attention layer is a *sliding window*: frame token s attends
to frames s − W + 1 .. s (itself included), never to a later frame or to any task token, and positions enter
as a learned bias per head and relative distance (initialised as ALiBi's recency slopes, Press et al. 2022,
arXiv:2108.12409) plus a causal depth-wise convolution over the projected frames (a convolutional position
encoding, Chu et al. 2021, arXiv:2102.10882). A frame's encoding then no longer depends on which window it
sits in, which gives

* one pass per training chunk: all T frame tokens and T task tokens (task token t attends to frames
  t − W + 1 .. t and to itself) in one masked attention per layer, and the T·Q decoder queries in one
  masked cross-attention; ``test_one_pass_equals_a_forward_per_window`` holds it to scoring every frame
  from its own window;
* exact streaming with caches: per layer, the keys and values of the last W − 1 frames (what a new frame
  does not change); a step encodes two tokens (the new frame, the task token) instead of W + 1.

Each layer reaches W − 1 frames back, so the score of frame t depends on frames t − R + 1 .. t with
R = (encoder_layers + 1)·(W − 1) + position_kernel (``history``: the decoder's cross-attention is one more
hop, and the position convolution reaches position_kernel − 1 frames further).

Dimension letters: B sequences, T frames, W window, D input features, E model width, H heads, Q future
queries.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from papernotes.core.train import IGNORE_INDEX
from papernotes.errors import DataError
from papernotes.nn import fast_linear
from papernotes.nn.linear_tuning import TuneReport, tune_linears
from papernotes.video.online.stream import check_features


@dataclass
class OadTRConfig:
    feature_dim: int = 3072  # D: THUMOS'14 RGB (2048) + flow (1024)
    num_classes: int = 21  # C + 1 (background at 0)
    window: int = 64  # W: frames each attention layer reaches back, the current one included
    dim: int = 1024  # E: model width after the linear projection
    heads: int = 8  # encoder attention heads
    encoder_layers: int = 3
    decoder_layers: int = 5
    decoder_heads: int = 4
    future_steps: int = 8  # Q: decoder queries, one per future frame
    position_kernel: int = 3  # frames of the causal depth-wise conv that encodes order (module docstring)
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
        decoder_heads=2,
        future_steps=3,
    ),
}


def alibi_bias(heads: int, window: int) -> torch.Tensor:
    """(H, W + 1) initial logit bias: −m_h·d for a key d frames back (ALiBi slopes m_h = 2^(−8(h+1)/H)),
    and 0 for the task token's own key (slot W)."""
    slopes = 2.0 ** (-8.0 * torch.arange(1, heads + 1) / heads)  # (H,)
    distance = torch.arange(window, dtype=torch.float32)
    return torch.cat((-slopes[:, None] * distance, torch.zeros(heads, 1)), dim=1)


def band_index(queries: torch.Tensor, keys: torch.Tensor, window: int) -> torch.Tensor:
    """Bias slot of each (query frame, key frame) pair: the distance q − k when 0 <= q − k < W, else −1."""
    distance = queries[:, None] - keys[None, :]
    return torch.where((distance >= 0) & (distance < window), distance, -1)


class Attention(nn.Module):
    """Multi-head attention with a learned logit bias per head and bias slot (relative distance)."""

    def __init__(self, dim: int, heads: int, window: int | None = None):
        super().__init__()
        self.heads = heads
        self.query = fast_linear.Linear(dim, dim)
        self.key_value = fast_linear.Linear(dim, 2 * dim)
        self.out = fast_linear.Linear(dim, dim)
        # (H, W + 1): slots 0 .. W − 1 for keys that many frames back, slot W for the task token's own key
        self.bias = nn.Parameter(alibi_bias(heads, window)) if window is not None else None

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        *lead, N, E = x.shape
        return x.view(*lead, N, self.heads, E // self.heads).transpose(-3, -2)  # (..., H, N, E/H)

    def keys_values(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (..., N, E) -> keys, values (..., H, N, E/H)."""
        k, v = self.key_value(x).chunk(2, dim=-1)
        return self._split(k), self._split(v)

    def forward(
        self, x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, index: torch.Tensor | None
    ) -> torch.Tensor:
        """Queries from x (..., Lq, E) over keys/values (..., H, Lk, E/H); ``index`` (Lq, Lk) holds each
        pair's bias slot, −1 where the query may not look. Returns (..., Lq, E)."""
        mask = None
        if index is not None:
            mask = self.bias[:, index.clamp(min=0)].masked_fill(index < 0, float("-inf"))  # (H, Lq, Lk)
        out = F.scaled_dot_product_attention(self._split(self.query(x)), keys, values, attn_mask=mask)
        return self.out(out.transpose(-3, -2).flatten(-2))  # (..., H, Lq, E/H) -> (..., Lq, E)


def _feed_forward(dim: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        fast_linear.Linear(dim, 4 * dim), nn.ReLU(), nn.Dropout(dropout), fast_linear.Linear(4 * dim, dim)
    )


class EncoderLayer(nn.Module):
    """Pre-norm transformer layer: x + Attn(LN(x)), then x + FFN(LN(x))."""

    def __init__(self, cfg: OadTRConfig):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(cfg.dim), nn.LayerNorm(cfg.dim)
        self.attention = Attention(cfg.dim, cfg.heads, cfg.window)
        self.ffn = _feed_forward(cfg.dim, cfg.dropout)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.dropout(self.attention(h, *self.attention.keys_values(h), index))
        return x + self.dropout(self.ffn(self.norm2(x)))


class DecoderLayer(nn.Module):
    """Pre-norm decoder layer: self-attention among the Q queries of a frame, cross-attention to its memory,
    feed-forward."""

    def __init__(self, cfg: OadTRConfig):
        super().__init__()
        E, H = cfg.dim, cfg.decoder_heads
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(E), nn.LayerNorm(E), nn.LayerNorm(E)
        self.self_attention = Attention(E, H)
        self.cross_attention = Attention(E, H, cfg.window)
        self.ffn = _feed_forward(E, cfg.dropout)
        self.dropout = nn.Dropout(cfg.dropout)

    def self_block(self, q: torch.Tensor) -> torch.Tensor:
        """q (N, Q, E): the queries of N frames, each group attending only to itself."""
        h = self.norm1(q)
        return q + self.dropout(self.self_attention(h, *self.self_attention.keys_values(h), None))

    def cross_block(
        self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, index: torch.Tensor
    ) -> torch.Tensor:
        """q (B, L, E) over memory keys/values (B, H, M, E/H), bias slots ``index`` (L, M); then the FFN."""
        q = q + self.dropout(self.cross_attention(self.norm2(q), keys, values, index))
        return q + self.dropout(self.ffn(self.norm3(q)))


class OadTR(nn.Module):
    def __init__(self, cfg: OadTRConfig):
        super().__init__()
        self.cfg = cfg
        E = cfg.dim
        self.project = fast_linear.Linear(cfg.feature_dim, E)
        # order enters the tokens as a causal depth-wise convolution over the projected frames (a
        # convolutional position encoding: Chu et al. 2021, arXiv:2102.10882), relative and so cacheable
        self.position = nn.Conv1d(E, E, cfg.position_kernel, groups=E)
        self.task_token = nn.Parameter(torch.zeros(1, 1, E))
        nn.init.trunc_normal_(self.task_token, std=0.02)
        self.encoder = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.encoder_layers))
        self.encoder_norm = nn.LayerNorm(E)
        self.queries = nn.Parameter(torch.zeros(1, cfg.future_steps, E))
        nn.init.trunc_normal_(self.queries, std=0.02)
        self.decoder = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.decoder_layers))
        self.norm = nn.LayerNorm(E)
        self.future_classifier = fast_linear.Linear(E, cfg.num_classes)
        self.classifier = fast_linear.Linear(2 * E, cfg.num_classes)

    @property
    def history(self) -> int:
        """R: how many frames (the current one included) a score can depend on."""
        return (self.cfg.encoder_layers + 1) * (self.cfg.window - 1) + self.cfg.position_kernel

    def _indices(self, T: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Bias slots of the encoder's 2T tokens (frames, then task tokens) and of the decoder's T·Q queries
        over the 2T memory tokens; −1 where attention is not allowed."""
        W, Q = self.cfg.window, self.cfg.future_steps
        frames = torch.arange(T, device=device)
        band = band_index(frames, frames, W)  # (T, T): key frame within the W frames up to the query
        own = torch.where(frames[:, None] == frames[None, :], W, -1)  # (T, T): task token t sees only itself
        never = torch.full_like(band, -1)
        encoder = torch.cat((torch.cat((band, never), 1), torch.cat((band, own), 1)), 0)  # (2T, 2T)
        decoder = torch.cat((band, own), 1).repeat_interleave(Q, dim=0)  # (T·Q, 2T)
        return encoder, decoder

    def frame_tokens(self, projected: torch.Tensor) -> torch.Tensor:
        """Projected frames (B, T, E), the first ones preceded by zeros -> tokens (B, T, E): each frame plus
        a causal depth-wise convolution of itself and the ``position_kernel`` − 1 frames before it."""
        k = self.cfg.position_kernel
        padded = F.pad(projected.transpose(1, 2), (k - 1, 0))  # (B, E, k − 1 + T), zeros before the start
        return projected + self.position(padded).transpose(1, 2)

    def _encode(self, features: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> memory (B, 2T, E): the T frame tokens, then the T task tokens, normalised."""
        B, T, _ = features.shape
        frames = self.frame_tokens(self.project(features))
        x = torch.cat((frames, self.task_token.expand(B, T, -1)), dim=1)  # (B, 2T, E)
        for layer in self.encoder:
            x = layer(x, index)
        return self.encoder_norm(x)

    def forward(self, features: torch.Tensor, return_future: bool = False):
        """features (B, T, D) -> scores (B, T, C+1) [and future scores (B, T, Q, C+1)], in one pass."""
        check_features(features, self.cfg.feature_dim)
        B, T, _ = features.shape
        Q, E = self.cfg.future_steps, self.cfg.dim
        encoder_index, decoder_index = self._indices(T, features.device)
        memory = self._encode(features, encoder_index)  # (B, 2T, E)
        q = self.queries.expand(B * T, -1, -1)  # (B·T, Q, E): every frame's own set of queries
        for layer in self.decoder:
            q = layer.self_block(q).view(B, T * Q, E)
            keys, values = layer.cross_attention.keys_values(memory)
            q = layer.cross_block(q, keys, values, decoder_index).view(B * T, Q, E)
        future = self.norm(q).view(B, T, Q, E)
        current = torch.cat((memory[:, T:], future.mean(dim=2)), dim=-1)  # eq. 8: [task ‖ mean future]
        scores = self.classifier(current)  # (B, T, C+1)
        if return_future:
            return scores, self.future_classifier(future)  # (B, T, Q, C+1)
        return scores

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

    def stream(self) -> OadTRStream:
        """Frame-by-frame scores from per-layer caches of the last W − 1 frames' keys and values."""
        if self.training:
            raise DataError("call .eval() before streaming: dropout would make the scores random")
        return OadTRStream(self)

    def tune_for_streaming(
        self, streams: int | tuple[int, ...] = 1, cache_dir: str | Path | None = None, use_cache: bool = True
    ) -> TuneReport:
        """Choose each projection's fastest matrix form (``nn.linear_tuning``, measured once per machine and
        cached) for the row counts a stream step feeds it: N streams give N rows to the input projection and
        the classifiers, 2N to the encoder (the new frame and its task token) and Q·N to the decoder.

        A step reads every weight for a handful of rows, where ``F.linear``'s default form runs far below the
        memory limit on a CPU (issue 17, part 0); the forms only run with autograd off, as streaming does.
        ``cache_dir`` and ``use_cache``: where the timings are kept (default: the kernels folder of the
        default cache), as in ``tune_linears``.
        """
        counts = (streams,) if isinstance(streams, int) else streams
        rows = sorted({m * n for n in counts for m in (1, 2, self.cfg.future_steps)})
        return tune_linears(self, rows=rows, cache_dir=cache_dir, use_cache=use_cache)


class OadTRStream:
    """Exact streaming: ``step(feature (D,))`` -> scores (C+1,), or N streams at once, (N, D) -> (N, C+1).

    A new frame changes nothing that was computed for earlier frames (sliding-window attention, relative
    bias), so each layer keeps the keys and values of the last W − 1 frames and a step runs two tokens (the
    new frame, the task token) through the encoder and the Q queries through the decoder. The decoder's first
    self-attention sees only the learned queries, so it is computed once.
    """

    def __init__(self, model: OadTR):
        self.model = model
        with torch.no_grad():
            self.first_queries = model.decoder[0].self_block(model.queries) if model.decoder else None
        self.reset()

    def reset(self) -> None:
        self.seen = 0
        self.projected: torch.Tensor | None = None  # (N, k − 1, E): the last projected frames, zeros first
        self.encoder_cache: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(self.model.encoder)
        self.decoder_cache: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(self.model.decoder)

    def _append(self, cache, keys: torch.Tensor, values: torch.Tensor):
        """Cached frames + the new frame's key/value (..., H, 1, E/H) -> all of them, and the W − 1 newest."""
        if cache is not None:
            keys, values = torch.cat((cache[0], keys), dim=-2), torch.cat((cache[1], values), dim=-2)
        start = max(0, keys.shape[-2] - (self.model.cfg.window - 1))  # the W − 1 newest frames stay
        return keys, values, (keys[..., start:, :], values[..., start:, :])

    @torch.no_grad()
    def step(self, feature: torch.Tensor) -> torch.Tensor:
        cfg, model = self.model.cfg, self.model
        single = feature.dim() == 1
        x = feature[None] if single else feature  # (N, D)
        if x.dim() != 2 or x.shape[1] != cfg.feature_dim:
            raise DataError(
                f"stream step expects one feature vector of size {cfg.feature_dim} "
                f"(or (N, {cfg.feature_dim}) for N streams), got {tuple(feature.shape)}"
            )
        if not torch.isfinite(x).all():
            raise DataError(f"stream step got a non-finite feature at frame {self.seen}")
        N, W, device = x.shape[0], cfg.window, x.device
        if self.projected is None:
            self.projected = x.new_zeros(N, cfg.position_kernel - 1, cfg.dim)
        recent = torch.cat((self.projected, model.project(x)[:, None]), dim=1)  # (N, k, E)
        self.projected = recent[:, 1:]
        frame = model.frame_tokens(recent)[:, -1]  # the convolution at the new frame
        tokens = torch.stack((frame, model.task_token[0, 0].expand(N, -1)), dim=1)  # (N, 2, E)
        for i, layer in enumerate(model.encoder):
            h = layer.norm1(tokens)
            k, v = layer.attention.keys_values(h)  # (N, H, 2, E/H): the new frame, the task token
            frame_k, frame_v, self.encoder_cache[i] = self._append(
                self.encoder_cache[i], k[..., :1, :], v[..., :1, :]
            )
            n = frame_k.shape[-2]  # frames in reach, oldest first
            distance = torch.arange(n - 1, -1, -1, device=device)
            index = torch.stack((torch.cat((distance, distance.new_tensor([-1]))),
                                 torch.cat((distance, distance.new_tensor([W])))))  # fmt: skip
            keys = torch.cat((frame_k, k[..., 1:, :]), dim=-2)
            values = torch.cat((frame_v, v[..., 1:, :]), dim=-2)
            tokens = tokens + layer.attention(h, keys, values, index)
            tokens = tokens + layer.ffn(layer.norm2(tokens))
        memory = model.encoder_norm(tokens)  # (N, 2, E)
        q = None
        for i, layer in enumerate(model.decoder):
            q = self.first_queries.expand(N, -1, -1) if i == 0 else layer.self_block(q)  # (N, Q, E)
            k, v = layer.cross_attention.keys_values(memory)
            frame_k, frame_v, self.decoder_cache[i] = self._append(
                self.decoder_cache[i], k[..., :1, :], v[..., :1, :]
            )
            n = frame_k.shape[-2]
            index = torch.cat((torch.arange(n - 1, -1, -1, device=device), torch.tensor([W], device=device)))
            index = index.expand(cfg.future_steps, -1)
            keys = torch.cat((frame_k, k[..., 1:, :]), dim=-2)
            values = torch.cat((frame_v, v[..., 1:, :]), dim=-2)
            q = layer.cross_block(q, keys, values, index)
        future = model.norm(q)  # (N, Q, E)
        scores = model.classifier(torch.cat((memory[:, 1], future.mean(dim=1)), dim=-1))  # (N, C+1)
        self.seen += 1
        return scores[0] if single else scores
