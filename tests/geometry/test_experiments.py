"""The calibration experiment end to end at its tiny size (tables, goals, pose figure), and its goals'
verdicts on hand-made rows."""

from pathlib import Path

import pytest

from papernotes.core.experiments import VERDICTS, ExperimentContext
from papernotes.geometry.experiments import GOALS, calibration_goals, run_calibration


def rows(**worst):
    """A reference camera and one with a baseline; ``worst`` overrides the second camera's numbers."""
    good = {"focal_pct": 0.1, "pp_px": 0.5, "rotation_deg": 0.05, "translation_mm_per_m": 0.5, "rms_px": 0.14}
    reference = {**good, "baseline_m": 0.0, "rotation_deg": 0.0, "translation_mm_per_m": 0.0}
    return [reference, {**good, "baseline_m": 0.3, **worst}]


def by_claim(goals, text):
    (goal,) = [g for g in goals if text in g.claim]
    return goal


def test_goals_are_met_missed_or_not_judged_from_the_numbers():
    goals = calibration_goals(rows(), rows(), skipped_views=3)
    assert len(goals) == 2 * len(GOALS) + 1 and all(g.method == "Multi-camera calibration" for g in goals)
    assert {g.verdict for g in goals} == {"met"}
    # the worst camera decides: one camera over the bar misses the goal, and the goal shows its number
    goals = calibration_goals(rows(translation_mm_per_m=6.2), rows(), skipped_views=3)
    missed = by_claim(goals, "four-camera rig: translation")
    assert missed.verdict == "missed" and missed.measured == 6.2 and missed.target == "< 1 mm/m"
    assert by_claim(goals, "stereo pair: translation").verdict == "met"
    # the reference camera has no baseline: its zero rotation and translation are not evidence
    assert by_claim(calibration_goals(rows(), rows(), 3), "rig: rotation").measured == 0.05
    # a missing measurement is not judged, never met
    goals = calibration_goals(rows(rms_px=float("nan")), rows(pp_px=None), skipped_views=0)
    assert by_claim(goals, "rig: RMS").verdict == "not judged"
    assert by_claim(goals, "pair: principal point").verdict == "not judged"
    assert by_claim(goals, "never stops the run").verdict == "not judged"
    assert by_claim(calibration_goals([], [], 1), "rig: focal").verdict == "not judged"


def test_calibration_experiment_reports_every_camera_and_the_goals(tmp_path: Path):
    out = tmp_path / "calibration"
    result = run_calibration(ExperimentContext(size="tiny", out_dir=out, cache_dir=tmp_path / "cache"))
    assert [len(t.rows) for t in result.tables] == [4, 2, 4]
    rig = result.metrics["rig"]
    # even the tiny run recovers the rig roughly (the goals are judged at the quick size)
    assert all(r["focal_pct"] < 1 and r["rotation_deg"] < 0.5 and r["rms_px"] < 0.3 for r in rig)
    assert rig[0]["rotation_deg"] == 0 and rig[0]["baseline_m"] == 0  # camera 0 is the reference
    # the board-less mosaic frame and the occluded view are skipped with their reasons, not fatal
    assert result.metrics["excluded_views"] >= 5
    assert all(why for why in result.metrics["rendered_excluded"].values())
    # every goal's verdict follows from its measured number
    assert len(result.goals) == 2 * len(GOALS) + 1 and all(g.verdict in VERDICTS for g in result.goals)
    worst_focal = max(r["focal_pct"] for r in rig)
    assert by_claim(result.goals, "rig: focal").measured == pytest.approx(worst_focal)
    assert by_claim(result.goals, "never stops the run").verdict == "met"
    assert (out / result.figures[0]).stat().st_size > 10_000
