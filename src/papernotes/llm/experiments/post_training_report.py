"""What ``llm-post-training`` reports: its goals (judged on the stages), tables and figure."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from papernotes.core.experiments import Goal, Table, judge, ratio

METHOD = "Llama 3 post-training"  # the method named beside every goal


def tables(
    rows: list[dict[str, Any]],
    per_task: dict[str, dict[str, float]],
    general: list[str],
    replies: dict[str, list[str]],
    samples: list[dict[str, Any]],
) -> list[Table]:
    """The stages, the accuracy per task, the forgetting check and sample conversations."""
    tasks = sorted(next(iter(per_task.values())))
    return [
        Table(
            "post-training stages on the test split (greedy, ChatML)",
            [
                "stage",
                "accuracy %",
                "seen phrasings %",
                "held-out phrasings %",
                "preference acc %",
                "mean length",
                "English ppl",
                "train s",
            ],
            [
                [
                    r["stage"],
                    _pct(r["accuracy"]),
                    _pct(r["seen_accuracy"]),
                    _pct(r["unseen_accuracy"]),
                    _pct(r["preference_accuracy"]),
                    round(r["mean_length"], 1),
                    round(r["perplexity"], 2),
                    round(r["train_s"], 1),
                ]
                for r in rows
            ],
        ),
        Table(
            "test accuracy % per task",
            ["stage", *tasks],
            [[name, *(_pct(per_task[name][t]) for t in tasks)] for name in per_task],
        ),
        Table(
            "replies to general prompts, before and after (forgetting check)",
            ["prompt", *replies],
            [[p, *(replies[s][i] for s in replies)] for i, p in enumerate(general)],
        ),
        Table(
            "sample conversations",
            ["stage", "task", "prompt", "response", "correct"],
            [[s["stage"], s["task"], s["prompt"], s["response"], s["correct"]] for s in samples],
        ),
    ]


def _pct(value: float | None) -> float | None:
    return round(100 * value, 1) if value is not None and math.isfinite(value) else None


def post_training_goals(rows: list[dict[str, Any]]) -> list[Goal]:
    """The Llama 3 post-training card's goals, judged on this run's stages (a missing stage: not judged)."""
    by = {r["stage"]: r for r in rows}
    base, tuned, reference, dpo = (by.get(s) for s in ("base", "sft", "rs-sft", "dpo"))
    final = dpo or reference or tuned

    def points(after: dict[str, Any] | None, before: dict[str, Any] | None, key: str) -> float | None:
        if after is None or before is None:
            return None
        return 100 * (after[key] - before[key])

    return [
        judge(
            "SFT teaches the instruction tasks: test accuracy after SFT minus the base's",
            points(tuned, base, "accuracy"),
            ">=",
            30.0,
            paper="SFT on curated and rejection-sampled data is the core of Llama 3's post-training (§4.1)",
            unit=" points",
            method=METHOD,
            detail=_detail(base, tuned, "accuracy"),
        ),
        judge(
            "SFT generalises to instructions phrased in ways training never showed: held-out phrasings' "
            "accuracy / seen phrasings' after SFT",
            ratio(tuned["unseen_accuracy"], tuned["seen_accuracy"]) if tuned else None,
            ">=",
            0.8,
            paper="instruction tuning transfers to unseen instructions (FLAN, Wei et al. 2022)",
            method=METHOD,
            detail=f"{_pct(tuned['unseen_accuracy'])} % vs {_pct(tuned['seen_accuracy'])} %" if tuned else "",
        ),
        judge(
            "DPO raises the preference accuracy on held-out pairs over its input model (RS-SFT)",
            points(dpo, reference, "preference_accuracy"),
            ">=",
            10.0,
            paper="DPO optimises the preference likelihood directly (Rafailov et al. 2023)",
            unit=" points",
            method=METHOD,
            detail=_detail(reference, dpo, "preference_accuracy"),
        ),
        judge(
            "DPO keeps task accuracy: test accuracy after DPO minus its input model's (within 2 points)",
            points(dpo, reference, "accuracy"),
            ">=",
            -2.0,
            paper="Llama 3 adds the NLL term to DPO to keep the format and avoid a drop in the chosen "
            "replies' likelihood (§4.1.4)",
            unit=" points",
            method=METHOD,
            detail=_detail(reference, dpo, "accuracy"),
        ),
        judge(
            "post-training does not make the model forget English: perplexity on held-out English after all "
            "stages / the base's",
            ratio(final["perplexity"], base["perplexity"]) if final and base else None,
            "<=",
            1.2,
            paper="post-training preserves the base's capabilities (Llama 3 §4)",
            unit="x",
            method=METHOD,
            detail=f"{final['stage']}: {final['perplexity']:.2f} vs {base['perplexity']:.2f}"
            if final and base
            else "",
        ),
    ]


def _detail(before: dict[str, Any] | None, after: dict[str, Any] | None, key: str) -> str:
    if before is None or after is None:
        return "the stage did not run"
    return f"{before['stage']} {_pct(before[key])} % -> {after['stage']} {_pct(after[key])} %"


def plot(rows: list[dict[str, Any]], per_task: dict[str, dict[str, float]], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(11, 4))
    left, right = fig.subplots(1, 2)
    names = [r["stage"] for r in rows]
    for offset, key, label in (
        (-0.27, "accuracy", "test accuracy"),
        (-0.09, "seen_accuracy", "seen phrasings"),
        (0.09, "unseen_accuracy", "held-out phrasings"),
        (0.27, "preference_accuracy", "preference accuracy"),
    ):
        values = [100 * r[key] if math.isfinite(r[key]) else 0.0 for r in rows]
        left.bar([i + offset for i in range(len(rows))], values, width=0.18, label=label)
    left.set_xticks(range(len(rows)), names)
    left.set_ylabel("%")
    left.set_ylim(0, 100)
    left.legend(fontsize=8)
    left.set_title("per stage")
    tasks = sorted(next(iter(per_task.values())))
    width = 0.8 / len(per_task)
    for j, (name, scores) in enumerate(per_task.items()):
        right.bar(
            [i + j * width for i in range(len(tasks))],
            [100 * scores[t] for t in tasks],
            width=width,
            label=name,
        )
    right.set_xticks([i + 0.4 - width / 2 for i in range(len(tasks))], tasks, rotation=30, fontsize=8)
    right.set_ylim(0, 100)
    right.legend(fontsize=8)
    right.set_title("test accuracy per task (%)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path
