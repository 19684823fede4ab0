"""TSM: the temporal shift module, offline (bi-directional) and online (uni-directional, streaming).

Paper: Lin, Gan & Han 2019, "TSM: Temporal Shift Module for Efficient Video Understanding",
arXiv:1811.08383.

Idea: a 2-D CNN sees one frame at a time; shifting a fraction of the channels along time lets
each frame's features mix with its neighbours' at zero FLOPs and zero parameters. With
T frames and C channels, fold = C / fold_div (fold_div = 8):

    out[t, 0:fold]      = x[t + 1, 0:fold]        (shift left: the future, zero at t = T-1)
    out[t, fold:2fold]  = x[t - 1, fold:2fold]    (shift right: the past, zero at t = 0)
    out[t, 2fold:]      = x[t, 2fold:]            (unchanged)

"Residual" placement (§3.2): the shift sits inside each residual branch, before conv1, so the
identity path keeps the frame's own features. The online variant shifts only from the past
(channels 0:fold take frame t - 1): a streaming model caches those fold channels of the previous
frame in every block and reproduces the offline uni-directional model frame by frame
(``test_online_streaming_equals_offline_unidirectional``).

Dimension letters: N clips, T frames (segments), C channels, H x W pixels.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from papernotes.errors import ConfigError, DataError
from papernotes.video.models.backbone import AdoptedConv2d
from papernotes.video.models.tsn import TSN


def temporal_shift(
    x: torch.Tensor, num_segments: int, fold_div: int = 8, online: bool = False
) -> torch.Tensor:
    """Shift channels along time: x (N*T, C, H, W) -> (N*T, C, H, W), zero padded at the ends."""
    nt, c, h, w = x.shape
    if nt % num_segments:
        raise DataError(
            f"temporal_shift: batch of {nt} frames is not a multiple of num_segments={num_segments}"
        )
    # One gather and one fill instead of a zero fill and three strided slice copies: on small feature maps
    # (the default size's 8x8 and below) the time goes to dispatching operators, not to moving bytes.
    # Row r of the (N*T*C, H*W) view is (frame r // C, channel r % C).
    source, off_clip = _shift_rows(nt, c, num_segments, c // fold_div, online, x.device)
    rows = x.reshape(nt * c, h * w).index_select(0, source)  # (N*T*C, H*W)
    return rows.index_fill_(0, off_clip, 0.0).view(nt, c, h, w)  # zeros enter at the clip's ends


@functools.lru_cache(maxsize=64)
def _shift_rows(
    nt: int, c: int, num_segments: int, fold: int, online: bool, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """The input row that each output (frame, channel) row copies, and the output rows that get zeros.

    Offline (bi-directional): channels [0, fold) come from frame t + 1, [fold, 2 fold) from t - 1.
    Online (uni-directional): channels [0, fold) come from frame t - 1. The rest stay in place.
    A row whose source frame lies outside its clip copies itself and is then zeroed.
    """
    frame = torch.arange(nt).view(nt, 1)  # (N*T, 1)
    channel = torch.arange(c).view(1, c)  # (1, C)
    t = frame % num_segments  # position inside its clip
    first, second = channel < fold, (channel >= fold) & (channel < 2 * fold)
    if online:
        offset, off_clip = torch.where(first, -1, 0), first & (t == 0)
    else:
        offset = torch.where(first, 1, torch.where(second, -1, 0))
        off_clip = (first & (t == num_segments - 1)) | (second & (t == 0))
    source = torch.where(off_clip, frame, frame + offset) * c + channel  # (N*T, C)
    return source.reshape(-1).to(device), off_clip.reshape(-1).nonzero().flatten().to(device)


class TemporalShift(AdoptedConv2d):
    """A residual block's conv1 that shifts its input first. Adds no parameters.

    It takes over the wrapped convolution's own Parameters (``AdoptedConv2d``), so state-dict names stay
    ``layer1.0.conv1.weight`` and ImageNet ResNet weights load unchanged.

    With ``streaming`` on (online models only), each call holds ONE frame per clip (T = 1):
    the first fold channels come from the cached previous frame (zeros after :meth:`reset`).
    """

    def __init__(self, conv: nn.Conv2d, num_segments: int, fold_div: int = 8, online: bool = False) -> None:
        if fold_div < 2:
            raise ConfigError(f"fold_div must be >= 2 (fold = C / fold_div channels move), got {fold_div}")
        super().__init__(conv)
        self.num_segments = num_segments
        self.fold_div = fold_div
        self.online = online
        self.streaming = False
        self._previous: torch.Tensor | None = None  # (N, fold, H, W) of the last frame seen

    def reset(self) -> None:
        self._previous = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.streaming:
            return super().forward(temporal_shift(x, self.num_segments, self.fold_div, self.online))
        fold = x.shape[1] // self.fold_div
        current = x[:, :fold]
        past = self._previous if self._previous is not None else torch.zeros_like(current)
        self._previous = current.detach()
        return super().forward(torch.cat((past, x[:, fold:]), dim=1))  # (N, C, H, W)


def apply_temporal_shift(
    resnet: nn.Module, num_segments: int, fold_div: int = 8, online: bool = False
) -> int:
    """Wrap conv1 of every residual block of a torchvision ResNet (residual shift); return the count."""
    count = 0
    for stage in (resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4):
        for block in stage:
            block.conv1 = TemporalShift(block.conv1, num_segments, fold_div, online)
            count += 1
    if not count:
        raise ConfigError("apply_temporal_shift: no residual blocks found (expected a torchvision ResNet)")
    return count


def set_streaming(model: nn.Module, streaming: bool) -> None:
    """Switch every online shift of ``model`` to frame-by-frame streaming (and clear the caches)."""
    shifts = [m for m in model.modules() if isinstance(m, TemporalShift)]
    if streaming and not all(m.online for m in shifts):
        raise ConfigError(
            "streaming needs the online (uni-directional) shift: the offline one reads the future"
        )
    for module in shifts:
        module.streaming = streaming
        module.reset()


def build_tsm(
    num_classes: int, num_segments: int, backbone: str = "resnet18", fold_div: int = 8, online: bool = False
) -> TSN:
    """TSN's recognizer with the residual shift in its backbone: same parameters, same FLOPs."""
    model = TSN(num_classes, num_segments, backbone)
    apply_temporal_shift(model.backbone, num_segments, fold_div, online)
    return model
