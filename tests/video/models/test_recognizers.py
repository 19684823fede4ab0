"""Recognizers: shapes, gradients, TSN's order invariance and TSM's order sensitivity."""

import pytest
import torch

from papernotes.errors import ConfigError, DataError
from papernotes.video.models import build_recognizer

K = 4


def clip(seed: int = 0) -> torch.Tensor:
    return torch.randn(2, K, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", ["tsn", "tsm"])
def test_recognizer_gives_class_logits_and_gradients(name):
    torch.manual_seed(0)
    model = build_recognizer(name, num_classes=6, num_segments=K)
    logits = model(clip())
    assert logits.shape == (2, 6) and model.frames_per_segment == 1
    logits.sum().backward()
    assert model.backbone.conv1.weight.grad.abs().sum() > 0


@torch.no_grad()
def test_tsn_consensus_is_order_invariant_and_tsm_is_not():
    torch.manual_seed(0)
    tsn = build_recognizer("tsn", 6, K).eval()
    tsm = build_recognizer("tsm", 6, K).eval()
    tsm.load_state_dict(tsn.state_dict())  # same weights: the shift is the only difference
    x = clip()
    reversed_x = x.flip(1)
    torch.testing.assert_close(tsn(reversed_x), tsn(x), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(tsm(reversed_x), tsm(x), atol=1e-4)
    tsn_params = sum(p.numel() for p in tsn.parameters())
    assert tsn_params == sum(p.numel() for p in tsm.parameters())  # zero extra parameters


def test_bad_name_and_bad_clip_shape_are_refused():
    names = "dilated, r2plus1d, r3d, tam, tam-signed, tdn, trn, tsm, tsn, two-stream"
    with pytest.raises(ConfigError, match=f"unknown recognizer 'i3d'; available: {names}"):
        build_recognizer("i3d", 6, K)
    with pytest.raises(ConfigError, match="backbone must be one of"):
        build_recognizer("tsn", 6, K, backbone="vgg")
    with pytest.raises(DataError, match=r"expected a clip \(B, 4, C, H, W\)"):
        build_recognizer("tsn", 6, K)(torch.zeros(2, 3, 3, 32, 32))
