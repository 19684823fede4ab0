"""TSM: the shift moves exactly the chosen channels, adds no parameters, and streams exactly."""

import pytest
import torch
import torchvision

from papernotes.errors import ConfigError, DataError
from papernotes.video.models.tsm import apply_temporal_shift, set_streaming, temporal_shift


def frames(N: int = 2, T: int = 4, C: int = 16) -> torch.Tensor:
    """x[n, t, c] = 1000 n + 100 t + c: every value names where it came from."""
    n, t, c = torch.meshgrid(torch.arange(N), torch.arange(T), torch.arange(C), indexing="ij")
    x = (1000 * n + 100 * t + c).float()  # (N, T, C)
    return x[..., None, None].expand(N, T, C, 2, 2).reshape(N * T, C, 2, 2)


def test_offline_shift_moves_one_eighth_each_way_with_zero_padding():
    T, C = 4, 16
    out = temporal_shift(frames(T=T, C=C), num_segments=T).view(2, T, C, 2, 2)[..., 0, 0]
    x = frames(T=T, C=C).view(2, T, C, 2, 2)[..., 0, 0]
    for t in range(T):
        future = x[:, t + 1, :2] if t < T - 1 else torch.zeros(2, 2)
        past = x[:, t - 1, 2:4] if t > 0 else torch.zeros(2, 2)
        assert torch.equal(out[:, t, :2], future)  # channels [0, C/8) from t + 1
        assert torch.equal(out[:, t, 2:4], past)  # channels [C/8, 2C/8) from t - 1
        assert torch.equal(out[:, t, 4:], x[:, t, 4:])  # the rest stay
    moved = out[1, :, :4]
    assert (moved[moved != 0] >= 1000).all()  # clip 1 receives only clip 1's values: clips never mix


def test_online_shift_reads_only_the_past():
    T = 4
    out = temporal_shift(frames(T=T), num_segments=T, online=True).view(2, T, 16, 2, 2)[..., 0, 0]
    x = frames(T=T).view(2, T, 16, 2, 2)[..., 0, 0]
    assert torch.equal(out[:, 0, :2], torch.zeros(2, 2))
    assert torch.equal(out[:, 1:, :2], x[:, :-1, :2]) and torch.equal(out[:, :, 2:], x[:, :, 2:])


@pytest.mark.parametrize("online", [False, True])
def test_gradients_flow_back_to_where_the_values_came_from(online):
    """The shift is a permutation with zeros: its backward returns each output gradient to the input
    position it was copied from (the transpose), and the positions that fed nothing get zero. The index
    tables are cached per shape, so shapes are interleaved to catch a stale table."""
    for N, T, C in ((2, 4, 16), (3, 2, 8), (2, 4, 16), (1, 3, 24)):
        x = torch.randn(N * T, C, 2, 3, requires_grad=True)
        grad = torch.randn(N * T, C, 2, 3)
        temporal_shift(x, num_segments=T, online=online).backward(grad)
        expected = torch.zeros(N, T, C, 2, 3)
        g = grad.view(N, T, C, 2, 3)
        fold = C // 8
        if online:  # out[t, :fold] = x[t - 1, :fold], so x[t, :fold] receives grad[t + 1, :fold]
            expected[:, :-1, :fold] = g[:, 1:, :fold]
            expected[:, :, fold:] = g[:, :, fold:]
        else:  # out[t, :fold] = x[t + 1], out[t, fold:2 fold] = x[t - 1]
            expected[:, 1:, :fold] = g[:, :-1, :fold]
            expected[:, :-1, fold : 2 * fold] = g[:, 1:, fold : 2 * fold]
            expected[:, :, 2 * fold :] = g[:, :, 2 * fold :]
        assert torch.equal(x.grad, expected.view(N * T, C, 2, 3))


def test_shift_adds_no_parameters_and_changes_the_output():
    torch.manual_seed(0)
    plain = torchvision.models.resnet18(num_classes=5).eval()
    shifted = torchvision.models.resnet18(num_classes=5).eval()
    shifted.load_state_dict(plain.state_dict())
    assert apply_temporal_shift(shifted, num_segments=4) == 8
    assert sum(p.numel() for p in shifted.parameters()) == sum(p.numel() for p in plain.parameters())
    assert list(shifted.state_dict()) == list(plain.state_dict())  # ImageNet ResNet weights load as they are
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(shifted(x), plain(x))


@torch.no_grad()
def test_online_streaming_equals_offline_unidirectional():
    torch.manual_seed(0)
    T = 5
    model = torchvision.models.resnet18(num_classes=7)
    apply_temporal_shift(model, num_segments=T, online=True)
    model.eval()
    clip = torch.randn(2, T, 3, 32, 32)
    offline = model(clip.view(2 * T, 3, 32, 32)).view(2, T, 7)  # (N, T, classes): per-frame scores
    set_streaming(model, True)
    streamed = torch.stack([model(clip[:, t]) for t in range(T)], dim=1)  # one frame at a time
    torch.testing.assert_close(streamed, offline, atol=1e-5, rtol=1e-5)
    set_streaming(model, True)  # reset: a new stream starts from zero history
    torch.testing.assert_close(model(clip[:, 0]), offline[:, 0], atol=1e-5, rtol=1e-5)


def test_bad_inputs_are_refused():
    with pytest.raises(DataError, match="not a multiple of num_segments=3"):
        temporal_shift(torch.zeros(4, 8, 2, 2), num_segments=3)
    model = torchvision.models.resnet18()
    apply_temporal_shift(model, num_segments=4)  # offline
    with pytest.raises(ConfigError, match="streaming needs the online"):
        set_streaming(model, True)
