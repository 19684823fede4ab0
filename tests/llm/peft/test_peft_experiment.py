"""`llm-peft` on the real base: its goals are computed from the rows (met, missed, a missing run, zero against
zero), and the tiny size runs end to end on SmolLM2-135M-Instruct, then reuses its cache."""

from papernotes.core.experiments import ExperimentContext
from papernotes.llm.experiments import peft


def _row(run: str, method: str, bleu: float, ser: float = 0.0, trainable=0.3, stored=None) -> dict:
    stored = trainable if stored is None else stored
    return {
        "run": run,
        "method": method,
        "bleu": bleu,
        "ser": ser,
        "trainable_percent": trainable,
        "stored_percent": stored,
    }


LATENCY = {"base": {"ratio_to_base": 1.0}, "lora r=8 unmerged": {"ratio_to_base": 1.1}}


def _verdicts(rows, merged=1.0):
    latency = {**LATENCY, "lora r=8 merged": {"ratio_to_base": merged}}
    return [g.verdict for g in peft.peft_goals(rows, latency)]


def test_goals_are_met_when_adapters_reach_full_fine_tuning():
    rows = [
        _row("full", "full", 50.0, trainable=100),
        _row("lora r=8", "lora", 49.0, ser=0.04),
        _row("prefix L=10", "prefix", 46.0, trainable=16.7, stored=0.09),
    ]
    goals = peft.peft_goals(rows, {**LATENCY, "lora r=8 merged": {"ratio_to_base": 1.01}})
    assert [g.verdict for g in goals] == ["met", "met", "met", "met"]
    assert goals[0].measured == 49.0 / 50.0 and goals[2].measured == 4.0
    assert [g.method for g in goals] == ["LoRA", "Prefix-Tuning", "LoRA", "LoRA"]


def test_goals_are_missed_below_the_bars_and_only_cheap_runs_count():
    rows = [
        _row("full", "full", 50.0, trainable=100),
        _row("lora r=8", "lora", 40.0, ser=0.2),
        _row("lora r=64", "lora", 50.0, ser=0.01, trainable=2.7),  # above 1 %: not a candidate for goal 1
        _row("prefix L=10", "prefix", 30.0, trainable=16.7, stored=0.09),
    ]
    goals = peft.peft_goals(rows, {**LATENCY, "lora r=8 merged": {"ratio_to_base": 1.05}})
    assert [g.verdict for g in goals] == ["missed", "missed", "met", "missed"]
    assert goals[0].measured == 0.8 and "lora r=8" in goals[0].detail
    assert goals[2].detail == "lora r=64"  # the best LoRA run by BLEU, whatever its size


def test_goals_without_a_run_or_with_zero_against_zero_are_not_judged():
    no_full = [_row("lora r=8", "lora", 40.0), _row("prefix L=10", "prefix", 30.0, stored=0.1)]
    assert peft.peft_goals(no_full, {})[0].verdict == "not judged"
    assert [g.verdict for g in peft.peft_goals(no_full, {})] == [
        "not judged",
        "not judged",
        "met",
        "not judged",
    ]
    zeros = [_row("full", "full", 0.0, trainable=100), _row("lora r=8", "lora", 0.0, ser=1.0)]
    assert _verdicts(zeros) == ["not judged", "not judged", "missed", "met"]
    assert _verdicts([_row("full", "full", 10.0, trainable=100)]) == ["not judged"] * 3 + ["met"]


def test_tiny_experiment_runs_on_the_base_and_reuses_its_cache(tmp_path):
    ctx = ExperimentContext("tiny", tmp_path / "out", tmp_path / "cache")
    result = peft.run_peft(ctx)
    runs = {r["run"]: r for r in result.metrics["runs"]}
    assert list(runs) == ["full", "lora r=2", "lora r=4", "prefix L=2"]
    assert [b["run"] for b in result.metrics["baselines"]] == ["base zero-shot", "base 1-shot"]
    assert runs["lora r=2"]["trainable_parameters"] * 2 == runs["lora r=4"]["trainable_parameters"]
    assert runs["prefix L=2"]["stored_parameters"] < runs["prefix L=2"]["trainable_parameters"]  # MLP dropped
    assert runs["full"]["optimizer_state_bytes"] > 8 * 100e6  # AdamW's two moments for all 135 M weights
    assert runs["lora r=2"]["optimizer_state_bytes"] < 8 * runs["lora r=2"]["trainable_parameters"] + 4096
    assert set(result.metrics["latency"]) == {
        "base",
        "base, a second copy",
        "lora r=2 unmerged",
        "lora r=2 merged",
    }
    assert result.metrics["latency"]["base"]["ratio_to_base"] == 1.0
    assert [g.verdict in ("met", "missed", "not judged") for g in result.goals] == [True] * 4
    assert result.trained == list(runs) and (ctx.out_dir / "peft_comparison.png").is_file()
    again = peft.run_peft(ExperimentContext("tiny", tmp_path / "out2", tmp_path / "cache"))
    assert again.trained == [] and again.metrics["runs"] == result.metrics["runs"]
