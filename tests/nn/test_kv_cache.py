"""The static KV cache: writes, views, roll-back, tree compaction and overflow."""

import pytest
import torch

from papernotes.errors import DataError
from papernotes.nn.kv_cache import KVCache


def filled_cache(length=6, max_length=10):
    """A 2-layer cache whose slot s holds the value s (keys) and -s (values)."""
    cache = KVCache(2, 1, 2, max_length, 3)
    slots = torch.arange(length, dtype=torch.float32).view(1, 1, length, 1).expand(1, 2, length, 3)
    for layer in range(2):
        cache.update(layer, slots, -slots)
    cache.advance(length)
    return cache


def test_update_writes_at_length_and_returns_views_of_all_filled_slots():
    cache = KVCache(num_layers=2, batch_size=2, num_kv_heads=3, max_length=8, head_dim=4)
    k1, v1 = torch.randn(2, 3, 5, 4), torch.randn(2, 3, 5, 4)
    keys, values = cache.update(0, k1, v1)
    assert keys.shape == (2, 3, 5, 4) and cache.length == 0  # the model advances, not update()
    cache.update(1, k1, v1)
    cache.advance(5)
    k2, v2 = torch.randn(2, 3, 2, 4), torch.randn(2, 3, 2, 4)
    keys, values = cache.update(0, k2, v2)
    torch.testing.assert_close(keys, torch.cat((k1, k2), dim=2))
    torch.testing.assert_close(values, torch.cat((v1, v2), dim=2))
    assert keys.data_ptr() == cache.keys[0].data_ptr()  # a view into the preallocated buffer, not a copy


def test_crop_rolls_back_and_the_next_write_overwrites():
    cache = filled_cache(6)
    cache.crop(4)
    assert cache.length == 4
    new = torch.full((1, 2, 1, 3), 99.0)
    keys, _ = cache.update(0, new, new)
    assert keys.shape[2] == 5 and keys[0, 0, 4, 0] == 99.0 and keys[0, 0, 3, 0] == 3.0
    with pytest.raises(DataError, match="crop"):
        cache.crop(7)


def test_compact_moves_the_accepted_tree_path_behind_the_prefix():
    cache = filled_cache(9)
    cache.compact(4, torch.tensor([0, 2, 4]))  # tree slots 4, 6, 8 form the accepted path
    assert cache.length == 7
    for layer in range(2):
        assert cache.keys[layer][0, 1, :7, 0].tolist() == [0, 1, 2, 3, 4, 6, 8]
        assert cache.values[layer][0, 0, :7, 2].tolist() == [0, -1, -2, -3, -4, -6, -8]


def test_compact_rejects_indices_outside_the_filled_slots():
    cache = filled_cache(6)
    with pytest.raises(DataError, match="keep_indices"):
        cache.compact(4, [0, 2])


def test_overflow_raises_data_error_naming_the_lengths():
    cache = filled_cache(6, max_length=8)
    with pytest.raises(DataError, match=r"3 tokens after 6 .* max_length=8"):
        cache.update(0, torch.zeros(1, 2, 3, 3), torch.zeros(1, 2, 3, 3))


def test_reset_empties_the_cache():
    cache = filled_cache(6)
    cache.reset()
    assert cache.length == 0
    keys, _ = cache.update(0, torch.ones(1, 2, 1, 3), torch.ones(1, 2, 1, 3))
    assert keys.shape[2] == 1


def test_repeat_rows_copies_each_row_r_times_and_the_copies_decode_apart():
    cache = KVCache(num_layers=2, batch_size=2, num_kv_heads=1, max_length=4, head_dim=2)
    k, v = torch.randn(2, 1, 3, 2), torch.randn(2, 1, 3, 2)
    for layer in range(2):
        cache.update(layer, k, v)
    cache.advance(3)
    repeated = cache.repeat_rows(3, max_length=6)
    assert (repeated.batch_size, repeated.length, repeated.max_length) == (6, 3, 6)
    for layer in range(2):
        torch.testing.assert_close(repeated.keys[layer][:, :, :3], k.repeat_interleave(3, dim=0))
        torch.testing.assert_close(repeated.values[layer][:, :, :3], v.repeat_interleave(3, dim=0))
    new = torch.arange(6, dtype=torch.float32).view(6, 1, 1, 1).expand(6, 1, 1, 2)
    keys, _ = repeated.update(0, new, new)
    assert torch.equal(keys[:, 0, 3, 0], torch.arange(6.0))  # each copy holds its own new token
    torch.testing.assert_close(cache.keys[0][:, :, :3], k)  # the source cache is untouched
    with pytest.raises(DataError, match="cannot hold the 3 filled slots"):
        cache.repeat_rows(2, max_length=2)


def test_keep_rows_drops_the_other_rows_in_order():
    cache = KVCache(num_layers=1, batch_size=3, num_kv_heads=1, max_length=4, head_dim=1)
    k = torch.arange(3.0).view(3, 1, 1, 1)
    cache.update(0, k, -k)
    cache.advance(1)
    cache.keep_rows([2, 0])
    assert cache.batch_size == 2 and cache.length == 1
    assert cache.keys[0][:, 0, 0, 0].tolist() == [2.0, 0.0]
    assert cache.values[0][:, 0, 0, 0].tolist() == [-2.0, 0.0]
    with pytest.raises(DataError, match="keep_rows"):
        cache.keep_rows([2])
