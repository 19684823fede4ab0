"""A static, preallocated key/value cache for autoregressive decoding.

Idea (as in PyTorch's gpt-fast): allocate K and V for the whole generation up front,
(B, Hkv, max_length, D) per layer, and write new entries in place. No tensor ever
grows, so memory is known before decoding starts and the shapes stay static.

Contract with the model: during one forward, every layer calls ``update(layer, k, v)``,
which writes at slots [length, length + T) and returns views of slots
[0, length + T); after the last layer the model calls ``advance(T)`` once. Stored keys
are post-RoPE, so rolled-back or compacted slots keep their original positions.

Decoding methods edit the cache between forwards:
- ``crop(n)``: forget everything after slot n (speculative decoding rejects a draft tail);
- ``compact(start, keep_indices)``: keep only the accepted path of a Medusa tree, moving
  slots ``start + keep_indices`` to ``start, start + 1, ...``;
- ``repeat_rows(r)``: a cache whose every row is repeated r times (a prompt prefilled once, then
  sampled r times);
- ``keep_rows(rows)``: drop the other rows of the batch (rows that finished decoding).

Tests (``tests/nn/test_kv_cache.py``) check these invariants directly; the model-level
tests compare cached decoding with the full forward and with HF.
Shapes: B batch, Hkv key/value heads, T new tokens, D head dim, L max_length.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from papernotes.errors import DataError


class KVCache:
    """Per-layer key/value buffers (B, Hkv, L, D) plus the number of filled slots, ``length``."""

    def __init__(
        self,
        num_layers: int,
        batch_size: int,
        num_kv_heads: int,
        max_length: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        shape = (batch_size, num_kv_heads, max_length, head_dim)  # (B, Hkv, L, D)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.num_layers = num_layers
        self.batch_size = batch_size
        self.num_kv_heads = num_kv_heads
        self.max_length = max_length
        self.head_dim = head_dim
        self.length = 0  # filled slots, shared by all layers

    @property
    def dtype(self) -> torch.dtype:
        return self.keys[0].dtype if self.keys else torch.float32

    @property
    def device(self) -> torch.device:
        return self.keys[0].device if self.keys else torch.device("cpu")

    def check_room(self, num_new: int) -> None:
        """Raise DataError if ``num_new`` more tokens would not fit."""
        if self.length + num_new > self.max_length:
            raise DataError(
                f"KV cache overflow: writing {num_new} tokens after {self.length} cached ones needs "
                f"{self.length + num_new} slots, but the cache has max_length={self.max_length}"
            )

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (B, Hkv, T, D) at slots [length, length + T); return views of [0, length + T).

        Does not advance ``length``: every layer of one forward writes the same slots.
        """
        num_new = k.shape[-2]
        self.check_room(num_new)
        end = self.length + num_new
        self.keys[layer][:, :, self.length : end] = k
        self.values[layer][:, :, self.length : end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]  # (B, Hkv, length + T, D)

    def advance(self, num_new: int) -> None:
        """Mark ``num_new`` more slots as filled (the model calls this once per forward)."""
        self.check_room(num_new)
        self.length += num_new

    def crop(self, length: int) -> None:
        """Roll back to the first ``length`` slots; later slots are overwritten by the next forward."""
        if not 0 <= length <= self.length:
            raise DataError(f"cannot crop the KV cache to {length} slots; it holds {self.length}")
        self.length = length

    def compact(self, start: int, keep_indices: torch.Tensor | Sequence[int]) -> None:
        """Move slots ``start + keep_indices`` to ``start, start + 1, ...``; length = start + len(keep).

        ``keep_indices`` are offsets from ``start`` (e.g. the tree positions of the accepted
        Medusa path, root first). Gathering copies before writing, so overlapping moves are safe.
        """
        keep = torch.as_tensor(keep_indices, dtype=torch.long, device=self.device).flatten()
        if not 0 <= start <= self.length:
            raise DataError(f"compact: start={start} is outside the {self.length} filled slots")
        if keep.numel() and (int(keep.min()) < 0 or start + int(keep.max()) >= self.length):
            raise DataError(
                f"compact: keep_indices must lie in [0, {self.length - start}) "
                f"(filled slots after start={start}), got {keep.tolist()}"
            )
        end = start + keep.numel()
        for layer in range(self.num_layers):
            for buffer in (self.keys[layer], self.values[layer]):
                buffer[:, :, start:end] = buffer[:, :, start + keep]  # advanced indexing copies first
        self.length = end

    def repeat_rows(self, repeats: int, max_length: int | None = None) -> KVCache:
        """A new cache of batch B · ``repeats``: row i's filled slots copied to rows i·r … i·r + r − 1.

        The filled slots are copied, so the rows then decode independently; ``max_length`` (default this
        cache's) leaves room for what they will generate.
        """
        max_length = self.max_length if max_length is None else max_length
        if repeats < 1:
            raise DataError(f"repeat_rows: repeats must be >= 1, got {repeats}")
        if max_length < self.length:
            raise DataError(
                f"repeat_rows: max_length={max_length} cannot hold the {self.length} filled slots"
            )
        out = KVCache(
            self.num_layers,
            self.batch_size * repeats,
            self.num_kv_heads,
            max_length,
            self.head_dim,
            dtype=self.dtype,
            device=self.device,
        )
        n = self.length
        for layer in range(self.num_layers):
            for source, target in (
                (self.keys[layer], out.keys[layer]),
                (self.values[layer], out.values[layer]),
            ):
                target[:, :, :n] = source[:, :, :n].repeat_interleave(repeats, dim=0)  # (B·r, Hkv, n, D)
        out.length = n
        return out

    def keep_rows(self, rows: torch.Tensor | Sequence[int]) -> None:
        """Keep only batch rows ``rows``, in that order (a batched decode drops the rows that finished)."""
        rows = torch.as_tensor(rows, dtype=torch.long, device=self.device).flatten()
        if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= self.batch_size):
            raise DataError(f"keep_rows: rows must lie in [0, {self.batch_size}), got {rows.tolist()}")
        self.keys = [k[rows] for k in self.keys]  # (b, Hkv, L, D): advanced indexing copies
        self.values = [v[rows] for v in self.values]
        self.batch_size = rows.numel()

    def reset(self) -> None:
        """Forget everything (the buffers are reused, not freed)."""
        self.length = 0
