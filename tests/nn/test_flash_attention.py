"""FlashAttention (forward + FA2 backward) against PyTorch's scaled_dot_product_attention."""

import pytest
import torch
import torch.nn.functional as F

from papernotes.errors import ConfigError
from papernotes.nn.attention import causal_mask
from papernotes.nn.attention_profile import measure_peak_extra_bytes
from papernotes.nn.flash_attention import (
    RESCALE_THRESHOLD,
    TILE_BUDGET_BYTES,
    default_block_sizes,
    flash_attention,
)


def reference_attention(q, k, v, causal=False, attn_mask=None, scale=None):
    """SDPA with our conventions: bottom-right causal mask built by hand, GQA via enable_gqa."""
    mask = causal_mask(q.shape[-2], k.shape[-2]) if causal else None
    if attn_mask is not None:
        if mask is None:
            mask = attn_mask
        elif attn_mask.dtype == torch.bool:
            mask = attn_mask & mask
        else:
            mask = attn_mask.masked_fill(~mask, float("-inf"))
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, scale=scale, enable_gqa=q.shape[1] != k.shape[1]
    )


def make_inputs(b, h, hkv, nq, nk, d, dtype=torch.float32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, nq, d, generator=generator).to(dtype).requires_grad_()
    k = torch.randn(b, hkv, nk, d, generator=generator).to(dtype).requires_grad_()
    v = torch.randn(b, hkv, nk, d, generator=generator).to(dtype).requires_grad_()
    return q, k, v


def outputs_and_grads(fn, q, k, v, seed=1):
    out = fn(q, k, v)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)).to(out.dtype)
    grads = torch.autograd.grad(out, (q, k, v), grad_out)
    return (out, *grads)


def assert_matches_reference(flash_fn, ref_fn, q, k, v, atol, rtol):
    ours = outputs_and_grads(flash_fn, q, k, v)
    ref = outputs_and_grads(ref_fn, q, k, v)
    for name, a, b in zip(("out", "dq", "dk", "dv"), ours, ref):
        assert a.dtype == b.dtype, name
        torch.testing.assert_close(a, b, atol=atol, rtol=rtol, msg=lambda m, name=name: f"{name}: {m}")


# (batch, heads, kv_heads, q_len, k_len, head_dim, causal, block_q, block_k)
PARITY_CASES = [
    pytest.param(2, 4, 4, 37, 37, 16, False, 16, 32, id="odd-37-noncausal"),
    pytest.param(2, 4, 4, 37, 37, 16, True, 16, 32, id="odd-37-causal"),
    pytest.param(1, 4, 4, 100, 100, 16, True, 32, 16, id="odd-100-causal"),
    pytest.param(2, 8, 2, 100, 100, 8, True, 16, 32, id="gqa-4-causal"),
    pytest.param(1, 6, 1, 37, 37, 8, False, 16, 16, id="mqa-noncausal"),
    pytest.param(2, 4, 2, 5, 70, 8, True, 16, 32, id="decode-offset-causal"),
    pytest.param(1, 2, 2, 1, 100, 8, True, 16, 32, id="single-query-decode"),
    pytest.param(1, 2, 2, 40, 100, 8, False, 16, 32, id="q-shorter-noncausal"),
    pytest.param(1, 2, 2, 64, 64, 8, True, 64, 64, id="single-tile"),
]


@pytest.mark.parametrize("b,h,hkv,nq,nk,d,causal,block_q,block_k", PARITY_CASES)
def test_flash_matches_sdpa_forward_and_gradients_fp32(b, h, hkv, nq, nk, d, causal, block_q, block_k):
    torch.manual_seed(0)
    q, k, v = make_inputs(b, h, hkv, nq, nk, d)
    assert_matches_reference(
        lambda q, k, v: flash_attention(q, k, v, causal=causal, block_q=block_q, block_k=block_k),
        lambda q, k, v: reference_attention(q, k, v, causal=causal),
        q,
        k,
        v,
        atol=1e-5,
        rtol=1e-5,
    )


@pytest.mark.parametrize("causal", [False, True])
def test_flash_matches_sdpa_with_boolean_tree_mask(causal):
    # a Medusa-style tree: 6 new tokens after a 30-token prefix, each sees the prefix and its ancestors
    torch.manual_seed(0)
    prefix, parents = 30, [-1, 0, 0, 1, 1, 2]
    tree = torch.zeros(6, 6, dtype=torch.bool)
    for node, parent in enumerate(parents):
        tree[node, node] = True
        while parent >= 0:
            tree[node, parent] = True
            parent = parents[parent]
    mask = torch.cat([torch.ones(6, prefix, dtype=torch.bool), tree], dim=1)  # (Nq, Nk)
    q, k, v = make_inputs(2, 4, 2, 6, prefix + 6, 8)
    assert_matches_reference(
        lambda q, k, v: flash_attention(q, k, v, causal=causal, block_q=4, block_k=16, attn_mask=mask),
        lambda q, k, v: reference_attention(q, k, v, causal=causal, attn_mask=mask),
        q,
        k,
        v,
        atol=1e-5,
        rtol=1e-5,
    )


def test_flash_matches_sdpa_with_padding_mask_broadcast_over_heads_and_queries():
    torch.manual_seed(0)
    q, k, v = make_inputs(3, 4, 4, 45, 45, 8)
    lengths = torch.tensor([45, 30, 7])
    padding = torch.arange(45)[None, :] < lengths[:, None]  # (B, S)
    mask = padding[:, None, None, :]  # (B, 1, 1, S)
    assert_matches_reference(
        lambda q, k, v: flash_attention(q, k, v, causal=True, block_q=16, block_k=16, attn_mask=mask),
        lambda q, k, v: reference_attention(q, k, v, causal=True, attn_mask=mask),
        q,
        k,
        v,
        atol=1e-5,
        rtol=1e-5,
    )


def test_flash_matches_sdpa_with_per_head_additive_float_mask_and_gqa():
    torch.manual_seed(0)
    q, k, v = make_inputs(2, 4, 2, 33, 50, 8)
    bias = torch.randn(1, 4, 33, 50)  # (1, H, Nq, Nk) additive, e.g. ALiBi-like
    assert_matches_reference(
        lambda q, k, v: flash_attention(q, k, v, causal=True, block_q=16, block_k=16, attn_mask=bias),
        lambda q, k, v: reference_attention(q, k, v, causal=True, attn_mask=bias),
        q,
        k,
        v,
        atol=1e-5,
        rtol=1e-5,
    )


def test_flash_matches_sdpa_with_custom_scale():
    torch.manual_seed(0)
    q, k, v = make_inputs(1, 2, 2, 40, 40, 8)
    assert_matches_reference(
        lambda q, k, v: flash_attention(q, k, v, causal=True, scale=0.9, block_q=16, block_k=16),
        lambda q, k, v: reference_attention(q, k, v, causal=True, scale=0.9),
        q,
        k,
        v,
        atol=1e-5,
        rtol=1e-5,
    )


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_flash_matches_sdpa_in_half_precision_and_keeps_dtype(dtype):
    torch.manual_seed(0)
    q, k, v = make_inputs(2, 4, 2, 100, 100, 16, dtype=dtype)
    # reference in fp32 from the same rounded inputs; ours accumulates in fp32 and rounds once at the end
    q32, k32, v32 = (x.detach().float().requires_grad_() for x in (q, k, v))
    ours = outputs_and_grads(
        lambda q, k, v: flash_attention(q, k, v, causal=True, block_q=32, block_k=16), q, k, v
    )
    ref = outputs_and_grads(lambda q, k, v: reference_attention(q, k, v, causal=True), q32, k32, v32)
    for a, b in zip(ours, ref):
        assert a.dtype == dtype
        torch.testing.assert_close(a.float(), b, atol=2e-2, rtol=2e-2)


def test_flash_default_blocks_match_sdpa_in_bf16_against_bf16_sdpa():
    torch.manual_seed(0)
    q, k, v = make_inputs(1, 4, 4, 300, 300, 32, dtype=torch.bfloat16)
    assert_matches_reference(
        lambda q, k, v: flash_attention(q, k, v, causal=True),
        lambda q, k, v: reference_attention(q, k, v, causal=True),
        q,
        k,
        v,
        atol=3e-2,
        rtol=3e-2,
    )


def test_flash_gradcheck_float64():
    torch.manual_seed(0)
    q, k, v = make_inputs(1, 4, 2, 5, 7, 3, dtype=torch.float64)
    mask = torch.rand(1, 1, 5, 7, generator=torch.Generator().manual_seed(2)) > 0.3
    mask[..., 0] = True  # every row keeps a key: fully masked rows are tested separately

    def fn(q, k, v):
        return flash_attention(q, k, v, causal=True, block_q=2, block_k=3, attn_mask=mask)

    assert torch.autograd.gradcheck(fn, (q, k, v), eps=1e-6, atol=1e-6)


def test_fully_masked_rows_give_zero_output_and_finite_zero_gradients():
    torch.manual_seed(0)
    q, k, v = make_inputs(2, 2, 2, 20, 20, 8)
    mask = torch.ones(2, 1, 20, 20, dtype=torch.bool)
    mask[0, :, 3] = False  # query 3 of batch 0 may see nothing
    mask[1, :, 10:] = False  # a whole query tile of batch 1 sees nothing
    out, dq, dk, dv = outputs_and_grads(
        lambda q, k, v: flash_attention(q, k, v, block_q=8, block_k=8, attn_mask=mask), q, k, v
    )
    assert torch.isfinite(out).all() and all(torch.isfinite(g).all() for g in (dq, dk, dv))
    assert (out[0, :, 3] == 0).all() and (out[1, :, 10:] == 0).all()
    assert (dq[0, :, 3] == 0).all() and (dq[1, :, 10:] == 0).all()
    # SDPA also returns 0 for such rows, so the rest must still match it exactly
    ref = outputs_and_grads(lambda q, k, v: reference_attention(q, k, v, attn_mask=mask), q, k, v)
    for a, b in zip((out, dq, dk, dv), ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_causal_with_more_queries_than_keys_zeroes_rows_before_the_first_key():
    # bottom-right alignment: query i sees keys <= i - (Nq - Nk), so the first Nq - Nk rows see nothing
    torch.manual_seed(0)
    q, k, v = make_inputs(1, 2, 2, 30, 20, 8)
    out = flash_attention(q, k, v, causal=True, block_q=8, block_k=8)
    assert (out[:, :, :10] == 0).all()
    torch.testing.assert_close(out[:, :, 10:], reference_attention(q[:, :, 10:], k, v, causal=True))


def test_lazy_rescaling_is_exact_when_the_max_grows_across_tiles():
    # keys get larger tile after tile, so the row max overshoots the stale reference by >> threshold;
    # float64 so the comparison sees the rescaling logic, not fp32 rounding of scores in the hundreds
    torch.manual_seed(0)
    q, k, v = make_inputs(1, 2, 2, 40, 96, 8, dtype=torch.float64)
    growth = torch.linspace(1.0, 12.0, 96)[None, None, :, None]
    k_growing = (k.detach() * growth).requires_grad_()
    q_sharp = (q.detach() * 4).requires_grad_()
    scores = (q_sharp @ k_growing.transpose(-1, -2)) / 8**0.5
    assert scores.amax() - scores[..., :16].amax() > 3 * RESCALE_THRESHOLD  # the lazy path is exercised
    assert_matches_reference(
        lambda q, k, v: flash_attention(q, k, v, block_q=16, block_k=16),
        reference_attention,
        q_sharp,
        k_growing,
        v,
        atol=1e-10,
        rtol=1e-10,
    )


def test_output_is_invariant_to_a_large_constant_shift_of_all_scores():
    # softmax(S - 1000) == softmax(S); exp(S - m) with a stale m = 0 would underflow to 0/0.
    # Rows 5..9 see nothing in the first key tile, so their max is first set at -1000 in a later one.
    # float64: in fp32, S - 1000 itself already rounds S to ~6e-5
    torch.manual_seed(0)
    q, k, v = make_inputs(1, 2, 2, 40, 40, 8, dtype=torch.float64)
    allowed = torch.ones(40, 40, dtype=torch.bool)
    allowed[5:10, :16] = False
    shift = torch.full((40, 40), -1000.0, dtype=torch.float64).masked_fill(~allowed, float("-inf"))

    def run(mask):
        return outputs_and_grads(
            lambda q, k, v: flash_attention(q, k, v, block_q=16, block_k=16, attn_mask=mask), q, k, v
        )

    shifted, plain = run(shift), run(allowed)
    for a, b in zip(shifted, plain):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


def test_flash_memory_grows_linearly_and_stays_far_below_one_score_matrix():
    torch.manual_seed(0)
    heads, dim = 2, 16
    peaks = {}
    for n in (1024, 2048):
        q, k, v = make_inputs(1, heads, heads, n, n, dim)

        def forward_backward(q=q, k=k, v=v):
            out = flash_attention(q, k, v, causal=True, block_q=128, block_k=128)
            out.backward(torch.ones_like(out))

        peaks[n] = measure_peak_extra_bytes(forward_backward)
    score_bytes = 2048 * 2048 * heads * 4  # one fp32 (H, N, N) score matrix: 32 MiB
    assert peaks[2048] < score_bytes / 8, f"flash peak {peaks[2048]} bytes vs score matrix {score_bytes}"
    # doubling N doubles the O(N·D) buffers; an N×N buffer would quadruple
    assert peaks[2048] < 2.5 * peaks[1024], peaks


def test_profiler_sees_the_naive_score_matrix():
    # validates the measurement itself: naive attention must show its (H, N, N) fp32 scores
    n, heads = 1024, 4
    q, k, v = make_inputs(1, heads, heads, n, n, 16)
    with torch.no_grad():
        peak = measure_peak_extra_bytes(lambda: reference_naive(q, k, v))
    assert peak >= n * n * heads * 4


def reference_naive(q, k, v):
    scores = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5  # (B, H, N, N)
    return torch.softmax(scores, dim=-1) @ v


def test_default_blocks_are_large_and_shrink_for_big_head_dims_and_many_heads():
    assert default_block_sizes(64, batch_heads=8) == (512, 512)
    big_d_q, big_d_k = default_block_sizes(256, batch_heads=8)
    assert big_d_q * big_d_k < 512 * 512
    many_q, many_k = default_block_sizes(64, batch_heads=64)
    assert 64 * many_q * many_k * 4 <= TILE_BUDGET_BYTES and min(many_q, many_k) >= 128


def test_flash_rejects_heads_that_do_not_group_and_unbroadcastable_masks():
    q, k, v = make_inputs(1, 3, 2, 4, 4, 8)
    with pytest.raises(ConfigError, match="multiple of key/value heads"):
        flash_attention(q, k, v)
    q, k, v = make_inputs(1, 2, 2, 4, 4, 8)
    with pytest.raises(ConfigError, match="does not broadcast"):
        flash_attention(q, k, v, attn_mask=torch.ones(4, 5, dtype=torch.bool))
    with pytest.raises(ConfigError, match="block_q"):
        flash_attention(q, k, v, block_q=0)
