"""Segmentation metrics against scikit-learn and torchmetrics, and the mmseg conventions."""

import numpy as np
import pytest
import torch
import torchmetrics.classification as tm
from sklearn.metrics import confusion_matrix

from papernotes.errors import ConfigError, DataError
from papernotes.metrics.segmentation import SegmentationMetrics, segmentation_metrics

C = 5


def maps(seed=0, shape=(4, 32, 32)):
    rng = np.random.default_rng(seed)
    target = rng.integers(0, C, shape)
    pred = np.where(rng.random(shape) < 0.6, target, rng.integers(0, C, shape))
    target[rng.random(shape) < 0.1] = 255  # ignored pixels
    return pred, target


def test_confusion_matches_sklearn_and_iou_matches_torchmetrics():
    pred, target = maps()
    metrics = SegmentationMetrics(C)
    metrics.update(pred, target)
    keep = target != 255
    expected = confusion_matrix(target[keep], pred[keep], labels=range(C))
    np.testing.assert_array_equal(metrics.confusion.numpy(), expected)
    jaccard = tm.MulticlassJaccardIndex(num_classes=C, average="macro", ignore_index=255)
    reference = jaccard(torch.as_tensor(pred), torch.as_tensor(target)).item()
    result = metrics.compute()
    assert result["mIoU"] == pytest.approx(reference, abs=1e-6)
    per_class = tm.MulticlassJaccardIndex(num_classes=C, average="none", ignore_index=255)
    np.testing.assert_allclose(
        result["IoU"], per_class(torch.as_tensor(pred), torch.as_tensor(target)).numpy(), atol=1e-6
    )
    acc = tm.MulticlassAccuracy(num_classes=C, average="macro", ignore_index=255)
    assert result["MPA"] == pytest.approx(
        acc(torch.as_tensor(pred), torch.as_tensor(target)).item(), abs=1e-6
    )
    assert result["PA"] == pytest.approx((pred[keep] == target[keep]).mean())


def test_formulas_on_a_hand_made_confusion_and_the_background_pitfall():
    metrics = SegmentationMetrics(3, ignore_index=None)
    # 90 background pixels all right, class 1: 5 of 10 right, class 2 absent everywhere
    target = np.array([0] * 90 + [1] * 10)
    pred = np.array([0] * 90 + [1] * 5 + [0] * 5)
    metrics.update(pred, target)
    r = metrics.compute()
    assert r["PA"] == pytest.approx(0.95)  # looks good: background dominates
    assert r["IoU"][0] == pytest.approx(90 / 95) and r["IoU"][1] == pytest.approx(5 / 10)
    assert np.isnan(r["IoU"][2]) and r["mIoU"] == pytest.approx((90 / 95 + 0.5) / 2)  # absent class left out
    assert r["MPA"] == pytest.approx((1 + 0.5) / 2)
    assert r["FWIoU"] == pytest.approx((90 * 90 / 95 + 10 * 0.5) / 100)
    assert r["Dice"][1] == pytest.approx(2 * 5 / (10 + 5))


def test_logits_are_argmaxed_and_merging_equals_one_pass():
    torch.manual_seed(0)
    logits = torch.randn(2, C, 8, 8)
    target = torch.randint(0, C, (2, 8, 8))
    a = SegmentationMetrics(C)
    a.update(logits, target)
    b = SegmentationMetrics(C)
    b.update(logits.argmax(1), target)
    assert torch.equal(a.confusion, b.confusion)
    halves = SegmentationMetrics(C), SegmentationMetrics(C)
    halves[0].update(logits[0], target[0])  # (C, H, W) scores for one image
    halves[1].update(logits[1].argmax(0), target[1])
    assert torch.equal(halves[0].merge(halves[1]).confusion, a.confusion)


def test_bad_inputs_are_refused():
    with pytest.raises(DataError, match="target label 7 is outside 0..4"):
        segmentation_metrics(np.zeros((2, 2), int), np.full((2, 2), 7), C)
    with pytest.raises(DataError, match="prediction label -1"):
        segmentation_metrics(np.full((2, 2), -1), np.zeros((2, 2), int), C)
    with pytest.raises(DataError, match="neither a label map"):
        segmentation_metrics(np.zeros((3, 3), int), np.zeros((2, 2), int), C)
    with pytest.raises(DataError, match="no pixels"):
        segmentation_metrics(np.zeros((2, 2), int), np.full((2, 2), 255), C)
    with pytest.raises(ConfigError, match="is a real class"):
        SegmentationMetrics(C, ignore_index=3)


def test_benchmark_script_agrees_with_torchmetrics():
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "segmentation.py"
    spec = importlib.util.spec_from_file_location("segmentation_benchmark", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.main(["--quick"])
    assert (
        result["miou_ours"] == pytest.approx(result["miou_torchmetrics"], abs=1e-6) and result["speedup"] > 0
    )
