"""Dilated (atrous) temporal convolutions: a reusable, optionally causal and streamable stack.

Papers: Yu & Koltun 2016, "Multi-Scale Context Aggregation by Dilated Convolutions", arXiv:1511.07122;
hybrid dilation rates against gridding: Wang et al. 2018, "Understanding Convolution for Semantic
Segmentation", arXiv:1702.08361; causal dilated stacks for sequences: van den Oord et al. 2016 (WaveNet,
arXiv:1609.03499) and Bai et al. 2018 (TCN, arXiv:1803.01271).

Facts the code relies on:

* A kernel of size k at dilation d spans k + (k − 1)(d − 1) inputs (:func:`effective_kernel_size`), so
  padding d(k − 1)/2 on each side keeps the length (odd k).
* A stack of stride-1 layers sees 1 + Σ (k − 1)·d inputs (:func:`receptive_field`). Equal rates
  (2, 2, 2) leave holes inside that span, the "gridding" problem; hybrid rates such as (1, 2, 5) cover it
  (:func:`gridding_coverage`).
* The causal version pads d(k − 1) on the left only: output t depends on inputs ≤ t, so the stack can run
  online, one step at a time, from a buffer of the last d(k − 1) inputs per layer (:meth:`step`).

Shapes: the stack takes and returns (B, T, D) sequences, as video features and per-frame detection features
are stored; inside, Conv1d works on (B, D, T).

The tests (``tests/nn/test_dilated.py``) hold the centred layer to ``F.conv1d(..., padding="same")`` with the
same weights, :func:`receptive_field` and :func:`gridding_coverage` to the input support that autograd
measures, and :meth:`DilatedTemporalStack.step` to the batched forward pass.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from papernotes.errors import ConfigError, DataError


def effective_kernel_size(kernel_size: int, dilation: int) -> int:
    """Inputs spanned by one dilated kernel: k + (k − 1)(d − 1)."""
    return kernel_size + (kernel_size - 1) * (dilation - 1)


def receptive_field(kernel_size: int, dilations: Sequence[int]) -> int:
    """Inputs that one output of a stack of stride-1 dilated convolutions depends on: 1 + Σ (k − 1)·d."""
    return 1 + sum((kernel_size - 1) * d for d in dilations)


def gridding_coverage(kernel_size: int, dilations: Sequence[int]) -> torch.Tensor:
    """Which inputs inside the receptive field reach one output of a stack (bool, length = field).

    Entry i is the input i steps after the first one in the field: t − (field − 1) + i for a causal stack,
    t − (field − 1)/2 + i for a centred one (the mask is symmetric, so either reading holds). Computed by
    composing the layers' tap sets: each layer adds {j·d : j = 0..k−1} to every reachable offset. Equal
    rates leave False holes (gridding); hybrid rates cover the whole field.
    """
    reach = torch.zeros(1, dtype=torch.bool)
    reach[0] = True
    for d in dilations:
        grown = torch.zeros(len(reach) + (kernel_size - 1) * d, dtype=torch.bool)
        for j in range(kernel_size):
            grown[j * d : j * d + len(reach)] |= reach
        reach = grown
    return reach


class DilatedTemporalConv(nn.Module):
    """Conv1d over time with dilation; length-preserving. (B, C_in, T) -> (B, C_out, T)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        dilation: int = 1,
        causal: bool = True,
    ) -> None:
        super().__init__()
        if kernel_size < 1 or dilation < 1:
            raise ConfigError(f"kernel_size and dilation must be >= 1, got {kernel_size}, {dilation}")
        if not causal and kernel_size % 2 == 0:
            raise ConfigError(
                f"a centred (non-causal) dilated convolution needs an odd kernel_size, got {kernel_size}"
            )
        self.kernel_size, self.dilation, self.causal = kernel_size, dilation, causal
        self.history = dilation * (kernel_size - 1)  # inputs before t that output t reads (causal)
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, dilation=dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.causal:
            x = F.pad(x, (self.history, 0))  # left only: no output reads the future
        else:
            x = F.pad(x, (self.history // 2, self.history // 2))  # d(k − 1)/2 each side
        return self.conv(x)


class DilatedTemporalStack(nn.Module):
    """Residual stack of dilated temporal convolutions on (B, T, D) sequences.

    1x1 input projection -> per dilation: x + Conv1x1(Dropout(ReLU(DilatedConv(x)))) -> 1x1 output
    projection. With ``causal=True`` (the default, for online use) :meth:`step` runs it one time step at a
    time and, in eval mode (dropout off), gives the batched outputs.
    """

    def __init__(
        self,
        in_channels: int,
        hidden_channels: int,
        out_channels: int | None = None,
        kernel_size: int = 3,
        dilations: Sequence[int] = (1, 2, 5),
        causal: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if not dilations:
            raise ConfigError("dilations must name at least one rate")
        self.kernel_size, self.dilations, self.causal = kernel_size, tuple(dilations), causal
        self.inp = nn.Conv1d(in_channels, hidden_channels, 1)
        self.convs = nn.ModuleList(
            DilatedTemporalConv(hidden_channels, hidden_channels, kernel_size, d, causal) for d in dilations
        )
        self.mixes = nn.ModuleList(nn.Conv1d(hidden_channels, hidden_channels, 1) for _ in dilations)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Conv1d(hidden_channels, out_channels or hidden_channels, 1)
        self._past: list[torch.Tensor] | None = None

    @property
    def receptive_field(self) -> int:
        """Time steps one output reads: the latest ones (causal) or a window centred on it."""
        return receptive_field(self.kernel_size, self.dilations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3:
            raise DataError(f"DilatedTemporalStack expects (B, T, D), got {tuple(x.shape)}")
        h = self.inp(x.transpose(1, 2))  # (B, T, D) -> (B, D, T) -> (B, H, T)
        for conv, mix in zip(self.convs, self.mixes):
            h = h + mix(self.dropout(F.relu(conv(h))))
        return self.out(h).transpose(1, 2)  # (B, out, T) -> (B, T, out)

    # -------------------------------------------------------------------- streaming (causal only)

    def reset(self) -> None:
        """Forget the history: the next :meth:`step` starts a new sequence (zero padding before it)."""
        self._past = None

    def step(self, x_t: torch.Tensor) -> torch.Tensor:
        """One time step (B, D) -> (B, out), equal to the batched output at that step."""
        if not self.causal:
            raise ConfigError("step() needs causal=True: a centred convolution reads future steps")
        if x_t.dim() != 2:
            raise DataError(f"step expects one time step (B, D), got {tuple(x_t.shape)}")
        h = self.inp(x_t[:, :, None])  # (B, D) -> (B, D, 1) -> (B, H, 1)
        if self._past is not None and self._past[0].shape[0] != len(h):
            held = self._past[0].shape[0]
            raise DataError(f"step got a batch of {len(h)}, the stream holds {held}; call reset() first")
        if self._past is None:
            self._past = [h.new_zeros(h.shape[0], h.shape[1], c.history) for c in self.convs]
        for i, (conv, mix) in enumerate(zip(self.convs, self.mixes)):
            window = torch.cat((self._past[i], h), dim=2)  # (B, H, history + 1)
            self._past[i] = window[:, :, 1:]  # keep the last `history` inputs
            h = h + mix(self.dropout(F.relu(conv.conv(window))))  # the conv reads exactly its k taps
        return self.out(h)[:, :, 0]  # (B, out, 1) -> (B, out)
