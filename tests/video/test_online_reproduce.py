"""The online-detection experiment end to end at its tiny size."""

from papernotes.core.experiments import ExperimentContext
from papernotes.video.experiments.online_detection import MODEL_SETTINGS, run_online_detection


def test_online_detection_reports_every_detector_and_streams_exactly(tmp_path):
    ctx = ExperimentContext(size="tiny", out_dir=tmp_path, cache_dir=tmp_path / "cache", seed=0)
    result = run_online_detection(ctx)
    runs = {r["model"]: r for r in result.metrics["runs"]}
    assert list(runs) == list(MODEL_SETTINGS)
    for row in runs.values():
        assert 0 <= row["mAP"] <= 1 and 0 <= row["mcAP"] <= 1
        assert row["stream_max_abs_diff"] < 1e-4 and row["stream_rtf"] > 0 and row["epoch_s"] > 0
    assert any(n.startswith("goal OadTR trains >= 2x faster") for n in result.notes)
    assert (tmp_path / "timeline.png").stat().st_size > 1000
    assert len(result.tables[0].rows) == 5
