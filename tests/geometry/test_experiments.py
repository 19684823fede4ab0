"""The calibration experiment end to end at its tiny size: tables, goals, pose figure."""

from pathlib import Path

from papernotes.core.experiments import ExperimentContext
from papernotes.geometry.experiments import GOALS, run_calibration


def test_calibration_experiment_reports_every_camera_and_the_goals(tmp_path: Path):
    out = tmp_path / "calibration"
    result = run_calibration(ExperimentContext(size="tiny", out_dir=out, cache_dir=tmp_path / "cache"))
    assert [len(t.rows) for t in result.tables] == [4, 2, 4]
    rig = result.metrics["rig"]
    # even the tiny run recovers the rig roughly (the goals are judged at the quick size)
    assert all(r["focal_pct"] < 1 and r["rotation_deg"] < 0.5 and r["rms_px"] < 0.3 for r in rig)
    assert rig[0]["rotation_deg"] == 0 and rig[0]["baseline_m"] == 0  # camera 0 is the reference
    # the board-less mosaic frame and the occluded view are skipped, not fatal
    assert result.metrics["excluded_views"] >= 5
    assert sum(line.startswith("goal rig") for line in result.notes) == len(GOALS)
    assert (out / result.figures[0]).stat().st_size > 10_000
