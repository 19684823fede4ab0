"""`llm-post-training` on the real base: its goals are computed from the stages (met, missed, a missing stage,
zero against zero), and the tiny size runs end to end on SmolLM2-135M-Instruct, then reuses its cache."""

import math

from papernotes.core.experiments import ExperimentContext
from papernotes.llm.experiments import post_training, post_training_report


def _stage(name: str, accuracy: float, seen: float, unseen: float, preference: float, ppl: float) -> dict:
    return {
        "stage": name,
        "accuracy": accuracy,
        "seen_accuracy": seen,
        "unseen_accuracy": unseen,
        "preference_accuracy": preference,
        "perplexity": ppl,
    }


def _verdicts(rows):
    return [g.verdict for g in post_training_report.post_training_goals(rows)]


def test_goals_are_met_when_each_stage_does_its_job():
    rows = [
        _stage("base", 0.05, 0.05, 0.05, 0.50, 10.0),
        _stage("sft", 0.50, 0.52, 0.45, 0.55, 11.0),
        _stage("rs-sft", 0.55, 0.56, 0.50, 0.55, 11.5),
        _stage("dpo", 0.54, 0.55, 0.50, 0.70, 11.8),
    ]
    goals = post_training_report.post_training_goals(rows)
    assert [g.verdict for g in goals] == ["met"] * 5
    assert math.isclose(goals[0].measured, 45.0) and math.isclose(goals[2].measured, 15.0)
    assert math.isclose(goals[3].measured, -1.0) and math.isclose(goals[4].measured, 1.18)
    assert {g.method for g in goals} == {"Llama 3 post-training"}


def test_goals_are_missed_below_the_bars():
    rows = [
        _stage("base", 0.05, 0.05, 0.05, 0.50, 10.0),
        _stage("sft", 0.30, 0.40, 0.20, 0.55, 13.0),
        _stage("rs-sft", 0.40, 0.45, 0.30, 0.60, 13.0),
        _stage("dpo", 0.35, 0.40, 0.25, 0.65, 13.0),
    ]
    assert _verdicts(rows) == ["missed", "missed", "missed", "missed", "missed"]


def test_goals_without_a_stage_or_with_zero_against_zero_are_not_judged():
    rows = [_stage("base", 0.0, 0.0, 0.0, 0.5, 10.0), _stage("sft", 0.0, 0.0, 0.0, 0.5, 10.0)]
    # no DPO stage: its two goals wait; SFT scored 0 on seen and held-out phrasings: no evidence either way
    assert _verdicts(rows) == ["missed", "not judged", "not judged", "not judged", "met"]
    rows.append(_stage("rs-sft", 0.1, 0.1, 0.1, float("nan"), 10.0))  # no held-out pairs
    rows.append(_stage("dpo", 0.1, 0.1, 0.1, float("nan"), 10.0))
    assert _verdicts(rows)[2:] == ["not judged", "met", "met"]
    assert _verdicts([]) == ["not judged"] * 5


def test_tiny_experiment_runs_on_the_base_and_reuses_its_cache(tmp_path):
    ctx = ExperimentContext("tiny", tmp_path / "out", tmp_path / "cache")
    result = post_training.run_post_training(ctx)
    stages = [r["stage"] for r in result.metrics["stages"]]
    assert stages[:3] == ["base", "sft", "rs-sft"]
    assert all(r["perplexity"] > 1 for r in result.metrics["stages"])
    assert set(result.metrics["per_task"]) == set(stages)
    assert len(result.goals) == 5 and (ctx.out_dir / "post_training.png").is_file()
    replies = result.metrics["general_replies"]
    assert len(replies["prompts"]) == 1 and set(stages) <= set(replies)
    if "dpo" in stages:  # the final model is an HF directory with the base's ChatML template
        model_dir = ctx.cache_dir / "llm" / "post_training" / "tiny" / "model"
        assert "<|im_start|>" in (model_dir / "tokenizer_config.json").read_text()
    again = post_training.run_post_training(ExperimentContext("tiny", tmp_path / "out2", tmp_path / "cache"))
    assert again.trained == [] and again.metrics["stages"] == result.metrics["stages"]
