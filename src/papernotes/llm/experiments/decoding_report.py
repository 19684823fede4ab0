"""What ``llm-decoding`` reports: its goals (computed from the rows), tables and figures."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from papernotes.core.experiments import Goal, Table, judge, ratio
from papernotes.llm.experiments.target import Base
from papernotes.llm.generation.cost import CostCurve


def _greedy(rows: list[dict[str, Any]], method: str, kind: str | None = None) -> list[dict[str, Any]]:
    return [r for r in rows if r["method"] == method and r["temperature"] == 0 and kind in (None, r["kind"])]


def _mean(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.mean(values) if values else None


def decoding_goals(
    rows: list[dict[str, Any]], cost: CostCurve, plain: float | None, limit: float | None
) -> list[Goal]:
    """Issue 17's goals, each computed from this run's rows (greedy, default size)."""

    def speedup(method: str, kind: str | None = None) -> float | None:
        return _mean([r["speedup"] for r in _greedy(rows, method, kind)])

    def rate(method: str, kind: str | None = None) -> float | None:
        return _mean([r["tokens_per_s"] for r in _greedy(rows, method, kind)])

    hf_assisted = [m for m in {r["method"] for r in rows} if m.startswith("hf-assisted")]
    best_hf = max((rate(m) or 0.0 for m in hf_assisted), default=None) or None
    mtp_rows = _greedy(rows, "mtp")
    # DeepSeek-V3's "second token" is the module's first draft: the target gives token t + 1 and the
    # module, at depth 1, predicts t + 2. So its acceptance is the first draft position's.
    proposed = sum(r["proposed_by_position"][0] for r in mtp_rows if r["proposed_by_position"])
    accepted = sum(r["accepted_by_position"][0] for r in mtp_rows if r["accepted_by_position"])
    lossless = [
        r
        for r in rows
        if r["temperature"] == 0 and r["matches_plain"] is not None and not r["method"].startswith("hf")
    ]
    relative = cost.relative()
    spec, med = "Speculative decoding", "Medusa"
    return [
        judge(
            "speculative decoding with the distilled draft, open prompts: speedup over plain",
            speedup("speculative", "open"),
            ">=",
            2.0,
            paper="2-3x (T5-XXL, TPU)",
            unit="x",
            method=spec,
        ),
        judge(
            "prompt lookup, input-grounded prompts: speedup over plain",
            speedup("lookup", "input-grounded"),
            ">=",
            2.5,
            paper="2-4x on input-grounded tasks (Mistral-7B, A100)",
            unit="x",
            method=spec,
        ),
        judge(
            "prompt lookup, input-grounded prompts: ours / HF's prompt lookup (tokens/s)",
            ratio(rate("lookup", "input-grounded"), rate("hf-lookup", "input-grounded")),
            ">=",
            1.0,
            unit="x",
            method=spec,
        ),
        judge(
            "our speculative decoding / HF assisted generation with the same draft (tokens/s)",
            ratio(rate("speculative"), best_hf),
            ">=",
            1.3,
            paper="HF: up to 2x on GPU",
            unit="x",
            method=spec,
        ),
        judge(
            "our plain decoding / HF generate (tokens/s)",
            ratio(rate("plain"), rate("hf-plain")),
            ">=",
            1.5,
            unit="x",
            method="Llama 3",
        ),
        judge(
            "plain decoding as a share of the memory-read limit",
            ratio(plain, limit),
            ">=",
            0.7,
            paper="decoding is memory-bound: one read of the weights per token",
            method=spec,
        ),
        judge(
            "verifying 5 tokens costs at most 1.2x one token's forward",
            relative.get(5),
            "<=",
            1.2,
            unit="x",
            method=spec,
        ),
        judge(
            "Medusa: speedup over plain",
            speedup("medusa"),
            ">=",
            1.8,
            paper="Medusa-1: 2.2x (Vicuna-7B, A100)",
            unit="x",
            method=med,
        ),
        judge(
            "Medusa: tokens per target call (τ)",
            _mean([r["tokens_per_call"] for r in _greedy(rows, "medusa")]),
            ">=",
            2.5,
            method=med,
        ),
        judge(
            "MTP: acceptance of the second token",
            accepted / proposed if proposed else None,
            ">=",
            0.8,
            paper="85-90 % (DeepSeek-V3)",
            method="Multi-token prediction",
        ),
        judge(
            "every greedy output of our methods equals plain greedy (share of rows)",
            _mean([float(bool(r["matches_plain"])) for r in lossless]),
            ">=",
            1.0,
            method=spec,
        ),
    ]


def tables(
    rows: list[dict[str, Any]], cost: CostCurve, choices: dict[str, Any], limit: float, plain: float
) -> list[Table]:
    speed = Table(
        "decoding SmolLM2-135M, batch 1: tokens/s and speedup over our plain decoding in the same run",
        ["kind", "method", "T", "tokens/s", "speedup", "τ tokens/call", "α acceptance", "greedy = plain"],
        [
            [
                r["kind"],
                r["method"],
                r["temperature"],
                r["tokens_per_s"],
                r["speedup"],
                r["tokens_per_call"] or None,
                r["acceptance_rate"] if r["drafted"] else None,
                {True: "yes", False: "NO", None: "-"}[r["matches_plain"]],
            ]
            for r in rows
        ],
    )
    by_position = Table(
        "greedy acceptance by draft position (all kinds)",
        ["method", *[f"pos {i + 1}" for i in range(8)]],
        [],
    )
    for method in dict.fromkeys(r["method"] for r in rows if r["temperature"] == 0 and r["drafted"]):
        greedy = _greedy(rows, method)
        width = max(len(r["proposed_by_position"]) for r in greedy)
        cells = []
        for i in range(min(width, 8)):
            proposed = sum(r["proposed_by_position"][i] for r in greedy if len(r["proposed_by_position"]) > i)
            accepted = sum(r["accepted_by_position"][i] for r in greedy if len(r["accepted_by_position"]) > i)
            cells.append(accepted / proposed if proposed else None)
        by_position.rows.append([method, *cells])
    costs = Table(
        "cost of one target forward against new tokens w (measured here), as a multiple of w = 1",
        ["w", "ms", "× one token"],
        [[w, 1000 * s, cost.relative()[w]] for w, s in sorted(cost.seconds.items())],
    )
    chosen = Table(
        "choices that maximise expected tokens/s on this machine",
        ["drafter", "choice", "held-out acceptance", "drafter cost (× a target token)"],
        [
            [
                "draft model",
                f"γ = {choices['gamma']}",
                choices["acceptance"].get("draft_top1"),
                choices["draft_cost"],
            ],
            [
                "Medusa",
                f"tree of {len(choices['medusa_tree'])} nodes: {choices['medusa_tree']}",
                None,
                choices["medusa_heads_cost"],
            ],
            [
                "MTP chain",
                f"{choices['mtp_chain']} drafts",
                choices["acceptance"].get("mtp_top1_by_depth"),
                None,
            ],
        ],
    )
    memory = Table(
        "plain decoding against the memory-read limit",
        ["plain tokens/s", "limit tokens/s (one read of the weights)", "share"],
        [[plain, limit, ratio(plain, limit)]],
    )
    return [speed, by_position, costs, chosen, memory]


def notes(base: Base, size: dict[str, Any], choices: dict[str, Any]) -> list[str]:
    return [
        f"target {base.path.name} (fp32, {base.model.num_parameters() / 1e6:.1f} M parameters); "
        f"{size['prompts_per_kind']} prompt(s) per kind, {size['max_new_tokens']} new tokens, batch 1",
        f"draft: layers {list(size['draft_layers'])} of the target, distilled on its replies (forward KL), "
        f"proposing from the {size['frequent_vocab']} most frequent tokens (FR-Spec); "
        "speculative-full-vocab is the same draft with its full head",
        f"Medusa: {size['medusa_heads']} heads sharing the base's LM head over the same frequent tokens; "
        f"MTP: one module chained {choices['mtp_chain']} deep; both trained on the frozen base's states",
        "Medusa at T > 0 uses typical acceptance, which is not lossless (its greedy output is exact)",
    ]


def plot_speed(rows: list[dict[str, Any]], path: Path) -> Path:
    fig = Figure(figsize=(11, 4))
    axes = fig.subplots(1, 2, sharey=True)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    kinds = list(dict.fromkeys(r["kind"] for r in rows))
    for ax, temperature in zip(axes, (0.0, 0.8)):
        width = 0.8 / len(kinds)
        for j, kind in enumerate(kinds):
            speed = {
                r["method"]: r["speedup"]
                for r in rows
                if r["temperature"] == temperature and r["kind"] == kind
            }
            xs = [i + (j - (len(kinds) - 1) / 2) * width for i in range(len(methods))]
            ax.bar(xs, [speed.get(m, 0) for m in methods], width, label=kind)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xticks(range(len(methods)), methods, rotation=35, ha="right", fontsize=8)
        ax.set(title=f"T = {temperature}", ylabel="speedup over plain (tokens/s ratio)")
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("SmolLM2-135M decoding, batch 1, CPU")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def plot_cost(cost: CostCurve, choices: dict[str, Any], path: Path) -> Path:
    fig = Figure(figsize=(11, 4))
    ax_cost, ax_rate = fig.subplots(1, 2)
    widths = sorted(cost.seconds)
    ax_cost.plot(widths, [cost.relative()[w] for w in widths], "o-")
    ax_cost.set(
        xscale="log",
        xlabel="new tokens per forward (w)",
        ylabel="× the cost of w = 1",
        title="measured cost of verifying w tokens",
    )
    ax_cost.grid(alpha=0.3)
    for label, rates in (
        ("draft model: γ", choices["gamma_expected_tokens_per_s"]),
        ("Medusa: tree nodes", choices["medusa_tree_expected_tokens_per_s"]),
        ("MTP: chain length", choices["mtp_chain_expected_tokens_per_s"]),
    ):
        xs = sorted(int(k) for k in rates)
        ax_rate.plot(xs, [rates[x] / rates[min(xs)] for x in xs], "o-", label=label)
    ax_rate.set(
        xlabel="γ / tree nodes / chain length",
        ylabel="expected tokens/s (relative)",
        title="choices: expected speed from the cost curve and acceptance",
    )
    ax_rate.legend(fontsize=8)
    ax_rate.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path
