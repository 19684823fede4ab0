"""The ``llm-peft`` experiment: full fine-tuning vs LoRA vs Prefix-Tuning on the real base.

Every run starts from SmolLM2-135M-Instruct (:func:`~papernotes.llm.experiments.target.ensure_base`) and
fine-tunes on the embedded table-to-text task (E2E-style records to one sentence) with the same data,
step budget, batches and loop; only what trains differs. The task is put to the model through its own
chat template: a system message states the task (:data:`~papernotes.llm.training.finetune.INSTRUCTION`),
the user turn is the record, the assistant turn the sentence. The base itself is scored zero-shot and
few-shot (demonstrations as earlier turns), so the table shows what fine-tuning adds.

For each run it reports trainable and stored parameters, the optimizer state measured after training,
ms per step, and test BLEU and slot error rate of greedy outputs. It then times batch-1 greedy decoding
with the base, the unmerged LoRA model and the merged LoRA model, interleaved in one process
(Hu et al. 2021 §4: merged LoRA adds no inference latency). Goals (the LoRA and Prefix-Tuning cards):
LoRA at ≤ 1 % trainable parameters reaches ≥ 95 % of full fine-tuning's BLEU; Prefix-Tuning at ≤ 0.5 %
stored reaches ≥ 90 %; the best LoRA run's slot error rate is ≤ 5 %; merged LoRA decodes within 1.02× the
base's time.

Cached by recipe under ``<cache>/llm/peft/<size>/``: each run's measurements (with the machine, since they
hold timings), and the adapters (LoRA, prefix) it trained.
"""

from __future__ import annotations

import logging
import random
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure

from papernotes.core.cache import (
    is_current,
    machine_recipe,
    mark_current,
    read_record,
    recipe_key,
    write_record,
)
from papernotes.core.config import to_dict
from papernotes.core.experiments import ExperimentContext, ExperimentResult, Goal, Table, judge, ratio
from papernotes.core.precision import resolve_precision
from papernotes.errors import DataError
from papernotes.llm.data.tasks import table2text
from papernotes.llm.experiments.target import Base, ensure_base
from papernotes.llm.model.llama import Llama
from papernotes.llm.peft import lora, prefix_tuning
from papernotes.llm.training import finetune

logger = logging.getLogger(__name__)

PEFT_DIR = ("llm", "peft")  # run records and adapters, per size, under the cache folder
RECIPE_VERSION = 2  # bump when the code changes what the same recipe produces

# Budget: the quick size is at most ~6 minutes on 2 AVX2 cores with a fresh cache (fp32: bf16 is
# emulated there, ~14x slower). A LoRA or prefix step costs ~2/3 of a full step (no weight gradients);
# the rest is decoding the test records, batched. The quick size runs a subset of the runs.
PEFT_SIZES: dict[str, dict[str, Any]] = {
    "tiny": {
        "steps": 2,
        "batch_size": 2,
        "train_size": 8,
        "test_size": 2,
        "min_slots": 2,
        "max_slots": 2,
        "max_new_tokens": 4,
        "shots": 1,
        "lora_ranks": [2, 4],
        "prefix_lengths": [2],
        "latency_prompts": 1,
        "latency_repeats": 2,  # interleaved decoding steps per model and prompt
    },
    "quick": {
        "steps": 16,
        "batch_size": 8,
        "train_size": 400,
        "test_size": 40,
        "min_slots": 3,
        "max_slots": 5,  # records of at most 5 slots keep sequences near 80 tokens
        "max_new_tokens": 40,
        "shots": 2,
        "lora_ranks": [8],
        "prefix_lengths": [10],
        "latency_prompts": 2,
        "latency_repeats": 40,
    },
    "full": {
        "steps": 50,
        "batch_size": 8,
        "train_size": 1000,
        "test_size": 80,
        "min_slots": 3,
        "max_slots": 5,
        "max_new_tokens": 48,
        "shots": 2,
        "lora_ranks": [4, 8, 16],
        "prefix_lengths": [5, 10, 20],
        "latency_prompts": 4,
        "latency_repeats": 60,
    },
}
LATENCY_RANK = 8  # the LoRA rank whose merged and unmerged models are timed (peft's default), when run
EVAL_BATCH = 48  # test records decoded together


def peft_runs(size: dict[str, Any], seed: int) -> list[tuple[str, finetune.FinetuneConfig]]:
    """(name, config) of every fine-tuning run: full, LoRA on Wq and Wv (α = 2r), prefix (MLP width 512)."""
    common = {"steps": size["steps"], "batch_size": size["batch_size"], "seed": seed}
    runs = [("full", finetune.FinetuneConfig(method="full", **common))]
    for r in size["lora_ranks"]:
        config = lora.LoraConfig(r=r, lora_alpha=2 * r)
        runs.append((f"lora r={r}", finetune.FinetuneConfig(method="lora", lora=config, **common)))
    for length in size["prefix_lengths"]:
        config = prefix_tuning.PrefixTuningConfig(num_virtual_tokens=length)
        runs.append((f"prefix L={length}", finetune.FinetuneConfig(method="prefix", prefix=config, **common)))
    return runs


def run_peft(ctx: ExperimentContext) -> ExperimentResult:
    size = PEFT_SIZES[ctx.size]
    base = ensure_base(ctx)
    task = _task(base, size, ctx.seed)
    shots = _shots(task["train"], size["shots"], ctx.seed)
    common = {
        "version": RECIPE_VERSION,
        "base": base.key,
        "instruction": finetune.INSTRUCTION,
        "data": {k: size[k] for k in ("train_size", "test_size", "min_slots", "max_slots", "max_new_tokens")},
        "seed": ctx.seed,
        "machine": machine_recipe(),  # the records hold timings: another CPU or torch measures again
    }
    folder = ctx.cache_dir.joinpath(*PEFT_DIR, ctx.size)  # sizes apart: a quick run never waits on a full one
    trained: list[str] = []
    reused: list[str] = []

    baselines = []
    for name, demos in (("base zero-shot", []), (f"base {len(shots)}-shot", shots)):
        key = recipe_key({**common, "baseline": [d.source for d in demos]})
        row = read_record(folder / f"{_slug(name)}.json", key, ctx.use_cache)
        if row is None:
            logger.info("llm-peft: scoring the %s", name)
            metrics, samples = finetune.evaluate(
                base.model, base.tokenizer, task["test"], size["max_new_tokens"], EVAL_BATCH, base.chat, demos
            )
            row = {"run": name, "method": "base", **metrics, "samples": samples[:3]}
            write_record(folder / f"{_slug(name)}.json", key, row)
        baselines.append(row)

    rows: list[dict[str, Any]] = []
    lora_model: Llama | None = None
    timed_rank = _latency_rank(size)
    for name, config in peft_runs(size, ctx.seed):
        key = recipe_key({**common, "run": to_dict(config), "lr": config.learning_rate})
        record_path, adapter_dir = folder / f"{_slug(name)}.json", folder / _slug(name)
        row = read_record(record_path, key, ctx.use_cache)
        keeps_adapter = config.method != "full"
        if row is not None and (not keeps_adapter or is_current(adapter_dir, key, ctx.use_cache)):
            reused.append(f"{name} ({adapter_dir if keeps_adapter else record_path})")
            if config.method == "lora" and config.lora.r == timed_rank:
                lora_model = base.fresh()
                lora.load_adapter(lora_model, adapter_dir)
        else:
            logger.info("llm-peft: %s", name)
            model = base.fresh()
            result = finetune.finetune(model, base.tokenizer, task["train"], config, chat=base.chat)
            if config.method == "prefix":
                prefix_tuning.collapse_prefix(model)  # §4.3: keep P_θ only; outputs are unchanged
            metrics, samples = finetune.evaluate(
                model, base.tokenizer, task["test"], size["max_new_tokens"], EVAL_BATCH, base.chat
            )
            stored = (
                model.prefix_encoder.embedding.weight.numel()
                if config.method == "prefix"
                else result.trainable_parameters
            )
            row = {
                "run": name,
                **result.as_dict(),
                "stored_parameters": stored,
                "stored_percent": 100 * stored / result.base_parameters,
                **metrics,
                "samples": samples[:3],
            }
            if keeps_adapter:
                finetune.save_result_model(model, base.tokenizer, config, adapter_dir, str(base.directory))
                mark_current(adapter_dir, key)
            write_record(record_path, key, row)
            trained.append(name)
            if config.method == "lora" and config.lora.r == timed_rank:
                lora_model = model
            del model
        rows.append(row)
    full = next((r for r in rows if r["method"] == "full"), None)
    for row in baselines + rows:
        row["bleu_vs_full"] = ratio(row["bleu"], full["bleu"] if full else None)

    latency = _latency(base, lora_model, task["test"], size) if lora_model is not None else {}
    figure = _plot(baselines + rows, ctx.out_dir / "peft_comparison.png")
    goals = peft_goals(rows, latency)
    example = task["test"][0]
    notes = [
        f"base {base.path.name}: {base.model.num_parameters() / 1e6:.1f} M parameters, trained in "
        f"{resolve_precision('auto')} (precision auto: bf16 only where the CPU has it natively); "
        f"{size['steps']} steps of {size['batch_size']} examples for every run, AdamW, LR per method "
        f"{finetune.DEFAULT_LR}; {len(task['train'])} training records of ≤ {size['max_slots']} slots, "
        f"{len(task['test'])} test records with {len(example.references)} references each; greedy decoding, "
        f"≤ {size['max_new_tokens']} new tokens",
        f"prompt: its chat template, system '{finetune.INSTRUCTION}', user = the record "
        f"(e.g. '{example.source}'); the few-shot prompt puts {len(shots)} training records and their "
        "sentences before it as earlier turns",
        "trainable % counts what the optimizer updates (for prefix tuning: the MLP of §4.3 too); stored % "
        "counts what is kept after training (the collapsed prefix table P_θ), the paper's measure",
    ]
    table_rows = [
        [
            r["run"],
            r.get("trainable_parameters", 0),
            r.get("trainable_percent", 0.0),
            r.get("stored_parameters", 0),
            r.get("stored_percent", 0.0),
            r.get("optimizer_state_bytes", 0) / 1024,
            1000 * r["step_s"] if "step_s" in r else None,
            r["bleu"],
            r["bleu_vs_full"],
            100 * r["ser"],
        ]
        for r in baselines + rows
    ]
    latency_rows = [[k, v["ms_per_step"], v["ratio_to_base"]] for k, v in latency.items()]
    return ExperimentResult(
        metrics={"baselines": baselines, "runs": rows, "latency": latency, "settings": size},
        tables=[
            Table(
                "table-to-text on the base: prompted, then fine-tuned (same data and steps for every run)",
                [
                    "run",
                    "trainable params",
                    "trainable %",
                    "stored params",
                    "stored %",
                    "optimizer state KiB",
                    "ms/step",
                    "test BLEU",
                    "BLEU / full",
                    "SER %",
                ],
                table_rows,
            ),
            Table(
                "batch-1 decoding step (one new token over a cached prompt; models interleaved step by "
                "step, median step time)",
                ["model", "ms / step", "time / base"],
                latency_rows,
            ),
            Table(
                "sample outputs (first test record)",
                ["run", "output"],
                [[r["run"], r["samples"][0]["output"]] for r in baselines + rows if r.get("samples")],
            ),
        ],
        figures=[figure.name],
        notes=notes,
        goals=goals,
        trained=trained,
        reused=[f"{base.path.name} (dequantised)", *reused],
    )


def _slug(name: str) -> str:
    return name.replace(" ", "-").replace("=", "")


def _task(base: Base, size: dict[str, Any], seed: int) -> dict[str, list[table2text.Example]]:
    """The table-to-text splits, keeping what fits the context beside the longest prefix."""
    task = table2text.make_table2text(
        table2text.Table2TextConfig(
            train_size=size["train_size"],
            validation_size=0,
            test_size=size["test_size"],
            min_slots=size["min_slots"],
            max_slots=size["max_slots"],
            seed=seed,
        )
    )
    room = base.model.config.max_position_embeddings - max(size["prefix_lengths"]) - size["max_new_tokens"]
    encode = finetune.encode
    kept = {
        split: [
            e for e in task[split] if len(encode(base.tokenizer, e.source, e.target, base.chat).ids) <= room
        ]
        for split in ("train", "test")
    }
    if not kept["train"] or not kept["test"]:
        raise DataError("llm-peft: no table-to-text example fits the base's context")
    return kept


def _shots(train: list[table2text.Example], count: int, seed: int) -> list[table2text.Example]:
    """``count`` demonstrations drawn from the training records (the same for a seed)."""
    return random.Random(seed).sample(train, min(count, len(train)))


def _latency_rank(size: dict[str, Any]) -> int:
    """The LoRA rank whose merged model is timed: 8 when run, else the first."""
    return LATENCY_RANK if LATENCY_RANK in size["lora_ranks"] else size["lora_ranks"][0]


def _latency(
    base: Base, lora_model: Llama, examples: list[table2text.Example], size: dict[str, Any]
) -> dict[str, dict[str, float]]:
    """Batch-1 decoding-step time of the base, the unmerged and the merged LoRA model.

    A decoding step is what latency means here: one new token's forward over a cached prompt. Whole
    generations of a few dozen tokens varied by ±5 % between models of identical structure on this shared
    machine, too coarse for a 2 % goal. So each prompt is prefilled once per model, then the models take
    single steps in turn (the order rotating every round, so drift hits every model alike), the cache
    rolled back after each; a model's figure is the median of its step times, divided by the base's.
    """
    merged = lora.merge_and_unload(_clone_lora(base, lora_model)).eval()
    r = _latency_rank(size)
    # the baseline is a fresh copy, loaded as the LoRA models were, so that the ratio times LoRA alone and
    # not a difference in how the weights sit in memory (llm-decoding gives the shared base back untuned)
    models = {
        "base": base.fresh().eval(),
        # a control: a second copy of the base, whose ratio is this machine's noise floor for the goal
        "base, a second copy": base.fresh().eval(),
        f"lora r={r} unmerged": lora_model.eval(),
        f"lora r={r} merged": merged,
    }
    names = list(models)
    steps: dict[str, list[float]] = {name: [] for name in models}
    with torch.inference_mode():
        for example in examples[: size["latency_prompts"]]:
            ids = torch.tensor([finetune.encode(base.tokenizer, example.source, chat=base.chat).ids])
            prompt_len = ids.shape[1]
            caches, nexts = {}, {}
            for name, model in models.items():
                caches[name] = model.setup_cache(1, prompt_len + 1)
                logits = model(ids, cache=caches[name])
                nexts[name] = logits[:, -1:].argmax(-1)  # (1, 1)
            for round_ in range(size["latency_repeats"]):
                shift = round_ % len(names)
                for name in names[shift:] + names[:shift]:
                    start = time.perf_counter()
                    models[name](nexts[name], cache=caches[name])
                    steps[name].append(time.perf_counter() - start)
                    caches[name].crop(prompt_len)
    median = {name: statistics.median(times) for name, times in steps.items()}
    return {
        name: {"ms_per_step": 1000 * seconds, "ratio_to_base": seconds / median["base"]}
        for name, seconds in median.items()
    }


def _clone_lora(base: Base, lora_model: Llama) -> Llama:
    """A fresh base with ``lora_model``'s adapter weights (so merging leaves the original unmerged)."""
    clone = base.fresh()
    layers = lora.lora_layers(lora_model)
    lora.apply_lora(clone, next(iter(layers.values())).config)
    clone.load_state_dict(lora_model.state_dict())
    return clone


def peft_goals(rows: list[dict[str, Any]], latency: dict[str, dict[str, float]]) -> list[Goal]:
    """The LoRA and Prefix-Tuning cards' goals, judged on this run's rows (a missing run: not judged)."""
    full = next((r for r in rows if r["method"] == "full"), None)
    full_bleu = full["bleu"] if full else None
    cheap_lora = [r for r in rows if r["method"] == "lora" and r["trainable_percent"] <= 1.0]
    best_lora = max(cheap_lora, key=lambda r: r["bleu"], default=None)
    cheap_prefix = [r for r in rows if r["method"] == "prefix" and r["stored_percent"] <= 0.5]
    best_prefix = max(cheap_prefix, key=lambda r: r["bleu"], default=None)
    every_lora = [r for r in rows if r["method"] == "lora"]
    best_any_lora = max(every_lora, key=lambda r: r["bleu"], default=None)
    merged = next((v["ratio_to_base"] for k, v in latency.items() if k.endswith(" merged")), None)
    control = latency.get("base, a second copy", {}).get("ratio_to_base")

    def versus_full(row: dict[str, Any] | None, percent: str) -> str:
        if row is None or full is None:
            return "needs a full fine-tuning run and an adapter run within the bound"
        return (
            f"{row['run']} ({row[percent]:.2f} % {percent.split('_')[0]}): BLEU {row['bleu']:.1f} against "
            f"full fine-tuning's {full['bleu']:.1f}"
        )

    return [
        judge(
            "LoRA at ≤ 1 % trainable parameters reaches full fine-tuning's quality: BLEU of the best such "
            "run / full fine-tuning's",
            ratio(best_lora["bleu"], full_bleu) if best_lora else None,
            ">=",
            0.95,
            paper="on par with or above full fine-tuning at 0.1-0.4 % trainable (E2E with GPT-2 M/L, "
            "Hu et al. 2021 Table 3)",
            method="LoRA",
            detail=versus_full(best_lora, "trainable_percent"),
        ),
        judge(
            "Prefix-Tuning at ≤ 0.5 % stored parameters approaches full fine-tuning: BLEU of the best such "
            "run / full fine-tuning's",
            ratio(best_prefix["bleu"], full_bleu) if best_prefix else None,
            ">=",
            0.90,
            paper="matches fine-tuning with 0.1 % of the parameters on table-to-text (E2E with GPT-2, "
            "Li & Liang 2021 Table 1)",
            method="Prefix-Tuning",
            detail=versus_full(best_prefix, "stored_percent"),
        ),
        judge(
            "the best LoRA run (by BLEU) realises its input records: slot error rate",
            100 * best_any_lora["ser"] if best_any_lora else None,
            "<=",
            5.0,
            paper="E2E systems reach SER of a few % (Dušek et al. 2020)",
            unit=" %",
            method="LoRA",
            detail=best_any_lora["run"] if best_any_lora else "no LoRA run",
        ),
        judge(
            "merged LoRA adds no inference latency: batch-1 decoding-step time / the base's",
            merged,
            "<=",
            1.02,
            paper="no additional inference latency once W = W0 + BA is merged (Hu et al. 2021 §4.2)",
            unit="x",
            method="LoRA",
            detail=(
                "no LoRA model to time"
                if merged is None
                else f"noise floor: a second copy of the base measured {control:.3f}x"
                if control is not None
                else ""
            ),
        ),
    ]


def _plot(rows: list[dict[str, Any]], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(11, 4))
    ax_bleu, ax_ser = fig.subplots(1, 2)
    names = [r["run"] for r in rows]
    colours = [
        {"base": "#bbbbbb", "full": "#555555", "lora": "#1f77b4", "prefix": "#ff7f0e"}[r["method"]]
        for r in rows
    ]
    ax_bleu.bar(names, [r["bleu"] for r in rows], color=colours)
    ax_bleu.set(ylabel="test BLEU", title="table-to-text BLEU (higher is better)")
    ax_ser.bar(names, [100 * r["ser"] for r in rows], color=colours)
    ax_ser.axhline(5, color="k", lw=0.8, ls="--", label="goal for LoRA: 5 %")
    ax_ser.set(ylabel="slot error rate %", title="slot error rate (lower is better)")
    ax_ser.legend()
    for ax in (ax_bleu, ax_ser):
        ax.tick_params(axis="x", rotation=30)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path
