"""Weight-only int8 linear layers, for inference whose time is spent reading weights.

Why: a streaming step multiplies a handful of rows by every weight of the model (OadTR at the paper's
dimensions: 125 M fp32 weights, 500 MB read per frame for 1 to 8 rows each). Such a product is bounded by
memory traffic, not arithmetic, and int8 weights are a quarter of the fp32 bytes.

How (the scheme of LLM.int8's weight-only baseline and of gpt-fast's ``int8`` mode; Dettmers et al. 2022,
arXiv:2208.07339, eq. 1): one symmetric scale per output channel n,

    s_n = max_k |W_nk| / 127,     Q_nk = round(W_nk / s_n) in [-127, 127] (int8),
    y = (x Qᵀ) · s + b,

so every weight's error is at most s_n / 2. The product runs in PyTorch's ``_weight_int8pack_mm`` CPU
kernel, which reads the int8 weight and converts it in registers: the memory read is the int8 bytes, never
a dequantized fp32 copy. The kernel is fast only with bf16 activations (measured on 2 AVX2 cores, 20
products of 4096 × 1024 at one row: fp32 F.linear 20.3 ms, the kernel with fp32 rows 65 ms, with bf16 rows
8.7 ms; at 8 rows 54, 768 and 29 ms), so x is rounded to bf16 on the way in and y comes back as bf16,
returned as fp32 with the bias added in fp32: a relative rounding of 2⁻⁹ on each side.

The weight's columns are zero-padded to a multiple of ``K_ALIGN`` (16), and x with them: on CPUs with AVX-512
and AMX (measured on an Intel Xeon, torch 2.14.1) the kernel reads K in blocks of 16, and any other K crashes
the process or returns garbage (K = 8 and 24: segfaults, inf and NaN), while AVX2 CPUs take any K. Zero
columns add nothing to the product, so the result is the same on both.

Not exact: scores move by both roundings (tests bound the difference to the fp32 layer by the error the
scales and bf16 allow, and hold the kernel to the dequantized weights). For inference only: the int8
weights take no gradient. Shapes: M rows (the product of x's leading dimensions), K in, N out.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from papernotes.errors import ConfigError

K_ALIGN = 16  # the kernel's block along K on AVX-512/AMX CPUs (module docstring)


class Int8Linear(nn.Module):
    """y = x Wᵀ + b with W stored as int8 rows and one fp32 scale per row (output channel)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach().float()  # (N, K)
        scale = weight.abs().amax(dim=1).clamp_min(torch.finfo(torch.float32).tiny) / 127  # (N,)
        quantized = torch.round(weight / scale[:, None]).clamp_(-127, 127).to(torch.int8)  # (N, K)
        pad = -self.in_features % K_ALIGN
        quantized = F.pad(quantized, (0, pad))  # (N, K) -> (N, K + pad): zero columns
        self.register_buffer("weight_int8", quantized.contiguous())
        self.register_buffer("scale", scale)
        self.register_buffer("scale_bf16", scale.to(torch.bfloat16), persistent=False)  # the kernel's dtype
        bias = None if linear.bias is None else linear.bias.detach().float().clone()
        self.register_buffer("bias", bias)

    def dequantized_weight(self) -> torch.Tensor:
        """The weight this layer computes with, (N, K): Q · s, with s in bf16 as the kernel takes it."""
        return self.weight_int8[:, : self.in_features].float() * self.scale_bf16.float()[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            raise ConfigError("Int8Linear is for inference: its int8 weights take no gradient")
        if x.dtype != torch.float32:
            raise ConfigError(f"Int8Linear computes in float32, got input of {x.dtype}")
        rows = x.reshape(-1, self.in_features).to(torch.bfloat16)  # (..., K) -> (M, K)
        padded = self.weight_int8.shape[1]
        if padded != self.in_features:
            rows = F.pad(rows, (0, padded - self.in_features))  # (M, K) -> (M, K + pad), zeros
        rows = rows.contiguous()
        y = torch._weight_int8pack_mm(rows, self.weight_int8, self.scale_bf16).float()  # (M, N)
        if self.bias is not None:
            y += self.bias
        return y.reshape(*x.shape[:-1], self.out_features)  # (M, N) -> (..., N)

    def extra_repr(self) -> str:
        bias = self.bias is not None
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={bias}"


def quantize_int8(model: nn.Module) -> int:
    """Replace every ``nn.Linear`` in ``model`` (subclasses included) by an :class:`Int8Linear`, in place.

    Returns the number of layers replaced. The model is then for CPU inference only; keep an fp32 copy to
    train or to save. Parameters that are not linear weights (norms, embeddings, convolutions) stay fp32.
    """
    targets = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if isinstance(child, nn.Linear)
    ]
    for parent, name, child in targets:
        if child.weight.device.type != "cpu":
            raise ConfigError(f"int8 weights run on the CPU; layer {name!r} is on {child.weight.device}")
        setattr(parent, name, Int8Linear(child))
    return len(targets)
