"""The ``llm-pretrain`` experiment: the target Llama pre-trained in fp32, bf16 and fp16 (fp32 master weights).

Loss curves, validation loss at a common step and tokens/s per mode. The training itself (and its cache) is
:func:`papernotes.llm.experiments.target.ensure_target`, which the other LLM experiments share.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.figure import Figure  # the OO API: no pyplot state, no GUI backend needed

from papernotes.core.config import to_dict
from papernotes.core.experiments import ExperimentContext, ExperimentResult, Goal, Table, judge, ratio
from papernotes.core.precision import cpu_capability, native_bf16
from papernotes.llm.experiments.target import PRECISIONS, emulated, ensure_target
from papernotes.llm.model.llama import Llama


def run_pretrain(ctx: ExperimentContext) -> ExperimentResult:
    target = ensure_target(ctx)
    size, runs, model_config = target.size, target.runs, target.model_config
    slow = [p for p in PRECISIONS if emulated(p)]
    figure = _plot_losses(runs, ctx.out_dir / "loss_curves.png")
    compare_at = size["compare_at"]
    val_at = {p: dict((int(k), v) for k, v in runs[p]["val_losses"])[compare_at] for p in PRECISIONS}
    rows = [
        [
            p,
            len(runs[p]["train_losses"]),
            val_at[p],
            val_at[p] - val_at["fp32"],
            runs[p]["val_losses"][-1][1],
            runs[p]["tokens_per_s"],
            runs[p]["tokens_per_s"] / runs["fp32"]["tokens_per_s"],
            runs[p]["skipped_steps"],
        ]
        for p in PRECISIONS
    ]
    notes = [
        f"model {size['model']} ({_parameter_count(model_config) / 1e6:.2f} M parameters), "
        f"{size['steps']} steps of {size['batch_size']}x{size['seq_len']} tokens (AdamW, warmup + cosine); "
        f"{' and '.join(slow)} ran only the first {compare_at} steps of the same schedule (no fast kernel "
        f"on this {cpu_capability()} CPU)",
        "CPU timings depend on the instruction set: with AVX-512 BF16, bf16 matrix multiplies beat fp32; "
        "without AVX-512 FP16 there is no fast fp16 kernel, so fp16 is far slower than on a GPU, "
        "where both use tensor cores.",
    ]
    if target.cached:
        notes.append("models and timings reused from the cache; pass --no-cache to retrain")
    return ExperimentResult(
        metrics={
            "model_dir": str(target.directory),
            "model_config": to_dict(model_config),
            "runs": runs,
            "cached": target.cached,
        },
        tables=[
            Table(
                "pre-training by precision mode",
                [
                    "mode",
                    "steps run",
                    f"val loss @ {compare_at}",
                    "Δ vs fp32",
                    "final val loss",
                    "tokens/s",
                    "speed vs fp32",
                    "skipped steps",
                ],
                rows,
            )
        ],
        figures=[figure.name],
        notes=notes,
        goals=pretrain_goals(runs, val_at),
        trained=[] if target.cached else [f"target {size['model']} x {len(PRECISIONS)} precisions"],
        reused=[f"target {size['model']} (models and timings)"] if target.cached else [],
    )


MAX_LOSS_GAP = 0.05  # nats/token: "matches fp32" (Micikevicius et al. 2018 report no accuracy loss)


def pretrain_goals(runs: dict[str, Any], val_at: dict[str, float]) -> list[Goal]:
    """Mixed precision's claims on this run: the same loss as fp32, and bf16 faster where it is native."""
    method = "Mixed precision"
    paper = "no accuracy loss vs fp32 (Micikevicius et al. 2018)"
    goals = [
        judge(
            f"{p} ({'fp32 master weights + loss scaling' if p == 'fp16' else 'autocast'}) matches fp32's "
            "validation loss at the comparison step (|difference|, nats/token)",
            abs(val_at[p] - val_at["fp32"]),
            "<=",
            MAX_LOSS_GAP,
            paper=paper,
            method=method,
        )
        for p in ("bf16", "fp16")
    ]
    speed = ratio(runs["bf16"]["tokens_per_s"], runs["fp32"]["tokens_per_s"])
    goals.append(
        judge(
            "bf16 autocast trains faster than fp32 where the hardware has native bf16 (tokens/s ratio)",
            speed if native_bf16() else None,
            ">=",
            1.0,
            paper="2-3x on tensor-core GPUs",
            method=method,
            detail="" if native_bf16() else f"no native bf16 on this {cpu_capability()} CPU: not a fair test",
        )
    )
    return goals


def _parameter_count(config: Any) -> int:
    return Llama(config).num_parameters()


def _plot_losses(runs: dict[str, Any], path: Path) -> Path:
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    for precision, run in runs.items():
        ax.plot(
            range(1, len(run["train_losses"]) + 1), run["train_losses"], label=f"{precision} train", alpha=0.8
        )
        steps, losses = zip(*run["val_losses"])
        ax.plot(steps, losses, "o--", label=f"{precision} val")
    ax.set(
        xlabel="optimizer step", ylabel="cross-entropy (nats/token)", title="Llama pre-training by precision"
    )
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path
