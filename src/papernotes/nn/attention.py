"""Scaled dot-product attention: a naive reference, PyTorch SDPA, and our FlashAttention.

Shapes: B batch, H query heads, Hkv key/value heads (H % Hkv == 0, grouped-query
attention), Nq query length, Nk key length, D head dim.

Masking conventions shared by every backend:
- ``causal=True`` is *bottom-right* aligned: query i sits at absolute position
  ``Nk - Nq + i`` and sees keys ``0 .. Nk - Nq + i``. This is the decode-time
  offset (a few new queries against a longer KV cache). Note that SDPA's own
  ``is_causal`` is top-left aligned when Nq != Nk, so we build the mask ourselves.
- ``attn_mask`` is boolean (True = may attend) or additive float, broadcastable to
  (B, H, Nq, Nk). It combines with ``causal`` (both must allow a position).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from papernotes.errors import ConfigError

BACKENDS = ("naive", "sdpa", "flash")


def check_backend(name: str) -> str:
    """Validate an attention backend name; the error lists the valid ones."""
    if name not in BACKENDS:
        raise ConfigError(f"unknown attention backend {name!r}; expected one of: {', '.join(BACKENDS)}")
    return name


def causal_mask(nq: int, nk: int, device: torch.device | None = None) -> torch.Tensor:
    """Bottom-right aligned causal mask (Nq, Nk), True where query i may see key j."""
    offset = nk - nq
    i = torch.arange(nq, device=device)[:, None]
    j = torch.arange(nk, device=device)[None, :]
    return j <= i + offset


def _combined_mask(
    q: torch.Tensor, k: torch.Tensor, causal: bool, attn_mask: torch.Tensor | None
) -> torch.Tensor | None:
    """One additive-or-boolean mask for SDPA/naive, or None when nothing is masked."""
    nq, nk = q.shape[-2], k.shape[-2]
    mask = causal_mask(nq, nk, q.device) if causal else None
    if attn_mask is None:
        return mask
    if attn_mask.dtype == torch.bool:
        return attn_mask if mask is None else attn_mask & mask
    if mask is None:
        return attn_mask.to(q.dtype)
    return attn_mask.to(q.dtype).masked_fill(~mask, float("-inf"))


def naive_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = False,
    scale: float | None = None,
    attn_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """softmax(Q Kᵀ · scale + mask) V, materialising the full (Nq, Nk) score matrix."""
    h, hkv = q.shape[1], k.shape[1]
    if h != hkv:  # GQA: each K/V head serves h // hkv query heads
        k = k.repeat_interleave(h // hkv, dim=1)  # (B, H, Nk, D)
        v = v.repeat_interleave(h // hkv, dim=1)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = (q @ k.transpose(-2, -1)).float() * scale  # (B, H, Nq, Nk); fp32 so bf16 rows don't lose mass
    mask = _combined_mask(q, k, causal, attn_mask)
    if mask is not None:
        scores = (
            scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask.float()
        )
    probs = torch.softmax(scores, dim=-1).to(v.dtype)
    return probs @ v  # (B, H, Nq, D)


def sdpa_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = False,
    scale: float | None = None,
    attn_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """PyTorch's fused ``scaled_dot_product_attention`` with our mask conventions."""
    gqa = q.shape[1] != k.shape[1]
    if causal and attn_mask is None and q.shape[-2] == k.shape[-2]:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=gqa)
    mask = _combined_mask(q, k, causal, attn_mask)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=gqa)


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    backend: str = "sdpa",
    causal: bool = False,
    scale: float | None = None,
    attn_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Dispatch attention by backend name: ``"naive" | "sdpa" | "flash"``.

    q: (B, H, Nq, D); k, v: (B, Hkv, Nk, D). Returns (B, H, Nq, D).
    """
    if backend == "sdpa":
        return sdpa_attention(q, k, v, causal=causal, scale=scale, attn_mask=attn_mask)
    if backend == "flash":
        # imported here so the reference paths never depend on our kernel
        from papernotes.nn.flash_attention import flash_attention

        return flash_attention(q, k, v, causal=causal, scale=scale, attn_mask=attn_mask)
    if backend == "naive":
        return naive_attention(q, k, v, causal=causal, scale=scale, attn_mask=attn_mask)
    raise ConfigError(f"unknown attention backend {backend!r}; expected one of: {', '.join(BACKENDS)}")
