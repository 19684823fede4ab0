"""The segmentation-metrics experiment, tiny size: the matrix equals scikit-learn's, every goal judged."""

from papernotes.core.experiments import ExperimentContext
from papernotes.metrics.experiments import GOAL_MPIX_PER_S, run_segmentation_metrics


def test_segmentation_experiment_agrees_with_sklearn_and_judges_every_goal(tmp_path):
    ctx = ExperimentContext("tiny", tmp_path, tmp_path / "cache")
    result = run_segmentation_metrics(ctx)
    parity, speed, share = result.goals
    assert result.metrics["identical_to_sklearn"] and parity.verdict == "met"
    rates = result.metrics["mpix_per_s"]
    assert speed.measured == rates["ours"] and speed.verdict == (
        "met" if rates["ours"] >= GOAL_MPIX_PER_S else "missed"
    )
    assert share.measured == rates["ours"] / rates["memory read"]
    assert (tmp_path / "segmentation_speed.png").stat().st_size > 1000
