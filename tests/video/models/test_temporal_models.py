"""Two-Stream, TRN, TDN, TAM and the 3-D baselines: shapes, gradients, order sensitivity, the equations."""

import pytest
import torch
import torch.nn.functional as F

from papernotes.errors import DataError
from papernotes.video.models import CONSTRUCTORS, build_recognizer
from papernotes.video.models.tam import TemporalAdaptiveModule
from papernotes.video.models.trn import TRN

K = 4


def inputs(model, seed: int = 0, batch: int = 2, size: int = 32):
    g = torch.Generator().manual_seed(seed)
    if model.modality == "rgb+flow":
        return {
            "rgb": torch.randn(batch, K, 3, size, size, generator=g),
            "flow": torch.randn(batch, K, 2 * model.flow_length, size, size, generator=g),
        }
    return torch.randn(batch, K * model.frames_per_segment, 3, size, size, generator=g)


@pytest.mark.parametrize("name", sorted(CONSTRUCTORS))
def test_every_recognizer_gives_logits_and_gradients_to_every_parameter(name):
    torch.manual_seed(0)
    model = build_recognizer(name, num_classes=5, num_segments=K)
    logits = model(inputs(model))
    assert logits.shape == (2, 5)
    logits.logsumexp(-1).sum().backward()
    # dropout zeroes whole features but never all of them: every parameter gets a gradient
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    if name.startswith("tam"):
        # TAM's global branch ends in a zero-weight layer (its identity start), which passes no gradient to
        # the layers before it until its weights move: like LoRA's B = 0. One SGD step later, it does.
        assert no_grad and all(".tam.glob." in n for n in no_grad), no_grad
        torch.optim.SGD(model.parameters(), lr=0.1).step()
        model.zero_grad()
        model(inputs(model)).logsumexp(-1).sum().backward()
        no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not no_grad, no_grad


@torch.no_grad()
@pytest.mark.parametrize("name", ["trn", "tdn", "tam", "tsm", "dilated", "r3d", "r2plus1d"])
def test_temporal_models_are_sensitive_to_segment_order(name):
    torch.manual_seed(0)
    model = build_recognizer(name, 5, K).eval()
    x = inputs(model)
    L = model.frames_per_segment
    # reverse the order of the segments, keeping each snippet's frames in order
    reversed_segments = x.view(2, K, L, 3, 32, 32).flip(1).reshape(x.shape)
    assert not torch.allclose(model(reversed_segments), model(x), atol=1e-4)


@torch.no_grad()
def test_tdn_sees_the_direction_inside_a_snippet_and_trn_eval_is_deterministic():
    torch.manual_seed(0)
    tdn = build_recognizer("tdn", 5, K).eval()
    x = inputs(tdn)
    within = x.view(2, K, 5, 3, 32, 32).flip(2).reshape(x.shape)  # same centre frames, differences negated
    assert not torch.allclose(tdn(within), tdn(x), atol=1e-4)

    trn = build_recognizer("trn", 5, K).eval()
    clip = inputs(trn)
    torch.testing.assert_close(trn(clip), trn(clip))
    # one K-frame relation, then min(3, C(K, s)) sampled relations for s = K-1 ... 2
    assert [len(trn.relation.chosen(s)) for s in trn.relation.scales] == [1, 3, 3]


@torch.no_grad()
def test_trn_relation_head_is_the_sum_of_its_scale_mlps():
    torch.manual_seed(0)
    trn = TRN(5, K).eval()
    features = torch.randn(2, K, 256)
    expected = 0
    for scale, mlp in zip(trn.relation.scales, trn.relation.mlps):
        for combo in trn.relation.chosen(scale):
            expected = expected + mlp(torch.cat([features[:, i] for i in combo], dim=-1))
    torch.testing.assert_close(trn.relation(features), expected)


@torch.no_grad()
@pytest.mark.parametrize("signed", [False, True])
def test_tam_equals_its_equations_written_as_loops(signed):
    torch.manual_seed(0)
    T, C = 4, 8
    tam = TemporalAdaptiveModule(C, T, signed_kernel=signed).eval()
    for p in tam.parameters():
        p.normal_(0, 0.5)
    x = torch.randn(2 * T, C, 3, 5)
    out = tam(x)
    for n in range(2):
        clip = x[n * T : (n + 1) * T]  # (T, C, H, W)
        pooled = clip.mean(dim=(2, 3)).T  # (C, T)
        importance = tam.local(pooled[None])[0]  # (C, T)
        kernel = tam.glob(pooled)  # (C, 3)
        if signed:  # the ablation: taps of either sign that need not sum to 1
            linear = tam.glob[:4](pooled)  # the branch without its last (identity) layer
            torch.testing.assert_close(kernel, linear)
            assert (kernel < 0).any() and not torch.allclose(kernel.sum(-1), torch.ones(C))
        else:  # the paper's: a softmax, each row a convex combination
            assert (kernel > 0).all()
            torch.testing.assert_close(kernel.sum(-1), torch.ones(C))
        z = clip * importance.T[..., None, None]
        for t in range(T):
            expected = sum(kernel[:, j, None, None] * z[t + j - 1] for j in range(3) if 0 <= t + j - 1 < T)
            torch.testing.assert_close(out[n * T + t], expected, atol=1e-5, rtol=1e-5)


def test_two_stream_fuses_1_to_1_5_and_refuses_a_wrong_flow_channel_count():
    torch.manual_seed(0)
    model = build_recognizer("two-stream", 5, K).eval()
    x = inputs(model)
    with torch.no_grad():
        streams = model(x, return_streams=True)
        torch.testing.assert_close(model(x), streams["rgb"] + 1.5 * streams["flow"])
    assert model.flow.backbone.conv1.in_channels == 10  # 2·L, L = 5
    with pytest.raises(DataError, match=r"flow stream expects 10 channels .*got 3"):
        model({"rgb": x["rgb"], "flow": x["rgb"]})
    with pytest.raises(DataError, match="dict with keys 'rgb' and 'flow'"):
        model(x["rgb"])


def test_tdn_refuses_a_clip_without_five_frames_per_segment():
    model = build_recognizer("tdn", 5, K)
    with pytest.raises(DataError, match=r"5 consecutive RGB frames per segment"):
        model(torch.zeros(1, K, 3, 32, 32))


def test_flow_stream_matches_input_size_after_pooling():
    # odd input sizes reach the S-TDM ceil pooling and the strided stem at different sizes
    model = build_recognizer("tdn", 5, K).eval()
    with torch.no_grad():
        assert model(torch.randn(1, K * 5, 3, 33, 35)).shape == (1, 5)
    assert F.avg_pool2d(torch.zeros(1, 1, 33, 35), 2, ceil_mode=True).shape[-2:] == (17, 18)


@torch.no_grad()
def test_tam_starts_as_the_identity_along_time():
    """The fix: every global kernel starts at (0, 1, 0), not at a blur, so TANet starts as TSN with the
    local branch's gating, whatever the input (the global branch's last layer has zero weights)."""
    torch.manual_seed(0)
    T, C = 4, 16
    tam = TemporalAdaptiveModule(C, T).eval()
    x = torch.randn(3 * T, C, 5, 5)
    pooled = x.view(3, T, C, 5, 5).mean(dim=(3, 4)).transpose(1, 2)  # (N, C, T)
    kernel = tam.glob(pooled.reshape(-1, T))  # (N·C, 3)
    assert (kernel[:, 1] > 0.99).all() and torch.allclose(kernel[:, 0], kernel[:, 2])
    importance = tam.local(pooled).transpose(1, 2).reshape(3 * T, C, 1, 1)  # (N·T, C, 1, 1)
    torch.testing.assert_close(tam(x), x * importance * kernel[0, 1], atol=0.02, rtol=0.02)
    # the aggregation reads no neighbour yet: after a change to frame 0, every frame is still itself times
    # its gate (the local branch's gate does see the neighbours, by design)
    changed = x.clone()
    changed[0] += 1.0
    pooled = changed.view(3, T, C, 5, 5).mean(dim=(3, 4)).transpose(1, 2)  # (N, C, T)
    importance = tam.local(pooled).transpose(1, 2).reshape(3 * T, C, 1, 1)  # (N·T, C, 1, 1)
    torch.testing.assert_close(tam(changed), changed * importance * kernel[0, 1], atol=0.02, rtol=0.02)
    assert not torch.allclose(tam(changed), x * importance * kernel[0, 1], atol=0.02, rtol=0.02)


@torch.no_grad()
def test_signed_tam_starts_exactly_at_the_identity_and_can_take_a_temporal_difference():
    """The ablation's kernel starts at exactly (0, 1, 0), and unlike a softmax kernel it can become a
    difference along time: with taps (−1, 1, 0) a ramp along time gives +½ per step after t = 0, and the
    reversed ramp −½, a change of sign that no convex kernel can produce."""
    torch.manual_seed(0)
    T, C = 4, 16
    tam = TemporalAdaptiveModule(C, T, signed_kernel=True).eval()
    x = torch.randn(3 * T, C, 5, 5)
    pooled = x.view(3, T, C, 5, 5).mean(dim=(3, 4)).transpose(1, 2)  # (N, C, T)
    assert torch.equal(tam.glob(pooled.reshape(-1, T)), torch.tensor([[0.0, 1.0, 0.0]]).expand(3 * C, 3))
    importance = tam.local(pooled).transpose(1, 2).reshape(3 * T, C, 1, 1)  # (N·T, C, 1, 1)
    torch.testing.assert_close(tam(x), x * importance, atol=1e-6, rtol=1e-6)
    tam.glob[3].bias.copy_(torch.tensor([-1.0, 1.0, 0.0]))  # Y[t] = Z[t] − Z[t − 1]
    tam.local[-2].weight.zero_()  # every gate at sigmoid(0) = ½, so Z = X / 2
    ramp = (
        torch.arange(T, dtype=torch.float32).view(1, T, 1, 1, 1).expand(2, T, C, 2, 2).reshape(2 * T, C, 2, 2)
    )
    y = tam(ramp).view(2, T, C, 2, 2)
    torch.testing.assert_close(y[:, 1:], torch.full_like(y[:, 1:], 0.5))  # (t − (t − 1)) / 2
    backwards = tam(ramp.view(2, T, C, 2, 2).flip(1).reshape(2 * T, C, 2, 2)).view(2, T, C, 2, 2)
    torch.testing.assert_close(backwards[:, 1:], torch.full_like(y[:, 1:], -0.5))


@torch.no_grad()
def test_tdn_modules_sit_where_the_official_code_puts_them():
    """The fix: L-TDM and a TSM-initialised channel shift on the residual branch of every block of stages
    2-4 (none in stage 1), S-TDM fused after the stem and after layer1 with α, β = 0.75, 0.25 at K = 4."""
    from papernotes.video.models.tdn import LongTermTDM, TDMConv2d, TemporalChannelShift
    from papernotes.video.models.tsm import temporal_shift

    model = build_recognizer("tdn", 5, K)
    net = model.backbone
    assert model.fusion == (0.75, 0.25) and build_recognizer("tdn", 5, 8).fusion == (0.5, 0.5)
    assert not any(isinstance(m, LongTermTDM) for m in net.layer1.modules())
    for stage in (net.layer2, net.layer3, net.layer4):
        assert all(isinstance(block.conv2, TDMConv2d) for block in stage)
    assert len([m for m in model.modules() if isinstance(m, LongTermTDM)]) == 6  # ResNet-18: 2 per stage
    # the shift starts as TSM's shift exactly (the official ShiftModule, mode "shift"), then learns
    shift = TemporalChannelShift(32, K)
    x = torch.randn(2 * K, 32, 3, 3)
    torch.testing.assert_close(shift(x), temporal_shift(x, K), rtol=0, atol=0)
    # L-TDM is the identity on a clip whose segments do not change, once its neighbour convolution is the
    # identity too (then every difference is 0, and σ(0) − ½ = 0)
    tdm = LongTermTDM(64, K).eval()
    tdm.neighbour.weight.zero_()
    tdm.neighbour.weight[:, 0, 1, 1] = 1.0
    static = torch.randn(2, 1, 64, 4, 4).expand(2, K, 64, 4, 4).reshape(2 * K, 64, 4, 4)
    torch.testing.assert_close(tdm(static), static)
