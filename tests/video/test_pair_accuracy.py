"""Pair accuracy: the order claim's metric, argmax over the two logits of a pair, on that pair's clips."""

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score

from papernotes.errors import ConfigError
from papernotes.video.train import pair_accuracy


def test_pair_accuracy_equals_sklearn_on_each_pair_restricted_to_its_two_classes():
    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(300, 6, generator=g), torch.randint(0, 6, (300,), generator=g)
    pairs = [(0, 1), (2, 3), (5, 4)]
    for (a, b), got in zip(pairs, pair_accuracy(logits, labels, pairs), strict=True):
        mine = np.isin(labels.numpy(), (a, b))
        picked = np.where(logits[mine, a] > logits[mine, b], a, b)
        assert got == pytest.approx(accuracy_score(labels.numpy()[mine], picked))
    # the other classes' logits do not matter, however large
    louder = logits.clone()
    louder[:, 2:] += 100
    assert pair_accuracy(louder, labels, [(0, 1)]) == pair_accuracy(logits, labels, [(0, 1)])


def test_an_order_blind_model_scores_one_half_on_twins_and_ties_count_as_wrong():
    # twins: the same clip forwards (class 0) and backwards (class 1) get the same logits from TSN
    logits = torch.tensor([[2.0, 1.0], [2.0, 1.0], [0.5, 3.0], [0.5, 3.0]])
    labels = torch.tensor([0, 1, 0, 1])
    assert pair_accuracy(logits, labels, [(0, 1)]) == [0.5]
    assert pair_accuracy(torch.zeros(4, 2), labels, [(0, 1)]) == [0.0]  # constant logits: no decision


def test_a_pair_without_clips_is_not_judged_and_a_bad_pair_is_refused():
    logits, labels = torch.zeros(2, 4), torch.tensor([0, 1])
    assert pair_accuracy(logits, labels, [(2, 3)]) == [None]
    with pytest.raises(ConfigError, match=r"pair \(0, 7\)"):
        pair_accuracy(logits, labels, [(0, 7)])
    with pytest.raises(ConfigError, match=r"pair \(1, 1\)"):
        pair_accuracy(logits, labels, [(1, 1)])
