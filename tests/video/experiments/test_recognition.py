"""The video-recognition experiment end to end at its tiny size, and its registration in the CLI."""

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, balanced_accuracy_score, top_k_accuracy_score

from papernotes.cli import main
from papernotes.core.experiments import ExperimentContext
from papernotes.video.experiments import recognition
from papernotes.video.experiments.recognition import VIDEO_SIZES, run_video_recognition
from papernotes.video.models.tsm import TemporalShift
from papernotes.video.train import load_recognizer


def test_video_recognition_reports_every_model_and_reuses_its_cache(tmp_path, capsys, monkeypatch):
    ctx = ExperimentContext(size="tiny", out_dir=tmp_path / "report", cache_dir=tmp_path / "cache", seed=0)
    ctx.out_dir.mkdir()
    scored = []  # what evaluate() returned for each model, in order
    real_evaluate = recognition.evaluate

    def spy_evaluate(*args, **kwargs):
        scored.append(real_evaluate(*args, **kwargs))
        return scored[-1]

    monkeypatch.setattr(recognition, "evaluate", spy_evaluate)
    timed = []  # (tsn, tsm, frame_size, rounds) of each interleaved latency timing
    real_latency = recognition._interleaved_latency

    def spy_latency(a, b, frame_size, rounds, **kwargs):
        timed.append((a, b, frame_size, rounds))
        return real_latency(a, b, frame_size, rounds, **kwargs)

    monkeypatch.setattr(recognition, "_interleaved_latency", spy_latency)
    result = run_video_recognition(ctx)
    names = VIDEO_SIZES["tiny"]["models"]
    runs = {r["model"]: r for r in result.metrics["runs"]}
    assert list(runs) == names and len(scored) == len(names)
    assert runs["tsm"]["flops"] == runs["tsn"]["flops"] and runs["tsm"]["params"] == runs["tsn"]["params"]
    assert runs["two-stream"]["params"] > runs["tsn"]["params"]
    # every accuracy is sklearn's on the test predictions the run scored; order-sensitive classes per the
    # benchmark's classes.json
    (data,) = (ctx.cache_dir / "video").glob("synthetic-*")
    table = json.loads((data / "classes.json").read_text())
    classes, pairs = table["classes"], table["pairs"]
    order_sensitive = np.array([c["order_sensitive"] for c in classes])
    for name, out in zip(names, scored):
        row = runs[name]
        labels, logits = out["labels"].numpy(), out["logits"].numpy()
        predicted = logits.argmax(1)
        chosen = order_sensitive[labels]
        assert chosen.any() and not chosen.all()
        assert row["top1"] == pytest.approx(accuracy_score(labels, predicted))
        assert row["top5"] == pytest.approx(
            top_k_accuracy_score(labels, logits, k=5, labels=range(len(classes)))
        )
        assert row["mean_class_accuracy"] == pytest.approx(balanced_accuracy_score(labels, predicted))
        assert row["order_top1"] == pytest.approx(accuracy_score(labels[chosen], predicted[chosen]))
        assert row["appearance_top1"] == pytest.approx(accuracy_score(labels[~chosen], predicted[~chosen]))
        # pair accuracy: sklearn's accuracy of the argmax over each pair's two logits, on that pair's clips
        for (a, b), measured in zip(pairs, row["pairs"].values(), strict=True):
            mine = np.isin(labels, (a, b))
            picked = np.where(logits[mine, a] > logits[mine, b], a, b)
            assert measured == pytest.approx(accuracy_score(labels[mine], picked))
        assert row["pair_accuracy"] == pytest.approx(np.mean(list(row["pairs"].values())))
        (run_dir,) = (ctx.cache_dir / "video").glob(f"recognition-*/{name}")
        cached, _ = load_recognizer(run_dir)
        assert row["params"] == sum(p.numel() for p in cached.parameters()) and row["skipped"] == 0
    # the tables show the same numbers
    for table_row, r in zip(result.tables[0].rows, result.metrics["runs"], strict=True):
        assert table_row == [
            r["model"],
            100 * r["top1"],
            100 * r["pair_accuracy"],
            100 * r["appearance_top1"],
            r["params"] / 1e6,
            r["flops"] / 1e6,
            r["flops"] / runs["tsn"]["flops"],
            r["latency_ms"],
            r["train_s"],
        ]
    for table_row, r in zip(result.tables[1].rows, result.metrics["runs"], strict=True):
        assert table_row == [r["model"], *(100 * v for v in r["pairs"].values()), 100 * r["pair_accuracy"]]
    # goals are judged from these rows, each on a card of the experiment
    goals = {(g.method, g.claim): g for g in result.goals}
    flops = goals[("TSM", "TSM adds zero FLOPs to TSN")]
    assert flops.verdict == "met" and flops.measured == 1.0
    latency = goals[("TSM", "TSM's latency overhead over TSN is small")]
    assert latency.measured == pytest.approx(100 * (result.metrics["tsm_latency_vs_tsn"] - 1))
    # two timings: the trained models at the training size (reported), then the probe (judged): a fresh TSN
    # and a TSM with the same weights, at the probe's size, segments and backbone
    size, probe = VIDEO_SIZES["tiny"], VIDEO_SIZES["tiny"]["latency_probe"]
    (trained_tsn, trained_tsm, trained_px, trained_rounds), (tsn, tsm, px, rounds) = timed
    assert trained_px == size["frame_size"] and trained_rounds == 10 * size["latency_repeats"]
    for model, name in ((trained_tsn, "tsn"), (trained_tsm, "tsm")):  # the trained models, as cached
        (run_dir,) = (ctx.cache_dir / "video").glob(f"recognition-*/{name}")
        cached = load_recognizer(run_dir)[0].state_dict()
        assert all(torch.equal(v, cached[k]) for k, v in model.state_dict().items())
    assert (px, rounds, tsn.num_segments, tsm.num_segments) == (
        probe["frame_size"],
        probe["rounds"],
        probe["num_segments"],
        probe["num_segments"],
    )
    shifts = [any(isinstance(m, TemporalShift) for m in model.modules()) for model in (tsn, tsm)]
    assert shifts == [False, True]  # TSN against TSM, not a model against itself
    tsm_state = tsm.state_dict()
    assert tsn.state_dict().keys() == tsm_state.keys()
    assert all(torch.equal(v, tsm_state[k]) for k, v in tsn.state_dict().items())
    train_size = result.metrics["tsm_latency_vs_tsn_train_size"]
    assert f"at {size['frame_size']} px: {100 * (train_size - 1):+.1f} %" in latency.detail
    blind = goals[("TSN", "TSN's average consensus is blind to temporal order: pair accuracy at chance")]
    assert blind.measured == pytest.approx(100 * runs["tsn"]["pair_accuracy"])
    assert {g.method for g in result.goals} == {"TSN", "TSM", "Two-Stream"}
    assert result.trained == names and result.reused == []
    for figure in result.figures:
        assert (ctx.out_dir / figure).stat().st_size > 1000
    # the second run loads the trained models from the cache: same predictions, same recorded times; the
    # latency probe is not part of the trained models' recipe
    monkeypatch.setitem(VIDEO_SIZES["tiny"], "latency_probe", {**probe, "rounds": 1})
    again = run_video_recognition(ctx)
    assert again.trained == [] and again.reused == ["benchmark data and flow", *names]
    assert [r["top1"] for r in again.metrics["runs"]] == [r["top1"] for r in result.metrics["runs"]]
    assert all(torch.equal(a["logits"], b["logits"]) for a, b in zip(scored[len(names) :], scored))
    assert torch.tensor([r["train_s"] for r in again.metrics["runs"]]).equal(
        torch.tensor([r["train_s"] for r in result.metrics["runs"]])
    )
    assert main(["reproduce", "--list"]) == 0
    assert "video-recognition" in capsys.readouterr().out
