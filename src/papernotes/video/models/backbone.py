"""torchvision backbones with random weights, and loading ImageNet / Kinetics weights from a local file.

Not a paper method. Every recognizer builds on a torchvision model created with ``weights=None`` (nothing is
downloaded); a user who has the weights file (for example torchvision's ``resnet50-0676ba61.pth``, or a
``.safetensors`` export) passes its path as ``pretrained``.

``"slim-resnet10"`` is the backbone of the default ``reproduce`` size: torchvision's ResNet with its
``BasicBlock``, one block per stage and widths 16-32-64-128 instead of 64-128-256-512 (about 1/16 of
ResNet-18's FLOPs at 1/6 of its depth). It has the same attributes (``conv1``, ``layer1`` ... ``layer4``) and
forward, so every temporal module attaches to it exactly as to ResNet-18; it exists because ResNet-18 from
scratch does not converge in the minutes that 2 CPU cores allow. No pretrained weights exist for it.

Cross-modality initialisation (TSN, Wang et al. 2016, arXiv:1608.00859, §3.2): a network whose first
convolution takes a different number of input channels than the RGB weights (2·L optical-flow channels, or
TDN's stacked RGB differences) averages the RGB kernel over its 3 input channels and replicates that mean
over the new channels. Any other mismatch is an error naming the tensor and both shapes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision
from torch import nn

from papernotes.errors import CheckpointError, ConfigError, ShapeMismatchError

logger = logging.getLogger(__name__)

SLIM_WIDTHS = (16, 32, 64, 128)  # channels of the four stages of "slim-resnet10"


class SlimResNet(torchvision.models.ResNet):
    """torchvision's ResNet made of ``BasicBlock``s with stage widths ``widths`` and ``blocks`` per stage.

    torchvision's constructor fixes the widths at 64-128-256-512, so this one builds the same modules
    (stem, ``_make_layer`` stages, pooling, classifier) with other widths; ``forward`` is torchvision's.
    """

    def __init__(
        self, widths: tuple[int, ...] = SLIM_WIDTHS, blocks: tuple[int, ...] = (1, 1, 1, 1), **kwargs
    ) -> None:
        nn.Module.__init__(self)
        if kwargs.pop("weights", None) is not None:
            raise ConfigError("slim-resnet10 has no pretrained weights; pass pretrained=PATH to a local file")
        self._norm_layer = nn.BatchNorm2d
        self.inplanes, self.dilation, self.groups, self.base_width = widths[0], 1, 1, 64
        self.conv1 = nn.Conv2d(3, widths[0], kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        block = torchvision.models.resnet.BasicBlock
        self.layer1 = self._make_layer(block, widths[0], blocks[0])
        self.layer2 = self._make_layer(block, widths[1], blocks[1], stride=2)
        self.layer3 = self._make_layer(block, widths[2], blocks[2], stride=2)
        self.layer4 = self._make_layer(block, widths[3], blocks[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(widths[3], 1000)
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "resnet18": torchvision.models.resnet18,
    "resnet50": torchvision.models.resnet50,
    "slim-resnet10": SlimResNet,
}
FEATURE_DIMS = {"resnet18": 512, "resnet50": 2048, "slim-resnet10": SLIM_WIDTHS[-1]}
# classifier tensors of the source checkpoint: the recognizer owns its own classifier
_HEAD_PREFIXES = ("fc.",)


def resnet_backbone(name: str) -> nn.Module:
    """A torchvision ResNet with random weights (no download) and its classifier removed."""
    if name not in BACKBONES:
        raise ConfigError(f"backbone must be one of {sorted(BACKBONES)}, got {name!r}")
    model = BACKBONES[name](weights=None)
    model.fc = nn.Identity()  # features out; the recognizer owns the classifier
    return model


class AdoptedConv2d(nn.Conv2d):
    """Base of a Conv2d that replaces ``conv`` inside a ResNet and takes over its Parameters.

    Methods that act on a block's input (TSM's shift, TAM) subclass it and transform ``x`` before
    ``super().forward(x)``. The state-dict names (``layer1.0.conv1.weight``) stay those of the plain ResNet,
    so ImageNet weights load unchanged, and nothing is allocated: the new module is built on the meta device
    and then holds the original tensors.
    """

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.dilation,
            conv.groups,
            conv.bias is not None,
            conv.padding_mode,
            device="meta",
        )
        self.weight, self.bias = conv.weight, conv.bias


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file or a ``torch.save``d state dict (read with ``weights_only=True``).

    A checkpoint that wraps the state dict under "state_dict" or "model" is unwrapped, and DataParallel's
    "module." prefix is removed.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"pretrained weights {path}: no such file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 -- any reader failure means the same thing to the user
        raise CheckpointError(
            f"pretrained weights {path}: cannot read ({type(exc).__name__}: {exc})"
        ) from exc
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"pretrained weights {path}: expected a dict of tensors (a state dict)")
    return {k.removeprefix("module."): v for k, v in state.items()}


def cross_modality_weight(rgb_weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """TSN's cross-modality init: (O, 3, *k) RGB kernel -> (O, in_channels, *k), the channel mean repeated."""
    mean = rgb_weight.mean(dim=1, keepdim=True)  # (O, 1, *k)
    return mean.expand(-1, in_channels, *rgb_weight.shape[2:]).clone()  # (O, in_channels, *k)


def load_backbone_weights(backbone: nn.Module, path: str | Path, reference: nn.Module) -> list[str]:
    """Load the pretrained tensors that ``reference`` (a plain torchvision model of the same architecture)
    has into ``backbone``; return the names loaded.

    The file must hold every tensor of ``reference`` except the classifier ("fc."). Tensors that a method
    added to the backbone (TAM's branches) keep their initialisation. A first convolution that takes other
    than 3 channels gets the cross-modality init; any other shape mismatch raises ShapeMismatchError.
    """
    state = read_state_dict(path)
    wanted = {k: v for k, v in reference.state_dict().items() if not k.startswith(_HEAD_PREFIXES)}
    own = backbone.state_dict()
    missing = sorted(set(wanted) - set(state))
    if missing:
        raise CheckpointError(
            f"pretrained weights {path} lack {len(missing)} backbone tensors, e.g. {missing[:3]}; "
            f"expected the state dict of a torchvision {type(reference).__name__}"
        )
    loaded = {}
    for name in wanted:
        tensor = state[name]
        target = own[name]
        if tensor.shape != target.shape:
            if _is_first_conv(name, tensor, target):
                tensor = cross_modality_weight(tensor, target.shape[1])
                logger.info("%s: cross-modality init %s -> %s", name, (3,), tuple(target.shape))
            else:
                raise ShapeMismatchError(
                    f"pretrained weights {path}: tensor {name} has shape {tuple(tensor.shape)}, "
                    f"but the model needs {tuple(target.shape)}"
                )
        loaded[name] = tensor.to(target.dtype)
    backbone.load_state_dict(loaded, strict=False)
    return sorted(loaded)


def _is_first_conv(name: str, source: torch.Tensor, target: torch.Tensor) -> bool:
    """An RGB stem kernel loading into a stem that takes another channel count (flow, RGB differences)."""
    stem = name in ("conv1.weight", "stem.0.weight")  # 2-D ResNet, torchvision video ResNet
    return (
        stem
        and source.shape[1] == 3
        and source.shape[0] == target.shape[0]
        and source.shape[2:] == target.shape[2:]
    )
