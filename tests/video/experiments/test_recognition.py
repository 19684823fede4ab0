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
    result = run_video_recognition(ctx)
    names = VIDEO_SIZES["tiny"]["models"]
    runs = {r["model"]: r for r in result.metrics["runs"]}
    assert list(runs) == names and len(scored) == len(names)
    assert runs["tsm"]["flops"] == runs["tsn"]["flops"] and runs["tsm"]["params"] == runs["tsn"]["params"]
    assert runs["two-stream"]["params"] > runs["tsn"]["params"]
    # every accuracy is sklearn's on the test predictions the run scored; order-sensitive classes per the
    # benchmark's classes.json
    (data,) = (ctx.cache_dir / "video").glob("synthetic-*")
    classes = json.loads((data / "classes.json").read_text())["classes"]
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
        (run_dir,) = (ctx.cache_dir / "video").glob(f"recognition-*/{name}")
        cached, _ = load_recognizer(run_dir)
        assert row["params"] == sum(p.numel() for p in cached.parameters()) and row["skipped"] == 0
    # the table shows the same numbers
    for table_row, r in zip(result.tables[0].rows, result.metrics["runs"]):
        assert table_row == [
            r["model"],
            100 * r["top1"],
            100 * r["order_top1"],
            r["order_top1_vs_tsn"],
            100 * r["appearance_top1"],
            r["params"] / 1e6,
            r["flops"] / 1e9,
            r["latency_ms"],
            r["train_s"],
        ]
    overhead = 100 * (result.metrics["tsm_latency_vs_tsn"] - 1)
    assert any(n.startswith("goal TSM latency overhead") and f"{overhead:+.1f} %" in n for n in result.notes)
    assert any(n.startswith("goal TSM FLOPs = TSN FLOPs") and "(met)" in n for n in result.notes)
    for figure in result.figures:
        assert (ctx.out_dir / figure).stat().st_size > 1000
    # the second run loads the trained models from the cache: same predictions
    again = run_video_recognition(ctx)
    assert [r["top1"] for r in again.metrics["runs"]] == [r["top1"] for r in result.metrics["runs"]]
    assert all(torch.equal(a["logits"], b["logits"]) for a, b in zip(scored[len(names) :], scored))
    assert torch.tensor([r["train_s"] for r in again.metrics["runs"]]).equal(
        torch.tensor([r["train_s"] for r in result.metrics["runs"]])
    )
    assert main(["reproduce", "--list"]) == 0
    assert "video-recognition" in capsys.readouterr().out
