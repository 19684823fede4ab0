"""Root-mean-square layer normalisation.

Paper: Zhang & Sennrich 2019, "Root Mean Square Layer Normalization", arXiv:1910.07467.
Idea: drop LayerNorm's mean-centring and bias; rescale each vector by its RMS only.
Key equation: y = x / sqrt(mean(x²) + eps) · g.

Semantics follow Hugging Face's ``LlamaRMSNorm`` exactly (the tests in
``tests/nn/test_rmsnorm.py`` compare against it): the statistic and the division run
in fp32, the result is cast back to the input dtype, and only then multiplied by the
weight, so bf16 models round in the same places as HF's.
"""

from __future__ import annotations

import torch
from torch import nn


class RMSNorm(nn.Module):
    """RMSNorm over the last dimension; input (..., E) -> output (..., E)."""

    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))  # g, the per-channel gain
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        # fp32 statistics: in bf16, mean(x²) of a 4096-wide vector loses most of its digits
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)  # Zhang & Sennrich 2019, eq. 4
        return self.weight * h.to(dtype)  # cast before the gain, as HF does

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"
