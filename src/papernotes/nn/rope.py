"""Rotary position embeddings (RoPE) with Llama 3's frequency scaling.

Paper: Su et al. 2021, "RoFormer: Enhanced Transformer with Rotary Position Embedding",
arXiv:2104.09864; the ``llama3`` scaling from Meta's Llama 3 release (Grattafiori et al.
2024, "The Llama 3 Herd of Models", arXiv:2407.21783).

Idea: rotate each pair of query/key channels by an angle proportional to the token's
position, so that q·k depends only on the relative offset of the two tokens.

Key equations (D = head dim, i = 0 .. D/2 - 1, m = position):
    f_i = θ^(-2i/D)                                   (inverse frequencies)
    RoPE(x)_m = x · cos(m f) + rotate_half(x) · sin(m f)
with HF's "rotate_half" layout: channel i pairs with channel i + D/2 (not 2i with 2i+1),
so weights copied from HF's checkpoints need no permutation.

``llama3`` scaling (HF's ``_compute_llama3_parameters``), wavelength wl_i = 2π / f_i:
    wl < L / high_freq_factor  -> keep f                       (high frequencies: local order)
    wl > L / low_freq_factor   -> f / factor                   (low frequencies: stretched)
    otherwise                  -> (1 - s) f / factor + s f,    s = (L / wl - low) / (high - low)
where L = original_max_position_embeddings.

Tests compare against transformers' ``LlamaRotaryEmbedding`` / ``apply_rotary_pos_emb``.
Shapes: B batch, H heads, T tokens, D head dim.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from papernotes.errors import ConfigError

LLAMA3_SCALING_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


def check_rope_scaling(scaling: dict[str, Any] | None, source: str = "rope_scaling") -> None:
    """Raise ConfigError unless ``scaling`` is None or a complete, sane ``llama3`` dict."""
    if scaling is None:
        return
    if not isinstance(scaling, dict):
        raise ConfigError(f"{source}: expected a dict or None, got {type(scaling).__name__}")
    rope_type = scaling.get("rope_type", scaling.get("type"))
    if rope_type != "llama3":
        raise ConfigError(
            f"{source}: rope_type {rope_type!r} is not supported; expected 'llama3' (or no scaling)"
        )
    missing = [key for key in LLAMA3_SCALING_KEYS if key not in scaling]
    if missing:
        raise ConfigError(f"{source}: llama3 scaling needs {missing}")
    if scaling["factor"] <= 0 or scaling["original_max_position_embeddings"] <= 0:
        raise ConfigError(f"{source}: factor and original_max_position_embeddings must be positive")
    if not 0 < scaling["low_freq_factor"] < scaling["high_freq_factor"]:
        raise ConfigError(
            f"{source}: expected 0 < low_freq_factor < high_freq_factor, got "
            f"{scaling['low_freq_factor']} and {scaling['high_freq_factor']}"
        )


def llama3_scale_frequencies(
    inv_freq: torch.Tensor,
    factor: float,
    low_freq_factor: float,
    high_freq_factor: float,
    original_max_position_embeddings: int,
) -> torch.Tensor:
    """Apply Llama 3's piecewise frequency scaling to inverse frequencies (radians per token)."""
    length = original_max_position_embeddings
    wavelength = 2 * math.pi / inv_freq  # tokens per full turn
    high_freq_wavelength = length / high_freq_factor
    low_freq_wavelength = length / low_freq_factor
    # long wavelengths never completed a turn in pre-training: interpolate them (divide by factor)
    scaled = torch.where(wavelength > low_freq_wavelength, inv_freq / factor, inv_freq)
    # in between, blend linearly in L / wl so the frequency curve stays continuous
    smooth = (length / wavelength - low_freq_factor) / (high_freq_factor - low_freq_factor)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = (wavelength >= high_freq_wavelength) & (wavelength <= low_freq_wavelength)
    return torch.where(is_medium, blended, scaled)


def rope_inverse_frequencies(
    head_dim: int,
    theta: float,
    scaling: dict[str, Any] | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Inverse frequencies f_i = θ^(-2i/D), shape (D/2,), fp32, optionally llama3-scaled."""
    check_rope_scaling(scaling)
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float() / head_dim  # (D/2,)
    inv_freq = 1.0 / (theta**exponents)  # Su et al. 2021, eq. 15: θ_i = 10000^(-2(i-1)/d)
    if scaling is None:
        return inv_freq
    return llama3_scale_frequencies(inv_freq, *(scaling[key] for key in LLAMA3_SCALING_KEYS))


def rope_cos_sin(
    inv_freq: torch.Tensor, position_ids: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of m·f for position ids (B, T) (or (T,)); each (B, T, D) (or (T, D)) in ``dtype``.

    Angles are computed in fp32 and only the result is cast: at position 8000 a bf16
    angle would be off by tens of radians.
    """
    freqs = position_ids[..., None].float() * inv_freq.float()  # (B, T, D/2)
    angles = torch.cat((freqs, freqs), dim=-1)  # (B, T, D): rotate_half layout repeats the halves
    return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) on the two halves of the last dimension."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate queries or keys x (B, H, T, D) by cos, sin (B, T, D) or (T, D) from ``rope_cos_sin``."""
    if cos.dim() == 3:
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # (B, 1, T, D): shared by every head
    return x * cos + rotate_half(x) * sin  # Su et al. 2021, eq. 34


class RotaryEmbedding(nn.Module):
    """Holds the inverse frequencies (a non-persistent buffer) and turns position ids into cos/sin.

    The frequencies stay fp32 even when the model is cast with ``.to(torch.bfloat16)``:
    ``_apply`` recomputes them after every cast/move, because bf16 frequencies shift the
    angle at position m by roughly m · f · 2⁻⁸ radians.
    """

    def __init__(self, head_dim: int, theta: float, scaling: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.theta = theta
        self.scaling = dict(scaling) if scaling is not None else None
        # explicit CPU: a model built under ``torch.device("meta")`` still gets real frequencies
        self.register_buffer(
            "inv_freq", rope_inverse_frequencies(head_dim, theta, scaling, "cpu"), persistent=False
        )

    def _apply(self, fn, recurse=True):  # noqa: ANN001, ANN202 - nn.Module's own signature
        super()._apply(fn, recurse)
        if self.inv_freq.device.type != "meta":
            self.inv_freq = rope_inverse_frequencies(
                self.head_dim, self.theta, self.scaling, self.inv_freq.device
            )
        return self

    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin for position ids (B, T); each (B, T, D)."""
        return rope_cos_sin(self.inv_freq, position_ids, dtype)
