"""``build_recognizer``: every video recognizer by name, from one plain dict of constructors.

All share one contract (the README's "Architecture" section): input (B, K·L, C, H, W) (a dict {"rgb",
"flow"} for Two-Stream), output class logits (B, num_classes), and attributes ``frames_per_segment`` (L)
and ``modality`` ("rgb", "flow" or "rgb+flow") that tell the data code how to sample. Each model has
``load_pretrained(path)`` for local ImageNet / Kinetics weights.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

from torch import nn

from papernotes.errors import ConfigError
from papernotes.video.models.dilated_head import DilatedTemporalHead
from papernotes.video.models.tam import build_tam
from papernotes.video.models.tdn import TDN
from papernotes.video.models.trn import TRN
from papernotes.video.models.tsm import build_tsm
from papernotes.video.models.tsn import TSN
from papernotes.video.models.two_stream import TwoStream
from papernotes.video.models.video3d import build_video3d

CONSTRUCTORS: dict[str, Callable[..., nn.Module]] = {
    "tsn": TSN,
    "two-stream": TwoStream,
    "trn": TRN,
    "tsm": build_tsm,
    "tdn": TDN,
    "tam": build_tam,
    "tam-signed": functools.partial(build_tam, signed_kernel=True),  # our ablation: no softmax on the kernel
    "dilated": DilatedTemporalHead,
    "r3d": build_video3d("r3d"),
    "r2plus1d": build_video3d("r2plus1d"),
}


def build_recognizer(
    name: str,
    num_classes: int,
    num_segments: int,
    backbone: str = "resnet18",
    pretrained: str | Path | None = None,
) -> nn.Module:
    """A recognizer, with random weights or its backbone loaded from the local file ``pretrained``.

    Raises ConfigError for an unknown name, CheckpointError / ShapeMismatchError (naming the tensor) for
    weights that do not fit.
    """
    if name not in CONSTRUCTORS:
        raise ConfigError(f"unknown recognizer {name!r}; available: {', '.join(sorted(CONSTRUCTORS))}")
    if num_classes < 1 or num_segments < 1:
        raise ConfigError(f"num_classes and num_segments must be >= 1, got {num_classes}, {num_segments}")
    model = CONSTRUCTORS[name](num_classes, num_segments, backbone=backbone)
    if pretrained is not None:
        model.load_pretrained(pretrained)
    return model
