"""Clip transforms for TSN-family training: multi-scale crop, centre crop, short-side resize, flip, normalise.

Wang et al. 2016, "Temporal Segment Networks", arXiv:1608.00859, Sec. 3.2 "Data augmentation": corner
cropping and scale jittering. The crop width and height are each drawn from {1, .875, .75, .66} x the short
side (at most one step apart, so the aspect ratio jitters a little), the crop sits at one of the four corners,
the centre or (``more_fix_crop``) eight more fixed points, and is resized to the input size.

Every frame of a clip gets the *same* crop and flip: the transforms act on a whole clip, so the random draw is
made once per clip. Randomness comes from torch's global RNG, which ``torch.manual_seed`` and the DataLoader's
per-worker seeds control.

A clip enters as uint8 (N, H, W, C) (numpy or torch) or float (N, C, H, W) in [0, 1] and leaves as float
(N, C, H, W): N frames, C channels (3 for RGB, 2 for an (x, y) optical-flow frame), H x W pixels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from papernotes.errors import ConfigError, DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# TSN's flow input: uint8 flow images scaled to [0, 1], centred at 0.5, divided by the mean ImageNet std
FLOW_MEAN = (0.5, 0.5)
FLOW_STD = (0.226, 0.226)
TSN_SCALES = (1.0, 0.875, 0.75, 0.66)

Clip = np.ndarray | torch.Tensor


def to_float_clip(clip: Clip) -> torch.Tensor:
    """uint8 (N, H, W, C) (numpy or torch) -> float (N, C, H, W) in [0, 1].

    A float tensor is taken to be (N, C, H, W) already and returned as is.
    """
    if isinstance(clip, np.ndarray):
        clip = torch.from_numpy(np.ascontiguousarray(clip))
    if clip.dtype == torch.uint8:
        if clip.ndim == 3:  # grayscale frames (N, H, W)
            clip = clip[..., None]
        if clip.ndim != 4:
            raise DataError(f"a uint8 clip must be (N, H, W, C), got shape {tuple(clip.shape)}")
        return clip.permute(0, 3, 1, 2).float().div_(255)  # (N, C, H, W)
    if not clip.is_floating_point() or clip.ndim != 4:
        raise DataError(
            f"a clip must be uint8 (N, H, W, C) or float (N, C, H, W), got {clip.dtype} {tuple(clip.shape)}"
        )
    return clip


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _resize(clip: torch.Tensor, height: int, width: int) -> torch.Tensor:
    if clip.shape[-2:] == (height, width):
        return clip
    # antialias: downscaling by 2-3x without it aliases the fine texture that motion cues live in
    return F.interpolate(clip, size=(height, width), mode="bilinear", align_corners=False, antialias=True)


def _randint(high: int) -> int:
    return int(torch.randint(high, ()).item())


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Sequence[Callable[[torch.Tensor], torch.Tensor]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, clip: Clip) -> torch.Tensor:
        out = to_float_clip(clip)
        for transform in self.transforms:
            out = transform(out)
        return out

    def __repr__(self) -> str:
        return f"Compose({self.transforms})"


class ResizeShort:
    """Resize every frame so that its shorter side is ``size`` pixels, keeping the aspect ratio."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, clip: Clip) -> torch.Tensor:
        clip = to_float_clip(clip)
        h, w = clip.shape[-2:]
        scale = self.size / min(h, w)
        return _resize(clip, max(1, round(h * scale)), max(1, round(w * scale)))

    def __repr__(self) -> str:
        return f"ResizeShort({self.size})"


class CenterCrop:
    """Crop the central ``size`` (int or (height, width)) region of every frame."""

    def __init__(self, size: int | Sequence[int]) -> None:
        self.size = _pair(size)

    def __call__(self, clip: Clip) -> torch.Tensor:
        clip = to_float_clip(clip)
        (th, tw), (h, w) = self.size, clip.shape[-2:]
        if th > h or tw > w:
            raise DataError(f"cannot centre-crop {th}x{tw} from frames of {h}x{w}; resize first")
        top, left = (h - th) // 2, (w - tw) // 2
        return clip[..., top : top + th, left : left + tw]

    def __repr__(self) -> str:
        return f"CenterCrop({self.size})"


class MultiScaleCrop:
    """TSN's corner cropping + scale jittering, one draw per clip, then a resize to ``size``.

    ``scales`` are fractions of the short side; ``max_distort`` is how many scale steps the width and height
    choices may differ. ``more_fix_crop`` adds TSN's eight extra crop positions to the four corners + centre.
    """

    def __init__(
        self,
        size: int | Sequence[int],
        scales: Sequence[float] = TSN_SCALES,
        max_distort: int = 1,
        more_fix_crop: bool = True,
    ) -> None:
        self.size = _pair(size)
        self.scales = tuple(scales)
        self.max_distort = max_distort
        self.more_fix_crop = more_fix_crop

    def crop_box(self, height: int, width: int) -> tuple[int, int, int, int]:
        """Draw one (top, left, crop_height, crop_width) for frames of height x width."""
        base = min(height, width)
        sizes = [max(1, int(base * s)) for s in self.scales]
        pairs = [
            (ch, cw)
            for i, ch in enumerate(sizes)
            for j, cw in enumerate(sizes)
            if abs(i - j) <= self.max_distort
        ]
        ch, cw = pairs[_randint(len(pairs))]
        dy, dx = (height - ch) / 4, (width - cw) / 4  # the fixed positions sit on a quarter grid
        positions = [(0, 0), (0, 4), (4, 0), (4, 4), (2, 2)]  # corners, centre (in quarter steps)
        if self.more_fix_crop:
            positions += [(2, 0), (2, 4), (4, 2), (0, 2), (1, 1), (1, 3), (3, 1), (3, 3)]
        qy, qx = positions[_randint(len(positions))]
        return int(qy * dy), int(qx * dx), ch, cw

    def __call__(self, clip: Clip) -> torch.Tensor:
        clip = to_float_clip(clip)
        top, left, ch, cw = self.crop_box(*clip.shape[-2:])
        return _resize(clip[..., top : top + ch, left : left + cw], *self.size)

    def __repr__(self) -> str:
        return f"MultiScaleCrop({self.size}, scales={self.scales}, max_distort={self.max_distort})"


class RandomHorizontalFlip:
    """Mirror the whole clip left-right with probability ``p``.

    Not label-preserving for direction-aware classes: a flip turns "move left" into "move right" (and
    "Pushing something from left to right" into its opposite in Something-Something). That is why the presets
    leave it off unless asked. For optical flow (``is_flow``) the x channels (0, 2, 4, ...) also change sign,
    which in [0, 1]-scaled TSN flow images is x -> 1 - x.
    """

    def __init__(self, p: float = 0.5, is_flow: bool = False) -> None:
        self.p = p
        self.is_flow = is_flow

    def __call__(self, clip: Clip) -> torch.Tensor:
        clip = to_float_clip(clip)
        if torch.rand(()).item() >= self.p:
            return clip
        clip = clip.flip(-1)
        if self.is_flow:
            clip = clip.clone()
            clip[:, 0::2] = 1 - clip[:, 0::2]
        return clip

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p}, is_flow={self.is_flow})"


class Normalize:
    """Per-channel (x - mean) / std on float (N, C, H, W) clips."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)  # (1, C, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    def __call__(self, clip: Clip) -> torch.Tensor:
        clip = to_float_clip(clip)
        if clip.shape[1] != self.mean.shape[1]:
            raise DataError(
                f"Normalize has {self.mean.shape[1]} channel statistics, the clip has {clip.shape[1]}"
            )
        return (clip - self.mean) / self.std

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()})"


def _stats(modality: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if modality == "rgb":
        return IMAGENET_MEAN, IMAGENET_STD
    if modality == "flow":
        return FLOW_MEAN, FLOW_STD
    raise ConfigError(f"modality must be 'rgb' or 'flow', got {modality!r}")


def train_transform(
    size: int = 112,
    scale_size: int | None = None,
    flip: bool = False,
    modality: str = "rgb",
    scales: Sequence[float] = TSN_SCALES,
) -> Compose:
    """Training preset: short side to ``scale_size`` (default size * 256/224, TSN's 256 for 224), multi-scale
    crop to size x size (``scales``: fractions of the short side), optional flip (off by default: it swaps
    left and right), normalise. ``scale_size=size`` with ``scales=(1.0,)`` leaves square frames of ``size`` px
    as they are: no augmentation, and no resize to pay for."""
    mean, std = _stats(modality)
    steps: list[Callable[[torch.Tensor], torch.Tensor]] = [
        ResizeShort(scale_size or round(size * 256 / 224)),
        MultiScaleCrop(size, scales=scales),
    ]
    if flip:
        steps.append(RandomHorizontalFlip(is_flow=modality == "flow"))
    return Compose([*steps, Normalize(mean, std)])


def test_transform(size: int = 112, scale_size: int | None = None, modality: str = "rgb") -> Compose:
    """Test preset: short side to ``scale_size`` (default size * 256/224), centre crop, normalise."""
    mean, std = _stats(modality)
    return Compose(
        [ResizeShort(scale_size or round(size * 256 / 224)), CenterCrop(size), Normalize(mean, std)]
    )


test_transform.__test__ = False  # type: ignore[attr-defined]  # keep pytest from collecting it when imported
