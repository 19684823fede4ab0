"""Local pretrained weights: ImageNet files load into every 2-D recognizer; mismatches name the tensor."""

import pytest
import torch
import torchvision
from safetensors.torch import save_file

from papernotes.errors import CheckpointError, ShapeMismatchError
from papernotes.video.models import build_recognizer
from papernotes.video.models.backbone import cross_modality_weight


@pytest.fixture(scope="module")
def imagenet_file(tmp_path_factory):
    """A torchvision ResNet-18 state dict as torchvision publishes it (random weights stand in)."""
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    return path


@pytest.mark.parametrize("name", ["tsn", "tsm", "tam", "trn", "tdn"])
def test_imagenet_weights_load_into_2d_recognizers(name, imagenet_file):
    source = torch.load(imagenet_file, weights_only=True)
    model = build_recognizer(name, 5, 4, pretrained=imagenet_file)
    state = model.backbone.state_dict()
    for key in (
        "conv1.weight",
        "layer1.0.conv1.weight",
        "layer4.1.conv2.weight",
        "layer3.0.bn1.running_mean",
    ):
        torch.testing.assert_close(state[key], source[key])
    if name == "tdn":  # the S-TDM conv starts from the RGB stem averaged over 12 difference channels
        torch.testing.assert_close(
            model.short_term.conv.weight, source["conv1.weight"].mean(1, keepdim=True).expand(-1, 12, -1, -1)
        )


def test_two_stream_flow_stem_gets_the_cross_modality_init(imagenet_file, tmp_path):
    source = torch.load(imagenet_file, weights_only=True)
    safetensors_file = tmp_path / "resnet18.safetensors"
    save_file({k: v.contiguous() for k, v in source.items()}, str(safetensors_file))
    model = build_recognizer("two-stream", 5, 4, pretrained=safetensors_file)
    flow_stem = model.flow.backbone.conv1.weight  # (64, 10, 7, 7)
    assert flow_stem.shape == (64, 10, 7, 7)
    torch.testing.assert_close(flow_stem, cross_modality_weight(source["conv1.weight"], 10))
    torch.testing.assert_close(flow_stem[:, 3], source["conv1.weight"].mean(1))
    torch.testing.assert_close(model.rgb.backbone.conv1.weight, source["conv1.weight"])


def test_weights_that_do_not_fit_name_the_tensor(imagenet_file, tmp_path):
    state = torch.load(imagenet_file, weights_only=True)
    state["layer2.0.conv1.weight"] = torch.zeros(128, 64, 1, 1)
    bad = tmp_path / "bad.pth"
    torch.save(state, bad)
    with pytest.raises(ShapeMismatchError, match=r"tensor layer2.0.conv1.weight has shape \(128, 64, 1, 1\)"):
        build_recognizer("tsn", 5, 4, pretrained=bad)
    r50 = tmp_path / "r50.pth"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), r50)
    with pytest.raises(ShapeMismatchError, match="tensor layer1.0.conv1.weight"):
        build_recognizer("tsm", 5, 4, pretrained=r50)
    del state["layer2.0.conv1.weight"]
    torch.save(state, bad)
    with pytest.raises(CheckpointError, match=r"lack 1 backbone tensors, e.g. \['layer2.0.conv1.weight'\]"):
        build_recognizer("tsn", 5, 4, pretrained=bad)
    with pytest.raises(CheckpointError, match="no such file"):
        build_recognizer("tsn", 5, 4, pretrained=tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        build_recognizer("tsn", 5, 4, pretrained=tmp_path / "junk.pth")


def test_kinetics_weights_load_into_the_3d_baseline(tmp_path):
    torch.manual_seed(2)
    source = torchvision.models.video.r2plus1d_18(weights=None).state_dict()
    path = tmp_path / "r2plus1d.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.items()}}, path)  # wrapped, DataParallel
    model = build_recognizer("r2plus1d", 5, 4, pretrained=path)
    torch.testing.assert_close(model.backbone.stem[0].weight, source["stem.0.weight"])
