from pathlib import Path

import pytest

from papernotes.core.experiments import Experiment, ExperimentResult, Table, run_experiments, select
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
