"""Weight-only int8 linear layers: the kernel against the dequantized weights, the rounding bound against
fp32, whole-model conversion, and an int8 OadTR that still streams its own offline scores."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from papernotes.errors import ConfigError
from papernotes.nn.int8_linear import Int8Linear, quantize_int8
from papernotes.video.online.models import build_detector
from papernotes.video.online.stream import stream_scores


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("rows", [1, 2, 8, 33])
@pytest.mark.parametrize("in_features", [96, 8, 24])  # 8 and 24: not multiples of the kernel's K block
def test_kernel_equals_a_product_with_the_dequantized_weights(bias, rows, in_features):
    torch.manual_seed(0)
    linear = nn.Linear(in_features, 40, bias=bias)
    q = Int8Linear(linear)
    assert q.weight_int8.dtype == torch.int8 and q.scale.shape == (40,)
    assert q.weight_int8.abs().max() == 127  # each row's largest weight uses the whole range
    assert q.weight_int8.shape == (40, -(-in_features // 16) * 16)  # zero columns up to the block
    assert not q.weight_int8[:, in_features:].any()
    assert q.dequantized_weight().shape == (40, in_features)
    x = torch.randn(rows, in_features)
    with torch.no_grad():
        # the kernel takes bf16 rows and returns bf16: 2⁻⁹ relative on the way out
        expected = F.linear(x.bfloat16().float(), q.dequantized_weight())
        bias = 0 if q.bias is None else q.bias
        torch.testing.assert_close(q(x) - bias, expected, atol=1e-3, rtol=2**-8)
        # leading dimensions are rows
        torch.testing.assert_close(q(x.reshape(1, rows, in_features))[0], q(x), atol=0, rtol=0)


def test_error_against_fp32_is_within_the_rounding_bound_and_far_below_the_signal():
    """|y − y_fp32| ≤ Σ_k |x_k| (s_n / 2 + 2⁻⁸ |W_nk|) + 2⁻⁸ |y_n|: each weight moves at most half its row's
    step (plus the bf16 scale's rounding), each activation and each output by bf16's rounding."""
    torch.manual_seed(0)
    linear = nn.Linear(512, 256)
    q = Int8Linear(linear)
    x = torch.randn(4, 512)
    with torch.no_grad():
        exact = linear(x)
        error = (q(x) - exact).abs()
        step = q.scale[None, :, None] / 2 + 2**-8 * linear.weight.abs()[None]  # (1, 256, 512)
        bound = (x.abs()[:, None, :] * step).sum(-1) + 2**-8 * exact.abs()  # (4, 256)
        assert (error <= bound).all()
        assert error.max() < 0.02 * linear(x).abs().max()  # the rounding is a small fraction of the output
        assert (
            (q.weight_int8.float() * q.scale[:, None] - linear.weight).abs() <= q.scale[:, None] / 2 + 1e-7
        ).all()


def test_quantize_int8_converts_every_linear_and_refuses_training_and_other_dtypes():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Sequential(nn.LayerNorm(16), nn.Linear(16, 3)))
    x = torch.randn(5, 8)
    with torch.no_grad():
        reference = model(x)
    assert quantize_int8(model) == 2
    assert not any(isinstance(m, nn.Linear) for m in model.modules())
    assert isinstance(model[2][0], nn.LayerNorm)  # the rest stays as it was
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference, atol=0.05, rtol=0.05)
    with pytest.raises(ConfigError, match="inference"):
        model(x.requires_grad_())
    with pytest.raises(ConfigError, match="float32"), torch.no_grad():
        model(x.detach().double())


def test_int8_oadtr_streams_its_own_offline_scores():
    """The stream feeds 1, 2 and 8 rows per product where the offline forward feeds a whole session. Each
    row's product does not depend on the others, but the two paths reach a layer with fp32 values that
    differ in the last bits, which bf16 rounding can turn into one bf16 step: equal to bf16 tolerance."""
    torch.manual_seed(0)
    model = build_detector("oadtr", "tiny").eval()
    x = torch.randn(1, 60, model.cfg.feature_dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        fp32 = model(x)[0]
    quantize_int8(model)
    with torch.no_grad():
        offline = model(x)[0]
    streamed = stream_scores(model, x[0])
    assert (streamed - offline).abs().max() < 0.01 * offline.abs().max()
    assert (streamed.argmax(-1) == offline.argmax(-1)).float().mean() > 0.95
    assert 0 < (offline - fp32).abs().max() < 0.05 * fp32.abs().max()
