"""attend(): the naive reference, PyTorch SDPA and our FlashAttention agree on every mask."""

import pytest
import torch

from papernotes.errors import ConfigError
from papernotes.nn.attention import BACKENDS, attend, causal_mask, check_backend
from papernotes.nn.attention_profile import attention_flops, profile_attention


def make_qkv(b=2, h=4, hkv=2, nq=19, nk=19, d=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, nq, d, generator=generator)
    k = torch.randn(b, hkv, nk, d, generator=generator)
    v = torch.randn(b, hkv, nk, d, generator=generator)
    return q, k, v


def tree_mask(nq, nk, seed=3):
    mask = torch.rand(nq, nk, generator=torch.Generator().manual_seed(seed)) > 0.5
    mask[:, 0] = True  # no fully masked row: naive attention returns NaN there by design
    return mask


MASK_CASES = {
    "none": lambda nq, nk: None,
    "bool-2d": tree_mask,
    "bool-padding": lambda nq, nk: (torch.arange(nk) < nk - 3)[None, None, None, :].expand(2, 1, 1, nk),
    "additive-per-head": lambda nq, nk: torch.randn(1, 4, nq, nk, generator=torch.Generator().manual_seed(4)),
}


@pytest.mark.parametrize("mask_name", sorted(MASK_CASES))
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("nq,nk", [(19, 19), (5, 19)], ids=["self", "decode"])
def test_naive_sdpa_and_flash_backends_agree(mask_name, causal, nq, nk):
    torch.manual_seed(0)
    q, k, v = make_qkv(nq=nq, nk=nk)
    mask = MASK_CASES[mask_name](nq, nk)
    outs = {name: attend(q, k, v, backend=name, causal=causal, attn_mask=mask) for name in BACKENDS}
    torch.testing.assert_close(outs["sdpa"], outs["naive"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(outs["flash"], outs["naive"], atol=1e-5, rtol=1e-5)


def test_causal_decode_query_sees_the_whole_cache():
    # bottom-right alignment: one new query against a 12-token cache attends to all 12 keys
    q, k, v = make_qkv(nq=1, nk=12)
    for name in BACKENDS:
        torch.testing.assert_close(
            attend(q, k, v, backend=name, causal=True), attend(q, k, v, backend=name, causal=False)
        )


def test_causal_mask_is_bottom_right_aligned():
    mask = causal_mask(2, 4)
    expected = torch.tensor([[True, True, True, False], [True, True, True, True]])
    assert torch.equal(mask, expected)


def test_unknown_backend_raises_config_error_listing_valid_names():
    q, k, v = make_qkv()
    with pytest.raises(ConfigError) as excinfo:
        attend(q, k, v, backend="flash3")
    message = str(excinfo.value)
    assert "flash3" in message
    assert all(name in message for name in BACKENDS)
    with pytest.raises(ConfigError, match="naive, sdpa, flash"):
        check_backend("triton")
    assert check_backend("flash") == "flash"


def test_profile_attention_measures_every_backend_and_skips_oversized_naive_runs():
    rows = profile_attention(
        [64, 128],
        batch=1,
        num_heads=2,
        head_dim=8,
        backward=True,
        repeats=1,
        max_naive_bytes=64 * 64 * 2 * 4 * 3,
    )  # naive fits at N=64 only
    by_key = {(r["backend"], r["seq_len"]): r for r in rows}
    assert len(rows) == 6 and all(r["mode"] == "forward+backward" for r in rows)
    assert by_key[("naive", 128)]["skipped"] and by_key[("naive", 128)]["time_s"] is None
    assert "max_naive_bytes" in by_key[("naive", 128)]["skip_reason"]
    for key, row in by_key.items():
        if key == ("naive", 128):
            continue
        assert not row["skipped"] and row["time_s"] > 0 and row["peak_extra_bytes"] > 0
        flops = attention_flops(1, 2, row["seq_len"], 8, causal=True, backward=True)
        assert row["tflops"] == flops / row["time_s"] / 1e12
    assert attention_flops(1, 1, 10, 4, causal=False, backward=False) == 4 * 100 * 4
    with pytest.raises(ConfigError, match="naive, sdpa, flash"):
        profile_attention([16], backends=("cudnn",))
