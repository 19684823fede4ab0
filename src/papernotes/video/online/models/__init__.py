"""``build_detector``: every online action detector by name, from one plain dict of constructors.

All share one contract (the README's "Architecture" section): ``forward(features (B, T, D)) -> scores (B,
T, C+1)`` where frame t reads frames <= t only, ``loss(features, targets (B, T))`` with each paper's
training loss, and ``stream()`` whose ``step(feature (D,)) -> (C+1,)`` gives the offline score of the
frame just fed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from torch import nn

from papernotes.errors import ConfigError
from papernotes.video.online.models import idn, mlp, oadtr, recurrent, tcn

# name -> (model class, its presets: "default" has the paper's dimensions, "tiny" is for tests)
DETECTORS: dict[str, tuple[Callable[[Any], nn.Module], dict[str, Any]]] = {
    "mlp": (mlp.FrameMLP, mlp.PRESETS),
    "tcn": (tcn.TCNDetector, tcn.PRESETS),
    "trn": (recurrent.TemporalRecurrentNetwork, recurrent.PRESETS),
    "idn": (idn.IDN, idn.PRESETS),
    "oadtr": (oadtr.OadTR, oadtr.PRESETS),
}


def build_detector(name: str, preset: str = "default", **overrides: Any) -> nn.Module:
    """A detector from its preset with ``overrides`` (e.g. feature_dim=, num_classes=) applied."""
    if name not in DETECTORS:
        raise ConfigError(f"unknown detector {name!r}; available: {', '.join(sorted(DETECTORS))}")
    cls, presets = DETECTORS[name]
    if preset not in presets:
        raise ConfigError(f"{name}: unknown preset {preset!r}; available: {', '.join(presets)}")
    cfg = presets[preset]
    fields = {f.name for f in dataclasses.fields(cfg)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ConfigError(f"{name}: unknown settings {unknown}; {type(cfg).__name__} has {sorted(fields)}")
    return cls(dataclasses.replace(cfg, **overrides))
