"""The ``llm-decoding`` experiment: faster decoding against plain decoding, on one target.

It takes the target cached by ``llm-pretrain`` (training it first if needed), trains and
caches a small draft model, Medusa heads and MTP modules for it on the same corpus, then
times plain decoding, speculative decoding, prompt lookup, Medusa and MTP on fixed
validation prompts, greedy and sampled, in one process. With ``transformers`` installed
(the dev extra) it also times HF ``generate()`` and HF assisted generation on the HF
exports of the same weights. Every greedy output is checked against plain greedy.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from papernotes.core.cache import is_current, mark_current, recipe_key
from papernotes.core.config import preset, to_dict
from papernotes.core.experiments import ExperimentContext, ExperimentResult, Table
from papernotes.core.train import TrainConfig, short_run, train
from papernotes.llm.data.corpus import LMBatches
from papernotes.llm.experiments.target import DECODING_DIR, ensure_target
from papernotes.llm.generation import medusa, mtp
from papernotes.llm.generation.benchmark import Decoder, benchmark_decoders, validation_prompts
from papernotes.llm.generation.generate import generate
from papernotes.llm.generation.hf_reference import hf_decoder, load_hf_model, transformers_available
from papernotes.llm.generation.lookup import lookup_generate
from papernotes.llm.generation.medusa import train as medusa_train
from papernotes.llm.generation.speculative import speculative_generate
from papernotes.llm.model.config import PRESETS
from papernotes.llm.model.llama import Llama
from papernotes.llm.training.pretrain import model_config_for, pretrain, save_model_dir

logger = logging.getLogger(__name__)

# Training budget for the draft, heads and modules: ~4 minutes of the quick run on 2 cores.
DECODING_SIZES: dict[str, dict[str, Any]] = {
    "tiny": {
        "draft_model": "tiny",
        "draft_steps": 2,
        "medusa_steps": 2,
        "mtp_steps": 2,
        "batch_size": 2,
        "num_draft_tokens": 3,
        "num_prompts": 2,
        "prompt_len": 8,
        "max_new_tokens": 8,
    },
    "quick": {
        "draft_model": "pn-draft",
        "draft_steps": 800,
        "medusa_steps": 200,
        "mtp_steps": 300,
        "batch_size": 8,
        "num_draft_tokens": 4,
        "num_prompts": 4,
        "prompt_len": 64,
        "max_new_tokens": 64,
    },
    "full": {
        "draft_model": "pn-small",
        "draft_steps": 3000,
        "medusa_steps": 1500,
        "mtp_steps": 1500,
        "batch_size": 32,
        "num_draft_tokens": 4,
        "num_prompts": 8,
        "prompt_len": 128,
        "max_new_tokens": 128,
    },
}


def _train_config(steps: int, batch_size: int, seed: int) -> TrainConfig:
    # bf16 autocast: the fastest mode on AVX-512 BF16 CPUs, fp32 master weights (see llm-pretrain)
    return short_run(steps, batch_size, lr=3e-3, min_lr=3e-4, precision="auto", seed=seed)


def run_decoding(ctx: ExperimentContext) -> ExperimentResult:
    shared = ensure_target(ctx)
    size = DECODING_SIZES[ctx.size]
    data = shared.corpus
    seq_len = shared.size["seq_len"]
    target_dir = shared.directory
    target = Llama.from_pretrained(target_dir, dtype=None)
    root = ctx.cache_dir.joinpath(*DECODING_DIR)
    base = {"target": shared.key, "size": size, "seed": ctx.seed}
    trained: dict[str, float] = {}

    # 1. the draft: a smaller Llama on the same corpus and tokenizer
    draft_dir = root / "draft"
    draft_config = model_config_for(data, preset(PRESETS, size["draft_model"], "model preset"))
    key = recipe_key({**base, "draft": to_dict(draft_config)})
    if not is_current(draft_dir, key, ctx.use_cache):
        logger.info("llm-decoding: training the draft %s", size["draft_model"])
        cfg = _train_config(size["draft_steps"], size["batch_size"], ctx.seed)
        draft, result = pretrain(draft_config, cfg, data, seq_len)
        trained["draft_wall_s"] = result.wall_s
        save_model_dir(draft, data.tokenizer, draft_dir)
        mark_current(draft_dir, key)
    draft = Llama.from_pretrained(draft_dir)

    # 2. Medusa heads on the frozen target (Medusa-1)
    medusa_dir = root / "medusa"
    key = recipe_key({**base, "medusa": size["medusa_steps"]})
    if not is_current(medusa_dir, key, ctx.use_cache):
        logger.info("llm-decoding: training Medusa heads")
        heads = medusa.add_medusa_heads(target, medusa.MedusaConfig())
        cfg = _train_config(size["medusa_steps"], size["batch_size"], ctx.seed)
        batches = LMBatches(data.train_tokens, cfg.batch_size, seq_len, ctx.seed)
        result = medusa_train.train_medusa(target, heads, batches, cfg)
        trained["medusa_wall_s"] = result.wall_s
        val = LMBatches(data.val_tokens, cfg.batch_size, seq_len, ctx.seed + 1)
        medusa_train.calibrate_tree(
            target, heads, (val(i) for i in range(4))
        )  # the tree from measured accuracies
        medusa.save_medusa_heads(heads, medusa_dir)
        mark_current(medusa_dir, key)
    heads = medusa.load_medusa_heads(target, medusa_dir)

    # 3. MTP modules on the frozen target
    mtp_dir = root / "mtp"
    key = recipe_key({**base, "mtp": size["mtp_steps"]})
    if not is_current(mtp_dir, key, ctx.use_cache):
        logger.info("llm-decoding: training MTP modules")
        modules = mtp.add_mtp_modules(target, mtp.MTPConfig())
        wrapper = mtp.MTPTrainingModel(target, modules, train_base=False)
        cfg = _train_config(size["mtp_steps"], size["batch_size"], ctx.seed)
        result = train(
            wrapper, mtp.mtp_training_loss, LMBatches(data.train_tokens, cfg.batch_size, seq_len), cfg
        )
        trained["mtp_wall_s"] = result.wall_s
        mtp.save_mtp_modules(modules, mtp_dir)
        mark_current(mtp_dir, key)
    modules = mtp.load_mtp_modules(target, mtp_dir)

    target.eval()
    gamma = size["num_draft_tokens"]
    decoders: dict[str, Decoder] = {
        "plain": lambda ids, cfg: generate(target, ids, cfg),
        "speculative": lambda ids, cfg: speculative_generate(target, draft, ids, cfg, num_draft_tokens=gamma),
        "lookup": lambda ids, cfg: lookup_generate(target, ids, cfg, num_draft_tokens=gamma),
        "medusa": lambda ids, cfg: medusa.medusa_generate(target, heads, ids, cfg),
        "mtp": lambda ids, cfg: mtp.mtp_generate(target, modules, ids, cfg),
    }
    notes = []
    if transformers_available():
        hf_target, hf_draft = load_hf_model(target_dir), load_hf_model(draft_dir)
        decoders["hf-plain"] = hf_decoder(hf_target)
        decoders["hf-assisted-default"] = hf_decoder(hf_target, assistant=hf_draft)
        decoders[f"hf-assisted-gamma{gamma}"] = hf_decoder(
            hf_target, assistant=hf_draft, num_assistant_tokens=gamma
        )
    else:
        notes.append("transformers is not installed: HF generate() was not timed (pip install -e '.[dev]')")
    prompts = validation_prompts(data.val_tokens, size["num_prompts"], size["prompt_len"], seed=ctx.seed)
    rows = benchmark_decoders(decoders, prompts, max_new_tokens=size["max_new_tokens"], seed=ctx.seed)

    figure = _plot(rows, ctx.out_dir / "decoding_speedup.png")
    table_rows = [
        [
            r["method"],
            r["temperature"],
            r["tokens_per_s"],
            r["speedup"],
            r["tokens_per_call"] or None,
            r["acceptance_rate"] if r["drafted"] else None,
            {True: "yes", False: "NO", None: "-"}[r["matches_plain"]],
        ]
        for r in rows
    ]
    by_position = {
        r["method"]: [a / p for a, p in zip(r["accepted_by_position"], r["proposed_by_position"]) if p]
        for r in rows
        if r["temperature"] == 0 and r["drafted"]
    }
    notes.append(
        f"target {target_dir.name}: {target.num_parameters() / 1e6:.2f} M parameters; draft "
        f"{draft.num_parameters() / 1e6:.2f} M; γ = {gamma}; {len(prompts)} validation prompts of "
        f"{size['prompt_len']} tokens, {size['max_new_tokens']} new tokens each, batch 1"
    )
    return ExperimentResult(
        metrics={"rows": rows, "acceptance_by_position": by_position, "trained": trained, "settings": size},
        tables=[
            Table(
                "decoding: tokens/s and speedup over plain decoding on the same target (same run)",
                ["method", "T", "tokens/s", "speedup", "τ tokens/call", "α acceptance", "greedy = plain"],
                table_rows,
            ),
            Table(
                "greedy acceptance by draft position",
                ["method", *[f"pos {i + 1}" for i in range(max(map(len, by_position.values()), default=0))]],
                [[m, *v] for m, v in by_position.items()],
            ),
        ],
        figures=[figure.name],
        notes=notes,
    )


def _plot(rows: list[dict[str, Any]], path: Path) -> Path:
    fig = Figure(figsize=(9, 4))
    ax = fig.subplots()
    methods = list(dict.fromkeys(r["method"] for r in rows))
    temperatures = sorted({r["temperature"] for r in rows})
    width = 0.8 / len(temperatures)
    for j, t in enumerate(temperatures):
        speed = {r["method"]: r["speedup"] for r in rows if r["temperature"] == t}
        xs = [i + (j - (len(temperatures) - 1) / 2) * width for i in range(len(methods))]
        ax.bar(xs, [speed.get(m, 0) for m in methods], width, label=f"T = {t}")
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks(range(len(methods)), methods, rotation=20, ha="right")
    ax.set(ylabel="speedup over plain (tokens/s ratio)", title="decoding speed, batch 1, CPU")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path
