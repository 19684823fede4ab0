"""The LLM field's experiments for ``papernotes reproduce``.

- ``llm-pretrain``: the target Llama trained on the embedded corpus in fp32, bf16
  and fp16 with fp32 master weights; loss curves, validation loss and tokens/s per
  mode. The fp32 model is cached (HF format, with its tokenizer) for the decoding
  and PEFT experiments, and reused by later runs unless ``--no-cache``.
- ``llm-attention``: time and measured peak extra memory of naive attention, our
  FlashAttention and PyTorch SDPA against sequence length.
- ``llm-decoding`` (``reproduce_decoding.py``) and ``llm-peft`` (``reproduce_peft.py``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure  # the OO API: no pyplot state, no GUI backend needed

from papernotes.core.config import preset, to_dict
from papernotes.core.experiments import Experiment, ExperimentContext, ExperimentResult, Table
from papernotes.core.train import TrainConfig, short_run
from papernotes.llm.commands import TARGET_MODEL_DIR
from papernotes.llm.experiments.decoding import run_decoding
from papernotes.llm.experiments.peft import run_peft
from papernotes.llm.experiments.post_training import run_post_training
from papernotes.llm.model.config import PRESETS
from papernotes.llm.training.pretrain import model_config_for, prepare_corpus, pretrain, save_model_dir
from papernotes.nn.attention_profile import profile_attention

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "fp16")

# Budget: this field's core share of the quick run is ~4 minutes on 2 cores. fp16 matrix multiplies
# have no fast CPU kernel (about 17x slower than fp32 here), so the fp16 arm runs only the first
# `compare_at` steps of the same schedule; every mode is evaluated at that step for the comparison.
PRETRAIN_SIZES: dict[str, dict[str, Any]] = {
    "quick": {
        "model": "pn-small",
        "steps": 200,
        "compare_at": 12,
        "batch_size": 8,
        "seq_len": 128,
        "max_bytes": 3_000_000,
        "vocab_size": 4096,
    },
    "full": {
        "model": "pn-base",
        "steps": 3000,
        "compare_at": 3000,
        "batch_size": 32,
        "seq_len": 256,
        "max_bytes": None,
        "vocab_size": 8192,
    },
}
ATTENTION_SIZES: dict[str, dict[str, Any]] = {
    "quick": {"seq_lens": [256, 512, 1024, 2048], "num_heads": 4, "repeats": 2},
    "full": {"seq_lens": [512, 1024, 2048, 4096, 8192, 16384], "num_heads": 8, "repeats": 3},
}


def _train_config(size: dict[str, Any], precision: str, seed: int) -> TrainConfig:
    steps = size["steps"]
    return short_run(
        steps,
        size["batch_size"],
        lr=3e-3,
        min_lr=3e-4,
        precision=precision,
        stop_after=size["compare_at"] if precision == "fp16" else None,
        eval_every=size["compare_at"],
        eval_batches=4,
        seed=seed,
    )


def run_pretrain(ctx: ExperimentContext) -> ExperimentResult:
    size = PRETRAIN_SIZES[ctx.size]
    data = prepare_corpus(
        ctx.cache_dir, vocab_size=size["vocab_size"], max_bytes=size["max_bytes"], use_cache=ctx.use_cache
    )
    model_config = model_config_for(data, preset(PRESETS, size["model"], "model preset"))
    recipe = {
        "size": size,
        "model": to_dict(model_config),
        "train": {p: to_dict(_train_config(size, p, ctx.seed)) for p in PRECISIONS},
        "corpus": str(data.directory),
    }
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
    target_dir = ctx.cache_dir.joinpath(*TARGET_MODEL_DIR)
    record_path = ctx.cache_dir / "llm" / "pretrain_results.json"
    runs: dict[str, Any] | None = None
    if ctx.use_cache and record_path.is_file() and (target_dir / "tokenizer.json").is_file():
        record = json.loads(record_path.read_text())
        if record.get("key") == key:
            runs = record["runs"]
            logger.info("llm-pretrain: reusing cached models and measurements (%s)", record_path)
    cached = runs is not None
    if runs is None:
        runs = {}
        for precision in PRECISIONS:
            logger.info("llm-pretrain: training %s in %s", size["model"], precision)
            model, result = pretrain(
                model_config, _train_config(size, precision, ctx.seed), data, size["seq_len"]
            )
            runs[precision] = {
                "train_losses": result.train_losses,
                "val_losses": result.val_losses,
                "tokens_per_s": result.tokens_per_s,
                "wall_s": result.wall_s,
                "skipped_steps": result.skipped_steps,
                "final_scale": result.final_scale,
            }
            if precision == "fp32":
                save_model_dir(model, data.tokenizer, target_dir)
        record_path.parent.mkdir(parents=True, exist_ok=True)
        record_path.write_text(json.dumps({"key": key, "recipe": recipe, "runs": runs}, indent=2))

    # what the decoding and PEFT experiments build on
    ctx.shared.update(target_dir=target_dir, target_key=key, corpus=data, pretrain_size=size)
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
        f"fp16 runs the first {compare_at} steps of the same schedule",
        "CPU timings depend on the instruction set: with AVX-512 BF16, bf16 matrix multiplies beat fp32; "
        "without AVX-512 FP16 there is no fast fp16 kernel, so fp16 is far slower than on a GPU, "
        "where both use tensor cores.",
    ]
    if cached:
        notes.append(f"reused from the cache ({record_path}); pass --no-cache to retrain")
    return ExperimentResult(
        metrics={
            "model_dir": str(target_dir),
            "model_config": to_dict(model_config),
            "runs": runs,
            "cached": cached,
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
    )


def run_attention(ctx: ExperimentContext) -> ExperimentResult:
    size = ATTENTION_SIZES[ctx.size]
    rows_out: list[dict[str, Any]] = []
    for backward in (False, True):
        rows_out += profile_attention(
            size["seq_lens"],
            num_heads=size["num_heads"],
            repeats=size["repeats"],
            backward=backward,
            causal=True,
        )
    figure = _plot_attention(rows_out, ctx.out_dir / "attention.png")
    table_rows = [
        [r["mode"], r["seq_len"], r["backend"], r.get("time_s"), _mib(r.get("peak_extra_bytes"))]
        for r in rows_out
    ]
    return ExperimentResult(
        metrics={"rows": rows_out, "settings": size},
        tables=[
            Table(
                "attention time and measured peak extra memory (causal, fp32, CPU)",
                ["mode", "N", "backend", "seconds", "extra MiB"],
                table_rows,
            )
        ],
        figures=[figure.name],
    )


def _mib(value: float | None) -> float | None:
    return None if value is None else value / 2**20


def _parameter_count(config: Any) -> int:
    from papernotes.llm.model.llama import Llama

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


def _plot_attention(rows: list[dict[str, Any]], path: Path) -> Path:
    fig = Figure(figsize=(11, 4))
    axes = fig.subplots(1, 2)
    colors = {"naive": "tab:red", "sdpa": "tab:blue", "flash": "tab:green"}
    for mode, style in (("forward", "-"), ("forward+backward", "--")):
        for backend, color in colors.items():
            pts = [
                r
                for r in rows
                if r["mode"] == mode and r["backend"] == backend and r.get("time_s") is not None
            ]
            if not pts:
                continue
            n = [r["seq_len"] for r in pts]
            axes[0].plot(
                n, [r["time_s"] for r in pts], style, color=color, marker="o", label=f"{backend} {mode}"
            )
            axes[1].plot(
                n,
                [_mib(r["peak_extra_bytes"]) for r in pts],
                style,
                color=color,
                marker="o",
                label=f"{backend} {mode}",
            )
    axes[0].set(xscale="log", yscale="log", xlabel="sequence length N", ylabel="seconds", title="time")
    axes[1].set(
        xscale="log", yscale="log", xlabel="sequence length N", ylabel="MiB", title="peak extra memory"
    )
    seq_lens = sorted({r["seq_len"] for r in rows})
    for ax in axes:
        ax.set_xticks(seq_lens, [str(n) for n in seq_lens])
        ax.minorticks_off()
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


EXPERIMENTS = [
    Experiment(
        "llm-pretrain",
        "llm",
        "pre-train the target Llama in fp32, bf16 and fp16 (+fp32 master weights)",
        run_pretrain,
    ),
    Experiment(
        "llm-attention",
        "llm",
        "naive vs FlashAttention (ours) vs SDPA: time and memory against N",
        run_attention,
    ),
    Experiment(
        "llm-decoding",
        "llm",
        "speculative, prompt lookup, Medusa and MTP decoding vs plain decoding (and HF generate)",
        run_decoding,
    ),
    Experiment(
        "llm-peft",
        "llm",
        "full fine-tuning vs LoRA (r = 4, 8, 16) vs Prefix-Tuning (L = 5, 10, 20) on table-to-text",
        run_peft,
    ),
    Experiment(
        "llm-post-training",
        "llm",
        "Llama 3 post-training: base -> SFT -> rejection-sampling SFT -> DPO on verifiable instruction tasks",
        run_post_training,
    ),
]
