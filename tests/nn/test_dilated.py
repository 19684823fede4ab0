"""Dilated temporal convolutions: length, causality, receptive field, gridding, parity and streaming."""

import pytest
import torch
import torch.nn.functional as F

from papernotes.errors import ConfigError, DataError
from papernotes.nn.dilated import (
    DilatedTemporalConv,
    DilatedTemporalStack,
    effective_kernel_size,
    gridding_coverage,
    receptive_field,
)


def test_effective_kernel_and_receptive_field_formulas():
    assert (
        effective_kernel_size(3, 1) == 3
        and effective_kernel_size(3, 2) == 5
        and effective_kernel_size(3, 4) == 9
    )
    assert receptive_field(3, (1, 2, 5)) == 17 and receptive_field(3, (2, 2, 2)) == 13


def test_centred_conv_equals_conv1d_same_padding():
    torch.manual_seed(0)
    layer = DilatedTemporalConv(4, 6, kernel_size=3, dilation=3, causal=False)
    x = torch.randn(2, 4, 20)
    expected = F.conv1d(x, layer.conv.weight, layer.conv.bias, padding="same", dilation=3)
    torch.testing.assert_close(layer(x), expected)


@pytest.mark.parametrize(("kernel_size", "dilation", "causal"), [(2, 3, True), (3, 4, True), (5, 2, False)])
def test_layer_keeps_length(kernel_size, dilation, causal):
    layer = DilatedTemporalConv(3, 5, kernel_size, dilation, causal)
    assert layer(torch.randn(2, 3, 11)).shape == (2, 5, 11)


@pytest.mark.parametrize("causal", [True, False])
def test_stack_keeps_length_and_every_parameter_gets_a_gradient(causal):
    torch.manual_seed(0)
    stack = DilatedTemporalStack(8, 16, 5, dilations=(1, 2, 5), causal=causal)
    y = stack(torch.randn(2, 30, 8))
    assert y.shape == (2, 30, 5)
    y.square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in stack.parameters())


def test_causal_stack_never_reads_the_future():
    torch.manual_seed(0)
    stack = DilatedTemporalStack(3, 8, dilations=(1, 2, 4))
    x = torch.randn(1, 25, 3)
    changed = x.clone()
    changed[:, 12:] += torch.randn(1, 13, 3)
    torch.testing.assert_close(stack(changed)[:, :12], stack(x)[:, :12], rtol=0, atol=0)
    assert not torch.allclose(stack(changed)[:, 12:], stack(x)[:, 12:])


@pytest.mark.parametrize("dilations", [(1, 2, 5), (2, 2, 2), (1, 1)])
def test_receptive_field_equals_the_measured_gradient_support(dilations):
    torch.manual_seed(0)
    stack = DilatedTemporalStack(2, 4, dilations=dilations, causal=True).double()
    with torch.no_grad():  # strictly positive weights and no ReLU cut-off: every tap shows in the gradient
        for p in stack.parameters():
            p.uniform_(0.1, 1.0)
    x = torch.rand(1, 40, 2, dtype=torch.double, requires_grad=True)
    stack(x)[0, 39].sum().backward()
    support = (x.grad[0].abs().sum(-1) > 0).nonzero().flatten()
    # causal: inside the last `receptive_field` inputs up to t = 39, exactly the offsets that the tap sets
    # reach (the residual paths add no others: every kernel already has a tap at offset 0)
    field = stack.receptive_field
    coverage = gridding_coverage(3, dilations)
    assert support.tolist() == (40 - field + coverage.nonzero().flatten()).tolist()
    assert coverage.all() == (dilations != (2, 2, 2))


def test_equal_rates_leave_gridding_holes_and_hybrid_rates_do_not():
    equal = gridding_coverage(3, (2, 2, 2))
    hybrid = gridding_coverage(3, (1, 2, 5))
    assert len(equal) == receptive_field(3, (2, 2, 2)) and not equal.all()
    assert equal[1::2].sum() == 0  # only even offsets are ever reached
    assert len(hybrid) == 17 and hybrid.all()


def test_streaming_equals_batched():
    torch.manual_seed(0)
    stack = DilatedTemporalStack(6, 12, 4, kernel_size=3, dilations=(1, 2, 5)).eval()
    x = torch.randn(2, 18, 6)
    batched = stack(x)
    for _ in range(2):  # and again after a reset
        stack.reset()
        streamed = torch.stack([stack.step(x[:, t]) for t in range(18)], dim=1)
        torch.testing.assert_close(streamed, batched, atol=1e-6, rtol=1e-5)


def test_refusals():
    with pytest.raises(ConfigError, match="odd kernel_size"):
        DilatedTemporalConv(2, 2, kernel_size=2, causal=False)
    with pytest.raises(ConfigError, match="causal=True"):
        DilatedTemporalStack(2, 4, causal=False).step(torch.zeros(1, 2))
    stack = DilatedTemporalStack(2, 4)
    stack.step(torch.zeros(1, 2))
    with pytest.raises(DataError, match="call reset"):  # a new batch size means a new stream
        stack.step(torch.zeros(3, 2))
