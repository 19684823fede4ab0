"""FlashAttention in PyTorch: tiled online-softmax forward, FlashAttention-2 backward.

Papers: Dao et al. 2022, "FlashAttention: Fast and Memory-Efficient Exact Attention
with IO-Awareness" (arXiv:2205.14135); Dao 2023, "FlashAttention-2: Faster Attention
with Better Parallelism and Work Partitioning" (arXiv:2307.08691).

Idea: softmax(S)V can be computed one key/value tile at a time if each query row
keeps a running max m, a running sum l and an unnormalised accumulator O, so the
(Nq, Nk) score matrix is never stored. Forward (per Q tile, over K/V tiles j):

    S_j = Q K_jᵀ · scale,   m′ = max(m, rowmax S_j)
    O ← O · e^{m − m′} + e^{S_j − m′} V_j,   l ← l · e^{m − m′} + rowsum e^{S_j − m′}
    output O / l, and keep only LSE = m + log l for the backward pass.

Backward (FlashAttention-2, Alg. 2) recomputes P tile by tile from LSE:

    D = rowsum(dO ∘ O);  P = exp(S − LSE);  dV += Pᵀ dO;  dP = dO Vᵀ;
    dS = P ∘ (dP − D);  dQ += dS K · scale;  dK += dSᵀ Q · scale.

Memory is O(N·d) plus one (block_q, block_k) tile per (batch, head). Tiles are
vectorised over batch and heads; Python only loops over tiles, so on CPU the
defaults use large tiles to amortise the per-op overhead.

CPU-specific change (not in the papers, from FlashAttention-4's "lazy rescaling"):
the reference max m is only moved when a tile's row max exceeds it by more than
``RESCALE_THRESHOLD`` (e^8 ≈ 3000 cannot overflow fp32 sums). This lets the
subtraction of m fuse into the score GEMM (``baddbmm``) and skips the rescale of O
on almost every tile. The result is exact: O/l and LSE do not depend on which m
is used, only overflow/underflow do.

Masks follow ``papernotes.nn.attention``: causal is bottom-right aligned when
Nq != Nk, ``attn_mask`` is boolean (True = attend) or additive float,
broadcastable to (B, H, Nq, Nk), and is sliced per tile. Rows that see no key
at all return 0 and get zero gradients.

Tests hold this against ``torch.nn.functional.scaled_dot_product_attention``
(forward and the three gradients) and ``torch.autograd.gradcheck`` in float64.

Dimension letters: B batch, H query heads, Hkv key/value heads, G = H / Hkv
queries per K/V head (grouped-query attention), Nq/Nk query/key length, D head
dim, R = G · block_q rows of one Q tile, C = block_k columns of one K tile.
"""

from __future__ import annotations

import math

import torch

from papernotes.errors import ConfigError

# Lazy rescaling threshold (natural-log units): P entries stay ≤ e^8, far from fp32 overflow.
RESCALE_THRESHOLD = 8.0


# Score-tile budget over all (batch, head) pairs: 8 MiB kept 512 × 512 tiles fast at B·H = 8
TILE_BUDGET_BYTES = 8 * 2**20
MIN_BLOCK = 128  # below this the Python loop overhead per tile starts to show


def default_block_sizes(head_dim: int, batch_heads: int = 1) -> tuple[int, int]:
    """(block_q, block_k) in tokens, tuned on a 2-core CPU (see docs/flash_attention.md).

    Big tiles amortise the per-op Python overhead; but one fp32 score tile spans
    all ``batch_heads`` = B·H pairs, so tiles shrink until it fits the budget
    (cache-resident tiles were faster at B·H = 32), and larger head dims start
    smaller because the Q/K/V tiles then cost as much cache as the scores.
    """
    block = 512 if head_dim <= 64 else 256 if head_dim <= 128 else 128
    block_q = block_k = block
    while batch_heads * block_q * block_k * 4 > TILE_BUDGET_BYTES and max(block_q, block_k) > MIN_BLOCK:
        if block_k >= block_q:
            block_k //= 2
        else:
            block_q //= 2
    return block_q, block_k


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    # fp32 accumulation for fp16/bf16 (FA2 does the same); fp64 stays fp64 for gradcheck
    return torch.float64 if dtype == torch.float64 else torch.float32


def _key_stop(i0: int, i1: int, nk: int, offset: int, causal: bool) -> int:
    """One past the last key any query row in [i0, i1) may see (bottom-right causal)."""
    if not causal:
        return nk
    # query i sits at absolute position offset + i and sees keys 0 .. offset + i
    return max(0, min(nk, offset + i1))


def _causal_tile_blocked(i0: int, i1: int, j0: int, j1: int, offset: int, device: torch.device):
    """(rows, cols) bool, True where key j is in the future of query i; None if none is."""
    if j1 - 1 <= offset + i0:  # tile entirely at or below the diagonal
        return None
    rows = torch.arange(i0, i1, device=device)[:, None]
    cols = torch.arange(j0, j1, device=device)[None, :]
    return cols > rows + offset


def _prepare_mask(attn_mask: torch.Tensor, b: int, h: int, hkv: int, nq: int, nk: int) -> torch.Tensor:
    """Turn a user mask into a 5-D view (b', hkv', g', Nq, Nk) ready for per-tile slicing.

    Booleans are inverted once (True = blocked) so each tile is a single masked_fill.
    Batch and head dims stay broadcast (size 1) so no (B, H, Nq, Nk) copy is made.
    """
    if attn_mask.dim() > 4:
        raise ConfigError(
            f"attn_mask must have at most 4 dims (B, H, Nq, Nk), got shape {tuple(attn_mask.shape)}"
        )
    mask = attn_mask.reshape((1,) * (4 - attn_mask.dim()) + tuple(attn_mask.shape))  # (b', h', nq', nk')
    mb, mh, mq, mk = mask.shape
    if mb not in (1, b) or mh not in (1, h) or mq not in (1, nq) or mk not in (1, nk):
        raise ConfigError(
            f"attn_mask of shape {tuple(attn_mask.shape)} does not broadcast to "
            f"(B, H, Nq, Nk) = {(b, h, nq, nk)}"
        )
    if mask.dtype == torch.bool:
        mask = ~mask  # True = blocked
    mask = mask.expand(mb, mh, nq, nk)  # stride-0 views for broadcast query/key dims
    if mh == h:
        return mask.unflatten(1, (hkv, h // hkv))  # (b', Hkv, G, Nq, Nk)
    return mask.unsqueeze(1)  # (b', 1, 1, Nq, Nk)


def _apply_masks(
    s: torch.Tensor,
    shape5: tuple[int, int, int, int, int],
    mask5: torch.Tensor | None,
    i0: int,
    i1: int,
    j0: int,
    j1: int,
    offset: int,
    causal: bool,
) -> None:
    """In place on a score tile s (B·Hkv, R, C): -inf where blocked, + additive mask."""
    s5 = s.view(shape5)  # (B, Hkv, G, rows, C); a view, so writes land in s
    if causal:
        blocked = _causal_tile_blocked(i0, i1, j0, j1, offset, s.device)
        if blocked is not None:
            s5.masked_fill_(blocked, float("-inf"))
    if mask5 is not None:
        tile = mask5[..., i0:i1, j0:j1]  # (b', hkv', g', rows, C)
        if tile.dtype == torch.bool:
            s5.masked_fill_(tile, float("-inf"))
        else:
            s5.add_(tile.to(s.dtype))


def _split_rows(x: torch.Tensor, bounds: list[tuple[int, int]]) -> list[torch.Tensor]:
    """(B·Hkv, G, N, ...) -> one contiguous (B·Hkv, G·rows, ...) tile per (i0, i1)."""
    return [x[:, :, i0:i1].reshape(x.shape[0], -1, *x.shape[3:]) for i0, i1 in bounds]


def _merge_rows(tiles: list[torch.Tensor], g: int) -> torch.Tensor:
    """Inverse of _split_rows: tiles (B·Hkv, G·rows, ...) -> (B·Hkv, G, N, ...)."""
    return torch.cat([t.view(t.shape[0], g, -1, *t.shape[2:]) for t in tiles], dim=2)


def _tile_bounds(n: int, block: int) -> list[tuple[int, int]]:
    return [(i0, min(n, i0 + block)) for i0 in range(0, n, block)]


def _flash_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask5: torch.Tensor | None,
    causal: bool,
    scale: float,
    block_q: int,
    block_k: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns O (B, H, Nq, D) in q's dtype and LSE (B, H, Nq) in the accumulation dtype."""
    b, h, nq, d = q.shape
    hkv, nk = k.shape[1], k.shape[2]
    g = h // hkv
    acc_dtype = _accumulation_dtype(q.dtype)
    offset = nk - nq
    # scale folded into Q once, so every tile's GEMM already yields S = Q Kᵀ · scale
    qg = (q.to(acc_dtype) * scale).reshape(b * hkv, g, nq, d)  # (B·Hkv, G, Nq, D)
    k3 = k.to(acc_dtype).reshape(b * hkv, nk, d)  # (B·Hkv, Nk, D)
    v3 = v.to(acc_dtype).reshape(b * hkv, nk, d)  # (B·Hkv, Nk, D)
    k_t = k3.transpose(1, 2)  # (B·Hkv, D, Nk), a view: the GEMM reads it transposed
    q_bounds = _tile_bounds(nq, block_q)
    out = torch.empty((b * hkv, g, nq, d), dtype=acc_dtype)  # (B·Hkv, G, Nq, D)
    lse = torch.empty((b * hkv, g, nq), dtype=acc_dtype)  # (B·Hkv, G, Nq)
    for (i0, i1), qi in zip(q_bounds, _split_rows(qg, q_bounds)):
        rows = qi.shape[1]  # R = G · (i1 - i0)
        shape5 = (b, hkv, g, i1 - i0, -1)
        m = torch.full((b * hkv, rows, 1), float("-inf"), dtype=acc_dtype)  # reference max per row
        l = torch.zeros((b * hkv, rows, 1), dtype=acc_dtype)  # running sum of e^{S − m}
        acc = torch.zeros((b * hkv, rows, d), dtype=acc_dtype)  # unnormalised O
        for j0, j1 in _tile_bounds(_key_stop(i0, i1, nk, offset, causal), block_k):
            started = j0 > 0
            if started:
                base = m.nan_to_num(neginf=0.0)  # rows with no visible key yet use 0
                s = torch.baddbmm(-base, qi, k_t[:, :, j0:j1])  # (B·Hkv, R, C) = S − m, fused
            else:
                base = torch.zeros_like(m)
                s = torch.bmm(qi, k_t[:, :, j0:j1])  # (B·Hkv, R, C) = S
            _apply_masks(s, shape5, mask5, i0, i1, j0, j1, offset, causal)
            row_max = s.amax(dim=-1, keepdim=True)  # relative to base
            # move m when the tile max overshoots it by > threshold, or when m is unset
            need = (row_max > RESCALE_THRESHOLD) | (m.isneginf() & ~row_max.isneginf())
            if bool(need.any()):
                delta = torch.where(need, row_max, 0.0)
                s.sub_(delta)
                m = torch.where(need, base + row_max, m)
                if started:
                    # e^{m − m′}: rescale what was accumulated so far. Rows whose m was unset have
                    # acc = l = 0 and may have delta << 0, so clamp: e^{+1000} would turn 0 into NaN
                    alpha = torch.exp(-delta.clamp_min(0.0))
                    acc.mul_(alpha)
                    l.mul_(alpha)
            p = s.exp_()  # e^{S − m}, in place: no second tile-sized buffer
            l.add_(p.sum(dim=-1, keepdim=True))
            acc.baddbmm_(p, v3[:, j0:j1])  # O += e^{S − m} V_j
        # rows that saw no key keep l = 0: they output 0 instead of 0/0
        acc.div_(torch.where(l == 0, 1.0, l))
        out[:, :, i0:i1] = acc.view(b * hkv, g, i1 - i0, d)  # (B·Hkv, G, rows, D)
        lse[:, :, i0:i1] = (m + torch.log(l)).view(b * hkv, g, i1 - i0)  # -inf for rows that saw no key
    return out.view(b, h, nq, d).to(q.dtype), lse.view(b, h, nq)  # (B, H, Nq, D), (B, H, Nq)


def _flash_backward(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    mask5: torch.Tensor | None,
    causal: bool,
    scale: float,
    block_q: int,
    block_k: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """FlashAttention-2 backward (Dao 2023, Alg. 2): dQ, dK, dV in the input dtypes."""
    b, h, nq, d = q.shape
    hkv, nk = k.shape[1], k.shape[2]
    g = h // hkv
    acc_dtype = _accumulation_dtype(q.dtype)
    offset = nk - nq
    qg = (q.to(acc_dtype) * scale).reshape(b * hkv, g, nq, d)  # (B·Hkv, G, Nq, D), Q · scale
    dog = grad_out.to(acc_dtype).reshape(b * hkv, g, nq, d)  # (B·Hkv, G, Nq, D)
    k3 = k.to(acc_dtype).reshape(b * hkv, nk, d)  # (B·Hkv, Nk, D)
    v3 = v.to(acc_dtype).reshape(b * hkv, nk, d)  # (B·Hkv, Nk, D)
    # FA2 Alg. 2 line 4: D = rowsum(dO ∘ O); kept negated to fuse "dP − D" into a GEMM
    og = out.to(acc_dtype).reshape(b * hkv, g, nq, d)  # (B·Hkv, G, Nq, D)
    neg_delta = -(dog * og).sum(-1, keepdim=True)  # (B·Hkv, G, Nq, 1)
    # rows that saw no key have LSE = -inf; +inf makes their P = exp(S − LSE) exactly 0
    neg_lse = -lse.masked_fill(lse.isneginf(), float("inf")).reshape(b * hkv, g, nq, 1)  # (B·Hkv, G, Nq, 1)
    q_bounds = _tile_bounds(nq, block_q)
    q_tiles = _split_rows(qg, q_bounds)  # each (B·Hkv, R, D)
    do_tiles = _split_rows(dog, q_bounds)
    neg_lse_tiles = _split_rows(neg_lse, q_bounds)  # each (B·Hkv, R, 1)
    neg_delta_tiles = _split_rows(neg_delta, q_bounds)
    dq_tiles = [torch.zeros_like(t) for t in q_tiles]
    dk = torch.empty_like(k3)  # (B·Hkv, Nk, D)
    dv = torch.empty_like(v3)
    key_stops = [_key_stop(i0, i1, nk, offset, causal) for i0, i1 in q_bounds]
    # FA2 order: K/V tiles outside (dK_j, dV_j accumulate locally), Q tiles inside
    for j0, j1 in _tile_bounds(nk, block_k):
        k_j, v_j = k3[:, j0:j1], v3[:, j0:j1]  # (B·Hkv, C, D)
        dk_j = torch.zeros_like(k_j)
        dv_j = torch.zeros_like(v_j)
        for t, (i0, i1) in enumerate(q_bounds):
            if key_stops[t] <= j0:  # causal: this K tile is entirely in the future of these queries
                continue
            shape5 = (b, hkv, g, i1 - i0, -1)
            s = torch.baddbmm(neg_lse_tiles[t], q_tiles[t], k_j.transpose(1, 2))  # (B·Hkv, R, C) = S − LSE
            _apply_masks(s, shape5, mask5, i0, i1, j0, j1, offset, causal)
            p = s.exp_()  # P = exp(S − LSE), recomputed instead of stored
            dv_j.baddbmm_(p.transpose(1, 2), do_tiles[t])  # dV_j += Pᵀ dO_i (sums over the G query heads)
            ds = torch.baddbmm(neg_delta_tiles[t], do_tiles[t], v_j.transpose(1, 2))  # (B·Hkv, R, C) = dP − D
            ds.mul_(p)  # dS = P ∘ (dP − D)
            dq_tiles[t].baddbmm_(ds, k_j)  # dQ_i += dS K_j (times scale below)
            dk_j.baddbmm_(ds.transpose(1, 2), q_tiles[t])  # dK_j += dSᵀ Q_i · scale (Q pre-scaled)
        dk[:, j0:j1] = dk_j
        dv[:, j0:j1] = dv_j
    dq = _merge_rows(dq_tiles, g).reshape(b, h, nq, d) * scale  # (B, H, Nq, D)
    return dq.to(q.dtype), dk.view(b, hkv, nk, d).to(k.dtype), dv.view(b, hkv, nk, d).to(v.dtype)


class FlashAttentionFunction(torch.autograd.Function):
    """autograd wrapper: saves O and LSE only, recomputes P in the backward pass."""

    @staticmethod
    def forward(ctx, q, k, v, attn_mask, causal, scale, block_q, block_k):
        b, h, nq, _ = q.shape
        hkv, nk = k.shape[1], k.shape[2]
        mask5 = None if attn_mask is None else _prepare_mask(attn_mask, b, h, hkv, nq, nk)
        out, lse = _flash_forward(q, k, v, mask5, causal, scale, block_q, block_k)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.mask5 = mask5  # a view of the caller's mask (or its inverse); never differentiated
        ctx.settings = (causal, scale, block_q, block_k)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse = ctx.saved_tensors
        causal, scale, block_q, block_k = ctx.settings
        dq, dk, dv = _flash_backward(
            grad_out.contiguous(), q, k, v, out, lse, ctx.mask5, causal, scale, block_q, block_k
        )
        return dq, dk, dv, None, None, None, None, None


def _check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_q: int, block_k: int) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ConfigError(
            f"flash_attention expects q, k, v of shape (B, H, N, D); got {tuple(q.shape)}, "
            f"{tuple(k.shape)}, {tuple(v.shape)}"
        )
    if k.shape != v.shape:
        raise ConfigError(f"k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    if q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3]:
        raise ConfigError(
            f"q {tuple(q.shape)} and k {tuple(k.shape)} must agree on batch (dim 0) and head dim (dim 3)"
        )
    if q.shape[1] % k.shape[1] != 0:
        raise ConfigError(
            f"number of query heads ({q.shape[1]}) must be a multiple of key/value heads ({k.shape[1]})"
        )
    if block_q < 1 or block_k < 1:
        raise ConfigError(f"block_q and block_k must be positive, got {block_q} and {block_k}")


def flash_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = False,
    scale: float | None = None,
    block_q: int | None = None,
    block_k: int | None = None,
    attn_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Exact attention softmax(Q Kᵀ · scale + mask) V without materialising (Nq, Nk).

    q: (B, H, Nq, D); k, v: (B, Hkv, Nk, D) with H a multiple of Hkv (GQA, K/V are
    never repeated). scale defaults to 1/√D. block_q / block_k are tile lengths in
    tokens (defaults from :func:`default_block_sizes`, from D and B·H). attn_mask: bool (True =
    attend) or additive float in score units, broadcastable to (B, H, Nq, Nk); it
    gets no gradient. Returns (B, H, Nq, D) in q's dtype; rows that may attend to
    no key are 0. Differentiable in q, k, v (FlashAttention-2 backward).
    """
    default_q, default_k = default_block_sizes(q.shape[-1], q.shape[0] * q.shape[1])
    block_q = default_q if block_q is None else block_q
    block_k = default_k if block_k is None else block_k
    _check_inputs(q, k, v, block_q, block_k)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    return FlashAttentionFunction.apply(q, k, v, attn_mask, causal, scale, block_q, block_k)
