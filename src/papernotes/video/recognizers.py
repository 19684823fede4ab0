"""``build_recognizer``: every video recognizer by name, from one plain dict of constructors.

All share one contract (ARCHITECTURE.md): input (B, K·L, C, H, W), output class logits
(B, num_classes), and attributes ``frames_per_segment`` (L) and ``modality`` that tell the data
code how to sample. The methods still to come (TRN, TDN, TAM, Two-Stream, 3-D baselines) are
tracked by the video issue.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from papernotes.errors import ConfigError
from papernotes.video.tsm import build_tsm
from papernotes.video.tsn import TSN

CONSTRUCTORS: dict[str, Callable[..., nn.Module]] = {
    "tsn": TSN,
    "tsm": build_tsm,
}


def build_recognizer(name: str, num_classes: int, num_segments: int, backbone: str = "resnet18") -> nn.Module:
    """A recognizer with random weights; raises ConfigError for an unknown name."""
    if name not in CONSTRUCTORS:
        raise ConfigError(f"unknown recognizer {name!r}; available: {', '.join(sorted(CONSTRUCTORS))}")
    return CONSTRUCTORS[name](num_classes, num_segments, backbone=backbone)
