"""Render a reproduce run's ``results.json`` and figures as ``index.html`` and a text table.

The HTML is static and self-contained apart from the PNG figures beside it, so a
report folder can be copied or served as it is.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

CSS = """
body { font-family: system-ui, sans-serif; max-width: 70rem; margin: 2rem auto; padding: 0 1rem; }
table { border-collapse: collapse; margin: .5rem 0 1rem; }
th, td { border: 1px solid #ccc; padding: .25rem .6rem; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
.failed { color: #b00; } .ok { color: #070; }
img { max-width: 100%; border: 1px solid #eee; margin: .5rem 0; }
pre { background: #f7f7f7; padding: .5rem; overflow-x: auto; }
"""


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


def summary(results: dict[str, Any]) -> str:
    """The summary that ``papernotes reproduce`` prints: a line per experiment, then its tables."""
    rows = [
        [name, e["field"], e["status"], e["wall_s"], e.get("error", "")[:60]]
        for name, e in results["experiments"].items()
    ]
    parts = [text_table(["experiment", "field", "status", "seconds", "error"], rows)]
    for name, e in results["experiments"].items():
        for t in e.get("tables", []):
            parts.append(f"\n{name}: {t['title']}\n{text_table(t['columns'], t['rows'])}")
    return "\n".join(parts)


def _html_table(columns: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(format_value(v))}</td>" for v in row) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def render_html(results: dict[str, Any]) -> str:
    """The report page for one run."""
    env = results.get("environment", {})
    out = [
        "<!doctype html><html><head><meta charset='utf-8'><title>papernotes reproduce</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>papernotes reproduce — {html.escape(results['created'])}</h1>",
        f"<p>size: <b>{html.escape(results['size'])}</b>; "
        + ", ".join(f"{html.escape(k)} {html.escape(str(v))}" for k, v in env.items())
        + "</p>",
    ]
    rows = [[n, e["field"], e["status"], e["wall_s"]] for n, e in results["experiments"].items()]
    out.append(_html_table(["experiment", "field", "status", "seconds"], rows))
    for name, e in results["experiments"].items():
        out.append(
            f"<h2 id='{html.escape(name)}'>{html.escape(name)}</h2><p>{html.escape(e['description'])}</p>"
        )
        if e["status"] != "ok":
            out.append(f"<p class='failed'>failed: {html.escape(e.get('error', ''))}</p>")
            out.append(f"<pre>{html.escape(e.get('traceback', ''))}</pre>")
            continue
        for t in e.get("tables", []):
            out.append(f"<h3>{html.escape(t['title'])}</h3>" + _html_table(t["columns"], t["rows"]))
        for fig in e.get("figures", []):
            out.append(f"<img src='{html.escape(fig)}' alt='{html.escape(fig)}'>")
        for note in e.get("notes", []):
            out.append(f"<p><i>{html.escape(note)}</i></p>")
        metrics = json.dumps(e.get("metrics", {}), indent=2)
        out.append(f"<details><summary>all metrics</summary><pre>{html.escape(metrics)}</pre></details>")
    out.append("</body></html>")
    return "\n".join(out)


def write_report(run_dir: Path, results: dict[str, Any]) -> Path:
    """Write ``index.html`` into ``run_dir`` and return its path."""
    path = Path(run_dir) / "index.html"
    path.write_text(render_html(results))
    return path
