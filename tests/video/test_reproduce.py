"""The video-recognition experiment end to end at its tiny size, and its registration in the CLI."""

import torch

from papernotes.cli import main
from papernotes.core.experiments import ExperimentContext
from papernotes.video.experiments.recognition import VIDEO_SIZES, run_video_recognition


def test_video_recognition_reports_every_model_and_reuses_its_cache(tmp_path, capsys):
    ctx = ExperimentContext(size="tiny", out_dir=tmp_path / "report", cache_dir=tmp_path / "cache", seed=0)
    ctx.out_dir.mkdir()
    result = run_video_recognition(ctx)
    runs = {r["model"]: r for r in result.metrics["runs"]}
    assert list(runs) == VIDEO_SIZES["tiny"]["models"]
    assert runs["tsm"]["flops"] == runs["tsn"]["flops"] and runs["tsm"]["params"] == runs["tsn"]["params"]
    assert runs["two-stream"]["params"] > runs["tsn"]["params"]
    for row in runs.values():
        assert 0 <= row["order_top1"] <= 1 and row["latency_ms"] > 0 and row["skipped"] == 0
    assert result.metrics["tsm_latency_vs_tsn"] > 0
    assert [len(r) for r in result.tables[0].rows] == [9] * 3
    assert any(n.startswith("goal TSM FLOPs = TSN FLOPs") and "(met)" in n for n in result.notes)
    for figure in result.figures:
        assert (ctx.out_dir / figure).stat().st_size > 1000
    # the second run loads the trained models from the cache: same predictions
    again = run_video_recognition(ctx)
    assert [r["top1"] for r in again.metrics["runs"]] == [r["top1"] for r in result.metrics["runs"]]
    assert torch.tensor([r["train_s"] for r in again.metrics["runs"]]).equal(
        torch.tensor([r["train_s"] for r in result.metrics["runs"]])
    )
    assert main(["reproduce", "--list"]) == 0
    assert "video-recognition" in capsys.readouterr().out
