"""The online-detection experiment end to end at its tiny size."""

import dataclasses

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from papernotes.core.experiments import ExperimentContext
from papernotes.video.experiments import online_detection
from papernotes.video.experiments.online_detection import MODEL_SETTINGS, run_online_detection
from papernotes.video.online.data.synthetic_streams import PRESETS as STREAM_PRESETS
from papernotes.video.online.data.synthetic_streams import generate_streams


def sklearn_maps(scores: np.ndarray, targets: np.ndarray, ignore: int) -> tuple[dict[str, float], float]:
    """Per-class frame AP and the mean calibrated AP by scikit-learn, THUMOS protocol (ambiguous frames
    dropped, background and the ambiguous column left out, classes without positives skipped).

    Calibrated AP is AP with each positive weighted by w = #negatives / #positives: the weighted precision
    is w·TP / (w·TP + FP), the calibrated precision, and recall is unchanged (scores have no ties here).
    """
    labels = targets.argmax(1)
    keep = labels != ignore
    scores, labels = scores[keep], labels[keep]
    ap, cap = {}, []
    for c in range(1, scores.shape[1]):
        positives = labels == c
        if c == ignore or not positives.any():
            continue
        assert len(np.unique(scores[:, c])) == len(scores)  # no ties (see above)
        ap[str(c)] = average_precision_score(positives, scores[:, c])
        if not positives.all():
            w = (~positives).sum() / positives.sum()
            cap.append(
                average_precision_score(positives, scores[:, c], sample_weight=np.where(positives, w, 1.0))
            )
    return ap, float(np.mean(cap))


def test_online_detection_reports_every_detector_and_streams_exactly(tmp_path, monkeypatch):
    ctx = ExperimentContext(size="tiny", out_dir=tmp_path, cache_dir=tmp_path / "cache", seed=0)
    scored = []  # (scores, targets) of the test sessions for each detector, in order
    real_score_sessions = online_detection.score_sessions

    def spy_score_sessions(*args, **kwargs):
        scored.append(real_score_sessions(*args, **kwargs))
        return scored[-1]

    monkeypatch.setattr(online_detection, "score_sessions", spy_score_sessions)
    result = run_online_detection(ctx)
    runs = {r["model"]: r for r in result.metrics["runs"]}
    # every detector once, then OadTR again with int8 weights
    assert list(runs) == list(MODEL_SETTINGS) and len(scored) == len(MODEL_SETTINGS) + 1
    settings = result.metrics["settings"]
    train, _, info = generate_streams(dataclasses.replace(STREAM_PRESETS["default"], **settings["streams"]))
    frames_per_step = settings["batch_size"] * settings["chunk"]
    int8_ap, _ = sklearn_maps(*scored[-1], info.ignore_index)
    assert runs["oadtr"]["int8_mAP"] == pytest.approx(np.mean(list(int8_ap.values())))
    for row, (scores, targets) in zip(runs.values(), scored):
        ap, mcap = sklearn_maps(scores, targets, info.ignore_index)
        assert row["per_class_ap"] == pytest.approx(ap)
        assert row["mAP"] == pytest.approx(np.mean(list(ap.values())))
        assert row["mcAP"] == pytest.approx(mcap)
        assert row["stream_max_abs_diff"] < 1e-4
        # an epoch is one pass over the training frames at the measured time per step
        epochs = sum(len(s.features) for s in train) / frames_per_step
        assert row["epoch_s"] == pytest.approx(row["step_s"] * epochs)
    for table_row, r in zip(result.tables[0].rows, runs.values(), strict=True):
        assert table_row == [
            r["model"],
            100 * r["mAP"],
            100 * r["mcAP"],
            r["params"] / 1e3,
            r["epoch_s"],
            r["stream_rtf"],
            r["stream_max_abs_diff"],
        ]
    # the goals are judged from these rows; every one belongs to a card of the experiment
    goals = {g.claim: g for g in result.goals}
    speed = goals["OadTR trains faster per epoch than the recurrent TRN"]
    assert speed.measured == pytest.approx(runs["trn"]["epoch_s"] / runs["oadtr"]["epoch_s"])
    assert speed.verdict == ("met" if speed.measured >= 2 else "missed")
    for name in ("trn", "idn", "oadtr"):
        beat = goals[f"history helps: {name} beats the per-frame MLP"]
        assert beat.measured == pytest.approx(100 * (runs[name]["mAP"] - runs["mlp"]["mAP"]))
        assert goals[f"{name} streams exactly its offline scores"].verdict == "met"
    # the tiny size streams no paper-size model: that goal is not judged, never met
    assert goals["OadTR streams faster than real time at the paper's dimensions"].verdict == "not judged"
    assert {g.method for g in result.goals} == {"TRN (online detection)", "IDN", "OadTR"}
    assert result.trained == list(MODEL_SETTINGS) and result.reused == []
    assert (tmp_path / "timeline.png").stat().st_size > 1000
