"""Per-frame mAP and calibrated mAP against scikit-learn and against their formulas written as loops."""

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from papernotes.errors import DataError
from papernotes.metrics.online_detection import (
    calibrated_average_precision,
    calibrated_map,
    frame_average_precision,
    per_class_table,
    per_frame_map,
)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_frame_ap_matches_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    positives = rng.random(300) < 0.2
    scores = np.round(rng.random(300) + 0.3 * positives, 1)  # rounding makes many ties
    assert frame_average_precision(scores, positives) == pytest.approx(
        average_precision_score(positives, scores)
    )


def test_thumos_protocol_drops_ambiguous_frames_background_and_empty_classes():
    rng = np.random.default_rng(0)
    N, C1, ambiguous = 400, 6, 5  # background 0, actions 1-4, ambiguous 5
    labels = rng.integers(0, C1, N)
    labels[labels == 3] = 0  # class 3 has no positives: skipped
    scores = rng.random((N, C1)) + 0.5 * np.eye(C1)[labels]
    result = per_frame_map(scores, np.eye(C1)[labels], ignore_index=ambiguous)
    keep = labels != ambiguous
    expected = {c: average_precision_score(labels[keep] == c, scores[keep, c]) for c in (1, 2, 4)}
    assert result["per_class_ap"] == pytest.approx(expected)
    assert result["mAP"] == pytest.approx(np.mean(list(expected.values())))
    assert result["skipped_classes"] == [3] and result["num_frames"] == keep.sum()
    named = per_frame_map(scores, labels, ignore_index=ambiguous, class_names=list("BabcdX"))
    assert per_class_table(named["per_class_ap"])[0] == ["a", pytest.approx(100 * expected[1])]


def _calibrated_loop(scores, positives):
    order = sorted(range(len(scores)), key=lambda i: -scores[i])  # Python's sort is stable too
    n_pos = sum(positives)
    w = (len(positives) - n_pos) / n_pos
    tp = fp = 0
    total = 0.0
    for i in order:
        if positives[i]:
            tp += 1
            total += w * tp / (w * tp + fp)
        else:
            fp += 1
    return total / n_pos


def test_calibrated_ap_follows_its_formula_and_ignores_class_imbalance():
    rng = np.random.default_rng(3)
    positives = rng.random(200) < 0.1
    scores = rng.random(200) + 0.4 * positives
    cap = calibrated_average_precision(scores, positives)
    assert cap == pytest.approx(_calibrated_loop(list(scores), list(positives)))
    # duplicating every negative doubles w and FP alike: cAP is unchanged, plain AP drops
    neg = ~positives
    more_scores, more_pos = np.r_[scores, scores[neg]], np.r_[positives, positives[neg]]
    assert calibrated_average_precision(more_scores, more_pos) == pytest.approx(cap, abs=0.02)
    assert frame_average_precision(more_scores, more_pos) < frame_average_precision(scores, positives)
    labels = np.where(positives, 1, 0)
    both = np.stack([1 - scores, scores], axis=1)
    assert calibrated_map(both, labels)["mcAP"] == pytest.approx(cap)


def test_bad_inputs_are_clear_errors():
    with pytest.raises(DataError, match="frame 1 are not finite"):
        per_frame_map(np.array([[0.1, 0.9], [np.nan, 0.2]]), [0, 1])
    with pytest.raises(DataError, match="do not match"):
        per_frame_map(np.zeros((3, 4)), np.zeros((3, 5)))
    with pytest.raises(DataError, match="no class has a positive frame"):
        per_frame_map(np.zeros((3, 3)), [0, 0, 0])
    with pytest.raises(DataError, match="N > 0"):
        per_frame_map(np.zeros((0, 3)), np.zeros(0))
