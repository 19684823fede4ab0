"""Classification metrics against scikit-learn on random data, and their refusals."""

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from papernotes.errors import ConfigError, DataError
from papernotes.metrics.classification import (
    classification_summary,
    confusion_matrix,
    mean_class_accuracy,
    plot_confusion,
    topk_accuracy,
)

C = 7


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(200, C)).astype(np.float32)
    labels = rng.integers(0, C, 200)
    scores[np.arange(200), labels] += rng.normal(1.0, 1.0, 200).astype(np.float32)  # better than chance
    return scores, labels


@pytest.mark.parametrize("k", [1, 2, 5])
def test_topk_accuracy_matches_sklearn(data, k):
    scores, labels = data
    expected = skm.top_k_accuracy_score(labels, scores, k=k, labels=range(C))
    assert topk_accuracy(torch.from_numpy(scores), torch.from_numpy(labels), k) == pytest.approx(expected)


def test_confusion_and_mean_class_accuracy_match_sklearn(data):
    scores, labels = data
    preds = scores.argmax(1)
    confusion = confusion_matrix(preds, labels, C)
    assert (
        confusion.sum(1) > 0
    ).all()  # balanced accuracy equals mean class accuracy only if all are present
    np.testing.assert_array_equal(confusion.numpy(), skm.confusion_matrix(labels, preds, labels=range(C)))
    assert mean_class_accuracy(confusion) == pytest.approx(skm.balanced_accuracy_score(labels, preds))
    summary = classification_summary(scores, labels, C)
    assert summary["top1"] == pytest.approx(skm.accuracy_score(labels, preds))
    assert summary["num_samples"] == 200 and summary["confusion"] == confusion.tolist()


def test_absent_classes_are_left_out_of_the_mean():
    confusion = torch.tensor([[3, 1, 0], [0, 0, 0], [1, 0, 1]])  # class 1 has no samples
    assert mean_class_accuracy(confusion) == pytest.approx((3 / 4 + 1 / 2) / 2)
    assert "top5" not in classification_summary(torch.eye(3), [0, 1, 2], 3)


def test_bad_inputs_are_refused():
    with pytest.raises(ConfigError, match="k=4, C=3"):
        topk_accuracy(torch.zeros(2, 3), [0, 1], k=4)
    with pytest.raises(DataError, match="label 3 is outside 0..2"):
        topk_accuracy(torch.zeros(2, 3), [0, 3])
    with pytest.raises(DataError, match="prediction -1"):
        confusion_matrix([0, -1], [0, 1], 3)
    with pytest.raises(DataError, match="no samples"):
        topk_accuracy(torch.zeros(0, 3), torch.zeros(0))


def test_confusion_figure_is_written(tmp_path):
    path = plot_confusion(torch.tensor([[2, 1], [0, 3]]), ["left", "right"], tmp_path / "c.png", title="t")
    assert path.read_bytes()[:4] == b"\x89PNG" and not list(tmp_path.glob(".*"))
    with pytest.raises(DataError, match="2 class names"):
        plot_confusion(torch.zeros(3, 3), ["a", "b"], tmp_path / "d.png")
