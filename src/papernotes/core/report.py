"""Render a reproduce run's ``results.json`` and figures as ``index.html`` and text tables.

The page opens the way the notes do: one card per method (category, the paper's claim, our number and the
verdict, a thumbnail of its main figure, links to its section and its docs page), filterable by category and
by verdict. The experiments' sections follow, then the time table. The page is self-contained apart from the
PNG figures beside it (inline CSS and script, relative links), so it works from ``file://`` and a report
folder can be copied or served as it is. It is rewritten atomically after every experiment.
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import Any

from papernotes.core.files import write_text_atomic

CSS = """
body { font-family: system-ui, sans-serif; max-width: 76rem; margin: 2rem auto; padding: 0 1rem; }
table { border-collapse: collapse; margin: .5rem 0 1rem; }
th, td { border: 1px solid #ccc; padding: .25rem .6rem; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
.failed { color: #b00; } .ok { color: #070; }
section img { max-width: 100%; border: 1px solid #eee; margin: .5rem 0; }
pre { background: #f7f7f7; padding: .5rem; overflow-x: auto; }
.filters { margin: 1rem 0; display: flex; gap: 1.5rem; flex-wrap: wrap; }
.filters button { margin-right: .3rem; padding: .2rem .6rem; border: 1px solid #bbb; border-radius: 1rem;
  background: #fff; cursor: pointer; }
.filters button.on { background: #334; color: #fff; border-color: #334; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(17rem, 1fr)); gap: 1rem; }
.card { border: 1px solid #ddd; border-radius: .5rem; padding: .8rem; display: flex; flex-direction: column;
  gap: .4rem; background: #fff; box-shadow: 0 1px 2px rgba(0,0,0,.05); }
.card h3 { margin: 0; font-size: 1.05rem; }
.card .category { font-size: .75rem; text-transform: uppercase; letter-spacing: .05em; color: #667; }
.card img { width: 100%; height: 9rem; object-fit: contain; background: #fafafa; border: 1px solid #eee; }
.card ul { margin: 0; padding-left: 1rem; font-size: .85rem; }
.card .links { font-size: .85rem; margin-top: auto; }
.badge { display: inline-block; padding: .05rem .5rem; border-radius: 1rem; font-size: .75rem; color: #fff; }
.badge.met { background: #2a7d3b; } .badge.missed { background: #b3261e; }
.badge.not-judged { background: #777; } .badge.failed { background: #000; }
"""

# Filtering needs no server: the buttons toggle the cards' display by their data attributes.
SCRIPT = """
function applyFilters() {
  const on = k => document.querySelector('.filters [data-' + k + '].on').dataset[k];
  const category = on('category'), verdict = on('verdict');
  document.querySelectorAll('.card').forEach(card => {
    const show = (category === 'all' || card.dataset.category === category) &&
                 (verdict === 'all' || card.dataset.verdict === verdict);
    card.style.display = show ? '' : 'none';
  });
}
document.querySelectorAll('.filters button').forEach(button => button.addEventListener('click', () => {
  const key = 'category' in button.dataset ? 'category' : 'verdict';
  document.querySelectorAll('.filters [data-' + key + ']').forEach(b => b.classList.remove('on'));
  button.classList.add('on');
  applyFilters();
}));
"""

GOAL_COLUMNS = ["experiment", "claim", "target", "measured", "verdict"]


def format_value(value: Any) -> str:
    """Numbers to 4 significant digits, None as "-", everything else as text."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def text_table(columns: list[str], rows: list[list[Any]]) -> str:
    """A plain fixed-width table for the terminal."""
    # ragged rows (e.g. acceptance by position, where methods draft different depths) are padded
    cells = [[str(c) for c in columns]] + [
        [format_value(v) for v in row] + [""] * (len(columns) - len(row)) for row in rows
    ]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def goal_rows(results: dict[str, Any]) -> list[list[Any]]:
    """One row per structured goal of every experiment: what ``summary`` prints under "goals"."""
    return [
        [name, g["claim"], g["target"], g["measured"], g["verdict"]]
        for name, e in results["experiments"].items()
        for g in e.get("goals", [])
    ]


def time_rows(results: dict[str, Any]) -> list[list[Any]]:
    """Per experiment: status, wall time, what was trained and what came from the cache."""
    return [
        [
            name,
            e["status"],
            e["wall_s"],
            ", ".join(e.get("trained", [])) or "-",
            ", ".join(e.get("reused", [])) or "-",
        ]
        for name, e in results["experiments"].items()
    ]


TIME_COLUMNS = ["experiment", "status", "seconds", "trained", "reused from the cache"]


def summary(results: dict[str, Any]) -> str:
    """What ``papernotes reproduce`` prints: the time table, each experiment's tables, then the goals."""
    parts = [text_table(TIME_COLUMNS, time_rows(results))]
    total = sum(e["wall_s"] for e in results["experiments"].values())
    parts.append(f"total: {total:.0f} s")
    for name, e in results["experiments"].items():
        if e["status"] != "ok":
            parts.append(f"\n{name}: FAILED: {e.get('error', '')}")
        for t in e.get("tables", []):
            parts.append(f"\n{name}: {t['title']}\n{text_table(t['columns'], t['rows'])}")
    goals = goal_rows(results)
    if goals:
        parts.append("\ngoals (judged on this run's numbers)\n" + text_table(GOAL_COLUMNS, goals))
    return "\n".join(parts)


def _html_table(columns: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(format_value(v))}</td>" for v in row) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _badge(verdict: str) -> str:
    return f"<span class='badge {verdict.replace(' ', '-')}'>{html.escape(verdict)}</span>"


def card_verdict(goals: list[dict[str, Any]], status: str) -> str:
    """A card's badge: failed, else its worst goal (missed > not judged > met); with no goal, not judged."""
    if status != "ok":
        return "failed"
    verdicts = {g["verdict"] for g in goals}
    for worst in ("missed", "not judged"):
        if worst in verdicts:
            return worst
    return "met" if verdicts else "not judged"


def cards(results: dict[str, Any], docs_href: str | None) -> list[dict[str, Any]]:
    """One card per method of every experiment that ran, with its goals and verdict."""
    out = []
    for name, e in results["experiments"].items():
        for method in e.get("methods", []):
            goals = [g for g in e.get("goals", []) if g.get("method") == method["name"]]
            out.append(
                {
                    **method,
                    "experiment": name,
                    "goals": goals,
                    "verdict": card_verdict(goals, e["status"]),
                    "docs_href": f"{docs_href}/{method['docs']}" if docs_href else None,
                }
            )
    return out


def _render_card(card: dict[str, Any]) -> str:
    goals = "".join(
        f"<li>{html.escape(g['claim'])}"
        + (f" (paper: {html.escape(g['paper'])})" if g.get("paper") else "")
        + f": target {html.escape(g['target'])}, measured <b>{html.escape(format_value(g['measured']))}</b> "
        + _badge(g["verdict"])
        + "</li>"
        for g in card["goals"]
    )
    figure = (
        f"<img src='{html.escape(card['figure'])}' alt='{html.escape(card['name'])}' loading='lazy'>"
        if card.get("figure")
        else ""
    )
    docs = f" · <a href='{html.escape(card['docs_href'])}'>docs</a>" if card.get("docs_href") else ""
    experiment = html.escape(card["experiment"])
    return (
        f"<div class='card' data-category='{html.escape(card['category'])}' "
        f"data-verdict='{html.escape(card['verdict'])}'>"
        f"<div class='category'>{html.escape(card['category'])}</div>"
        f"<h3>{html.escape(card['name'])} {_badge(card['verdict'])}</h3>"
        f"{figure}<ul>{goals or '<li>no goal measured in this run</li>'}</ul>"
        f"<div class='links'><a href='#{experiment}'>{experiment}</a>{docs}</div></div>"
    )


def _filters(all_cards: list[dict[str, Any]]) -> str:
    def buttons(key: str, values: list[str]) -> str:
        on = {"all": " class=on"}  # everything shows until a filter is chosen
        return "".join(
            f"<button data-{key}='{html.escape(v)}'{on.get(v, '')}>{html.escape(v)}</button>"
            for v in ["all", *values]
        )

    categories = sorted({c["category"] for c in all_cards})
    present = {c["verdict"] for c in all_cards}
    verdicts = [v for v in ("met", "missed", "not judged", "failed") if v in present]
    return (
        f"<div class='filters'><div>category: {buttons('category', categories)}</div>"
        f"<div>verdict: {buttons('verdict', verdicts)}</div></div>"
    )


def render_html(results: dict[str, Any], docs_href: str | None = None) -> str:
    """The report page for one run; ``docs_href`` is the docs folder relative to the page, if known."""
    env = results.get("environment", {})
    all_cards = cards(results, docs_href)
    out = [
        "<!doctype html><html><head><meta charset='utf-8'><title>papernotes reproduce</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>papernotes reproduce — {html.escape(results['created'])}</h1>",
        f"<p>size: <b>{html.escape(results['size'])}</b>; "
        + ", ".join(f"{html.escape(k)} {html.escape(str(v))}" for k, v in env.items())
        + "</p>",
        "<h2>Methods</h2>",
        _filters(all_cards),
        "<div class='cards'>" + "".join(_render_card(c) for c in all_cards) + "</div>",
    ]
    for name, e in results["experiments"].items():
        out.append(
            f"<section id='{html.escape(name)}'><h2>{html.escape(name)}</h2>"
            f"<p>{html.escape(e['description'])}</p>"
        )
        if e["status"] != "ok":
            out.append(f"<p class='failed'>failed: {html.escape(e.get('error', ''))}</p>")
            out.append(f"<pre>{html.escape(e.get('traceback', ''))}</pre></section>")
            continue
        if e.get("goals"):
            columns = ["claim", "paper", "target", "measured", "verdict"]
            out.append("<h3>goals</h3>" + _html_table(columns, [[g[c] for c in columns] for g in e["goals"]]))
        for t in e.get("tables", []):
            out.append(f"<h3>{html.escape(t['title'])}</h3>" + _html_table(t["columns"], t["rows"]))
        for fig in e.get("figures", []):
            out.append(f"<img src='{html.escape(fig)}' alt='{html.escape(fig)}'>")
        for note in e.get("notes", []):
            out.append(f"<p><i>{html.escape(note)}</i></p>")
        metrics = json.dumps(e.get("metrics", {}), indent=2)
        out.append(f"<details><summary>all metrics</summary><pre>{html.escape(metrics)}</pre></details>")
        out.append("</section>")
    out.append("<h2>Time</h2>" + _html_table(TIME_COLUMNS, time_rows(results)))
    out.append(f"<script>{SCRIPT}</script></body></html>")
    return "\n".join(out)


def docs_folder() -> Path | None:
    """The repository's docs/ folder when papernotes runs from a checkout (an editable install), else None."""
    docs = Path(__file__).resolve().parents[3] / "docs"
    return docs if docs.is_dir() else None


def write_report(run_dir: Path, results: dict[str, Any]) -> Path:
    """Write ``index.html`` into ``run_dir`` (atomically) and return its path."""
    run_dir = Path(run_dir)
    docs = docs_folder()
    docs_href = Path(os.path.relpath(docs, run_dir.resolve())).as_posix() if docs is not None else None
    return write_text_atomic(run_dir / "index.html", render_html(results, docs_href))
