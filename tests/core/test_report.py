from pathlib import Path

import pytest

from papernotes.core.experiments import Experiment, ExperimentResult, Method, Table, run_experiments, select
from papernotes.core.report import summary, text_table
from papernotes.errors import ConfigError


def _ok(ctx):
    (ctx.out_dir / "fig.png").write_bytes(b"png")
    table = Table("t", ["a", "b"], [[1, 0.123456]])
    return ExperimentResult(metrics={"x": 1.5}, tables=[table], figures=["fig.png"])


def _boom(ctx):
    raise RuntimeError("broken method")


EXPS = [Experiment("good", "llm", "works", _ok), Experiment("bad", "video", "fails", _boom)]


def test_run_writes_results_and_html_and_keeps_going_after_a_failure(tmp_path):
    run_dir, results = run_experiments(EXPS, tmp_path, cache_dir=tmp_path / "cache")
    assert results["experiments"]["good"]["status"] == "ok"
    assert results["experiments"]["good"]["metrics"] == {"x": 1.5}
    assert results["experiments"]["bad"]["status"] == "failed"
    assert "broken method" in results["experiments"]["bad"]["error"]
    html = (run_dir / "index.html").read_text()
    assert "<img src='good/fig.png'" in html and "broken method" in html
    assert (run_dir / "good" / "fig.png").is_file()
    assert '"x": 1.5' in (run_dir / "results.json").read_text()
    text = summary(results)
    assert "good" in text and "failed" in text and "0.1235" in text


def test_select_rejects_unknown_names_listing_the_valid_ones():
    assert [e.name for e in select(EXPS, ["bad"])] == ["bad"]
    with pytest.raises(ConfigError, match="expected some of: good, bad"):
        select(EXPS, ["nope"])
    with pytest.raises(ConfigError, match="--size"):
        run_experiments(EXPS, Path("unused"), size="huge")


def test_text_table_aligns_columns():
    lines = text_table(["name", "v"], [["a", 1.0], ["long-name", 22]]).splitlines()
    column = len("long-name  ")
    assert lines[0].index("v") == lines[2].index("1") == lines[3].index("22") == column


def test_text_table_pads_ragged_rows_and_shows_missing_values():
    lines = text_table(["method", "pos 1", "pos 2"], [["a", 0.5, 0.25], ["b", None]]).splitlines()
    assert lines[3].split() == ["b", "-"]


def test_judge_computes_the_verdict_and_never_calls_a_missing_number_met():
    from papernotes.core.experiments import judge, ratio

    assert judge("fast", 2.5, ">=", 2.0).verdict == "met"
    assert judge("fast", 1.5, ">=", 2.0).verdict == "missed"
    assert judge("small", 0.3, "<=", 0.2, unit=" px").target == "<= 0.2 px"
    for missing in (None, float("nan"), float("inf"), ratio(0.0, 0.0), ratio(None, 1.0)):
        goal = judge("fast", missing, ">=", 2.0)
        assert goal.verdict == "not judged" and goal.measured is None and goal.detail
    assert ratio(3.0, 2.0) == 1.5
    with pytest.raises(ConfigError, match="goal operator"):
        judge("x", 1.0, "=>", 1.0)


def _judged(ctx):
    from papernotes.core.experiments import judge

    return ExperimentResult(
        goals=[
            judge("speeds up decoding", 2.4, ">=", 2.0, paper="2-3x", method="Speculative decoding"),
            judge("keeps the distribution", None, ">=", 0.05, method="Speculative decoding"),
            judge("saves memory", 0.5, "<=", 0.4, method="LoRA"),
        ],
        trained=["draft"],
        reused=["target"],
    )


METHODS = (
    Method("Speculative decoding", "Large Model", "speculative_decoding.md"),
    Method("LoRA", "Large Model", "lora.md"),
)


def test_every_goal_appears_on_its_methods_card_with_the_worst_verdict(tmp_path):
    from html.parser import HTMLParser

    exps = [
        Experiment("judged", "llm", "goals", _judged, METHODS),
        Experiment("bad", "video", "fails", _boom),
    ]
    run_dir, results = run_experiments(exps, tmp_path, cache_dir=tmp_path / "cache")

    class Cards(HTMLParser):  # collect each card's text and its data attributes
        def __init__(self):
            super().__init__()
            self.cards, self.depth = [], 0

        def handle_starttag(self, tag, attrs):
            attrs = dict(attrs)
            if tag == "div" and attrs.get("class") == "card":
                self.cards.append({**attrs, "text": ""})
                self.depth = 1
            elif tag == "div" and self.depth:
                self.depth += 1

        def handle_endtag(self, tag):
            if tag == "div" and self.depth:
                self.depth -= 1

        def handle_data(self, data):
            if self.depth:
                self.cards[-1]["text"] += data

    parser = Cards()
    parser.feed((run_dir / "index.html").read_text())
    assert len(parser.cards) == 2
    spec = next(c for c in parser.cards if "Speculative decoding" in c["text"])
    lora = next(c for c in parser.cards if "LoRA" in c["text"])
    assert spec["data-verdict"] == "not judged" and lora["data-verdict"] == "missed"  # the worst goal wins
    for entry in results["experiments"].values():
        for goal in entry.get("goals", []):
            assert any(goal["claim"] in c["text"] and goal["target"] in c["text"] for c in parser.cards), goal
    text = summary(results)
    assert "goals (judged on this run's numbers)" in text and "speeds up decoding" in text
    assert "draft" in text and "target" in text  # the time table: trained and reused


def test_the_report_page_is_rewritten_after_every_experiment(tmp_path):
    seen = []

    def peek(ctx):
        (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
        seen.append((run_dir / "index.html").read_text())
        return ExperimentResult()

    run_experiments(
        [Experiment("first", "llm", "one", _judged, METHODS), Experiment("second", "llm", "two", peek)],
        tmp_path,
        cache_dir=tmp_path / "cache",
    )
    assert "speeds up decoding" in seen[0]  # the first experiment's page existed while the second ran
