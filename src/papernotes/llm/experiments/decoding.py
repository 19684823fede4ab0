"""The ``llm-decoding`` experiment: faster decoding of the real base, every method against plain decoding.

On SmolLM2-135M-Instruct (fp32, batch 1), in one process:

1. **Self-distillation data** (:mod:`~papernotes.llm.generation.distill`): the base's greedy replies to
   embedded prompts, with its hidden states and next-token distributions, collected in batches.
2. **Drafters**, each trained on that data and cached by recipe (a second run only benchmarks):
   a draft model distilled from the base (two of its layers, DistillSpec's forward KL) proposing from the
   K most frequent tokens (FR-Spec); Medusa-1 heads on the frozen base, sharing its LM head; one MTP module
   on the frozen base, used as a chain drafter (EAGLE-style). Prompt lookup needs no training.
3. **Choices from measured costs** (:mod:`~papernotes.llm.generation.cost`): the cost of one forward of
   w new tokens is measured on this machine; γ, the Medusa tree and the MTP chain length are the ones that
   maximise expected tokens/s given the measured acceptance.
4. **Benchmark**, per prompt kind (input-grounded, open, short Q&A), greedy and T = 0.8: tokens/s, speedup
   over our plain decoding in the same run, τ and α per position; HF ``generate``, HF assisted generation
   with our draft (HF's defaults and our γ) and HF prompt lookup on the same prompts. Every greedy output
   of every lossless method is checked against plain greedy.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from papernotes.core.cache import is_current, mark_current, recipe_key
from papernotes.core.experiments import ExperimentContext, ExperimentResult
from papernotes.core.timing import median_seconds
from papernotes.core.train import short_run, train
from papernotes.llm.data.prompts import KINDS, chat_prompts, distillation_prompts
from papernotes.llm.experiments.decoding_report import decoding_goals, notes, plot_cost, plot_speed, tables
from papernotes.llm.experiments.target import BASE_ACCELERATORS, Base, ensure_base
from papernotes.llm.generation import medusa, mtp
from papernotes.llm.generation.benchmark import Decoder, benchmark_decoders
from papernotes.llm.generation.cost import CostCurve, choose_gamma, choose_tree, measure_forward_cost
from papernotes.llm.generation.decoders import DECODING_CHOICES, FREQUENT_TOKENS, load_draft
from papernotes.llm.generation.distill import DistillBatches, DistillData, collect, predicts_reply
from papernotes.llm.generation.draft import (
    DistillModel,
    DraftConfig,
    FrequentVocabDraft,
    distill_training_loss,
    draft_from_target,
)
from papernotes.llm.generation.frequent_vocab import VocabHead, frequent_tokens
from papernotes.llm.generation.generate import generate
from papernotes.llm.generation.hf_reference import hf_decoder, load_hf_model, transformers_available
from papernotes.llm.generation.lookup import lookup_generate
from papernotes.llm.generation.medusa.train import state_topk_accuracy, train_medusa_on_states
from papernotes.llm.generation.speculative import speculative_generate
from papernotes.llm.model.llama import Llama
from papernotes.llm.training.pretrain import save_model_dir
from papernotes.nn.fast_linear import clear_linear_forms
from papernotes.nn.linear_tuning import KERNELS_DIR, TuneReport, tune_linears

logger = logging.getLogger(__name__)

# bump when the training code changes what the same recipe produces (2: trained and scored on replies only)
RECIPE_VERSION = 2
DECODING_SIZES: dict[str, dict[str, Any]] = {
    "tiny": {
        "train_prompts": 4,
        "validation_prompts": 2,
        "train_new_tokens": 8,
        "frequent_vocab": 1024,
        "draft_layers": (0,),
        "draft_steps": 2,
        "medusa_heads": 2,
        "medusa_steps": 2,
        "mtp_depths": 2,
        "mtp_steps": 2,
        "batch_size": 2,
        "seq_len": 32,
        "lr": 3e-4,
        "prompts_per_kind": 1,
        "kinds": ("open",),  # tiny: one kind, greedy only (a smoke test, not a measurement)
        "temperatures": (0.0,),
        "max_new_tokens": 6,
        "cost_widths": (1, 2, 3, 5),
        "cost_repeats": 1,
        "lookup_tokens": 4,
    },
    "quick": {  # the 6-minute share of the default run: 348 s with a fresh cache on 2 AVX2 cores
        "train_prompts": 40,
        "validation_prompts": 6,
        "train_new_tokens": 80,
        "frequent_vocab": 8192,
        "draft_layers": (0, -1),
        "draft_steps": 64,
        "medusa_heads": 3,
        "medusa_steps": 64,
        "mtp_depths": 3,
        "mtp_steps": 50,
        "batch_size": 4,
        "seq_len": 128,
        "lr": 3e-4,
        "prompts_per_kind": 1,
        "kinds": KINDS,
        "temperatures": (0.0, 0.8),
        # at T = 0.8 only our methods (the budget): the goals, and the HF peers, are greedy
        "sampled": ("speculative", "lookup", "medusa", "mtp"),
        "max_new_tokens": 40,
        "cost_widths": (1, 2, 3, 5, 9, 17, 33, 65),
        "cost_repeats": 3,
        "lookup_tokens": 4,
    },
    "full": {  # about 45 minutes on 2 AVX2 cores: 5x the data and 6x the training of the quick size
        "train_prompts": 192,
        "validation_prompts": 16,
        "train_new_tokens": 128,
        "frequent_vocab": 8192,
        "draft_layers": (0, -1),
        "draft_steps": 400,
        "medusa_heads": 4,
        "medusa_steps": 400,
        "mtp_depths": 4,
        "mtp_steps": 300,
        "batch_size": 8,
        "seq_len": 192,
        "lr": 3e-4,
        "prompts_per_kind": 3,
        "kinds": KINDS,
        "temperatures": (0.0, 0.8),
        "sampled": ("speculative", "lookup", "medusa", "mtp"),
        "max_new_tokens": 96,
        "cost_widths": (1, 2, 3, 5, 9, 17, 33, 65),
        "cost_repeats": 5,
        "lookup_tokens": 4,
    },
}


def _benchmark_prompts(base: Base, size: dict[str, Any], seed: int) -> dict[str, list[torch.Tensor]]:
    """Per kind, the benchmark prompts as (1, T) ids in the base's chat template."""
    out = {}
    for kind in size["kinds"]:
        texts = [p.text for p in chat_prompts(kind, size["prompts_per_kind"], seed=seed)]
        out[kind] = [
            torch.tensor([base.chat.encode(base.tokenizer, [{"role": "user", "content": t}], True).ids])
            for t in texts
        ]
    return out


def _data(base: Base, size: dict[str, Any], exclude: list[str], seed: int) -> tuple[DistillData, DistillData]:
    count = size["train_prompts"] + size["validation_prompts"]
    prompts = distillation_prompts(count, exclude=exclude, seed=seed)
    data = collect(base.model, base.tokenizer, base.chat, prompts, size["train_new_tokens"])
    return data.split(size["validation_prompts"])


def _train_config(size: dict[str, Any], steps: int, seed: int) -> Any:
    # precision "auto": bf16 only where the CPU computes it natively (14x slower than fp32 on AVX2)
    return short_run(steps, size["batch_size"], lr=size["lr"], precision="auto", seed=seed)


def run_decoding(ctx: ExperimentContext) -> ExperimentResult:
    base = ensure_base(ctx)
    try:
        return _run(ctx, base)
    finally:
        clear_linear_forms(base.model)  # later experiments share the base: give it back as it was loaded


def _tune(ctx: ExperimentContext, target: Llama, size: dict[str, Any]) -> TuneReport:
    # each projection's fastest matrix form per row count, measured once per machine (cached with the
    # run's models); it also speeds the batched generation of the self-distillation data
    return tune_linears(
        target,
        rows=size["cost_widths"],
        repeats=size["cost_repeats"],
        cache_dir=ctx.cache_dir / KERNELS_DIR,
        use_cache=ctx.use_cache,
    )


def _run(ctx: ExperimentContext, base: Base) -> ExperimentResult:
    size = DECODING_SIZES[ctx.size]
    target = base.model
    root = ctx.cache_dir.joinpath(*BASE_ACCELERATORS)
    prompts = _benchmark_prompts(base, size, ctx.seed)
    bench_texts = [
        p.text for kind in KINDS for p in chat_prompts(kind, size["prompts_per_kind"], seed=ctx.seed)
    ]
    recipe = {"base": base.key, "size": size, "seed": ctx.seed, "version": RECIPE_VERSION}
    keys = {name: recipe_key({**recipe, "drafter": name}) for name in ("draft", "medusa", "mtp")}
    dirs = {name: root / name for name in keys}
    stale = [name for name in keys if not is_current(dirs[name], keys[name], ctx.use_cache)]
    trained: list[str] = []
    train_s: dict[str, float] = {}
    data = validation = None
    if stale:
        if ctx.use_cache and any((dirs[n] / "papernotes_recipe.txt").is_file() for n in stale):
            logger.info(
                "llm-decoding: the cached %s were built by another recipe; retraining", ", ".join(stale)
            )
        start = time.perf_counter()
        _tune(ctx, target, size)
        data, validation = _data(base, size, bench_texts, ctx.seed)
        clear_linear_forms(target)  # the drafters train with autograd, on the base's weights as loaded
        train_s["self-distillation data"] = time.perf_counter() - start
        vocab = frequent_tokens(data.ids, target.config.vocab_size, size["frequent_vocab"])
        head = VocabHead(target.lm_head.weight, vocab)
        batches = DistillBatches(data, size["batch_size"], size["seq_len"], ctx.seed)
        if "draft" in stale:
            train_s["draft"] = _train_draft(base, size, head, batches, dirs["draft"], ctx.seed)
        if "medusa" in stale:
            train_s["medusa"] = _train_medusa(base, size, vocab, batches, dirs["medusa"], ctx.seed)
        if "mtp" in stale:
            train_s["mtp"] = _train_mtp(base, size, head, batches, dirs["mtp"], ctx.seed)
        for name in stale:
            mark_current(dirs[name], keys[name])
        trained = [f"{name} ({train_s[name]:.0f} s)" for name in stale] + [
            f"self-distillation data: {data.num_tokens} tokens ({train_s['self-distillation data']:.0f} s)"
        ]

    tuning = _tune(ctx, target, size)  # part 0: plain decoding, the baseline, and verification alike
    # measured costs decide γ, the tree and the chain: on this machine, every run
    cost = measure_forward_cost(target, size["cost_widths"], repeats=size["cost_repeats"])
    draft, _ = load_draft(target, dirs["draft"])
    heads = medusa.load_medusa_heads(target, dirs["medusa"])
    modules = mtp.load_mtp_modules(target, dirs["mtp"])
    choices = _choose(base, size, cost, draft, heads, modules, dirs, validation, ctx.seed)

    decoders = _decoders(base, draft, heads, modules, dirs, choices, size)
    rows, bench_start = [], time.perf_counter()
    for i, (kind, kind_prompts) in enumerate(prompts.items()):
        for row in benchmark_decoders(
            decoders,
            kind_prompts,
            size["temperatures"],
            max_new_tokens=size["max_new_tokens"],
            seed=ctx.seed,
            sampled=size.get("sampled"),
            warm_up=i == 0,  # one warm-up per decoder, not per kind
        ):
            rows.append({"kind": kind, **row})
    bench_s = time.perf_counter() - bench_start
    figures = [plot_speed(rows, ctx.out_dir / "decoding_speedup.png").name]
    figures.append(plot_cost(cost, choices, ctx.out_dir / "cost_curve.png").name)
    limit = _memory_limit(target)
    plain = statistics.mean(
        r["tokens_per_s"] for r in rows if r["method"] == "plain" and r["temperature"] == 0
    )
    return ExperimentResult(
        metrics={
            "rows": rows,
            "cost": {str(w): s for w, s in cost.seconds.items()},
            "cost_relative": {str(w): r for w, r in cost.relative().items()},
            "choices": choices,
            "kernel_forms": tuning.as_dict(),
            "memory_limit_tokens_per_s": limit,
            "plain_tokens_per_s": plain,
            "train_seconds": train_s,  # "self-distillation data" includes the kernel tuning before it
            "benchmark_seconds": bench_s,
            "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in size.items()},
        },
        tables=tables(rows, cost, choices, limit, plain),
        figures=figures,
        notes=[
            *notes(base, size, choices),
            f"each projection's matrix form is chosen by measurement (tune_linears, {tuning.seconds:.0f} s): "
            f"{tuning.extra_bytes / 2**20:.0f} MiB of weight copies beside "
            f"{tuning.weight_bytes / 2**20:.0f} MiB of weights; plain decoding, the baseline, runs on "
            "the same tuned model",
        ],
        goals=decoding_goals(rows, cost, plain, limit),
        trained=trained,
        reused=[] if not set(keys) - set(stale) else [f"{n} ({dirs[n]})" for n in keys if n not in stale],
    )


def _train_draft(
    base: Base, size: dict[str, Any], head: VocabHead, batches: DistillBatches, directory: Path, seed: int
) -> float:
    logger.info("llm-decoding: distilling the draft (layers %s of the base)", size["draft_layers"])
    draft = draft_from_target(base.model, DraftConfig(layers=tuple(size["draft_layers"])))
    draft_head = VocabHead(draft.lm_head.weight, head.tokens)  # the draft's own (frozen) copy of the rows
    result = train(
        DistillModel(draft, draft_head),
        distill_training_loss,
        batches,
        _train_config(size, size["draft_steps"], seed),
    )
    save_model_dir(draft.eval(), base.tokenizer, directory)
    (directory / FREQUENT_TOKENS).write_text(json.dumps(head.tokens.tolist()))
    return result.wall_s


def _train_medusa(
    base: Base, size: dict[str, Any], vocab: torch.Tensor, batches: DistillBatches, directory: Path, seed: int
) -> float:
    logger.info("llm-decoding: training %d Medusa heads on the frozen base", size["medusa_heads"])
    config = medusa.MedusaConfig(num_heads=size["medusa_heads"], share_lm_head=True)
    heads = medusa.add_medusa_heads(base.model, config, vocab=vocab)
    result = train_medusa_on_states(heads, batches, _train_config(size, size["medusa_steps"], seed))
    medusa.save_medusa_heads(heads.eval(), directory)
    return result.wall_s


def _train_mtp(
    base: Base, size: dict[str, Any], head: VocabHead, batches: DistillBatches, directory: Path, seed: int
) -> float:
    logger.info(
        "llm-decoding: training an MTP module on the frozen base, chained over %d depths", size["mtp_depths"]
    )
    model = base.fresh()  # the wrapper freezes the base it holds; the shared one stays as it is
    modules = mtp.add_mtp_modules(model, mtp.MTPConfig(depth=1, num_drafts=size["mtp_depths"]))
    modules.vocab = head.tokens.clone()
    wrapper = mtp.MTPStateModel(model, modules, modules.head(model), size["mtp_depths"])
    result = train(wrapper, lambda m, batch: m(batch), batches, _train_config(size, size["mtp_steps"], seed))
    mtp.save_mtp_modules(modules.eval(), directory)
    return result.wall_s


ACCEPTANCE_FILE = "acceptance.json"  # in each drafter's folder: what it achieved on held-out replies


def _save_acceptance(directory: Path, **values: Any) -> None:
    (directory / ACCEPTANCE_FILE).write_text(json.dumps(values, indent=2))


def _acceptance(directory: Path) -> dict[str, Any]:
    path = directory / ACCEPTANCE_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


@torch.inference_mode()
def measure_acceptance(
    base: Base,
    draft: Llama,
    head: VocabHead,
    heads: Any,
    modules: Any,
    validation: DistillData,
    size: dict[str, Any],
) -> dict[str, Any]:
    """Held-out agreement with the base's greedy choice: draft top-1, Medusa top-k, MTP top-1 per depth."""
    batches = [
        DistillBatches(validation, size["batch_size"], size["seq_len"], seed=10_000 + i)(0) for i in range(4)
    ]
    hits = count = 0
    for batch in batches:
        hidden = draft(batch["input_ids"], attention_mask=batch["mask"], logits=False)  # (B, L, E)
        guess = head.ids(head.logits(hidden).argmax(-1))  # (B, L)
        scored = predicts_reply(batch)  # guesses of reply tokens: what the draft proposes when decoding
        hits += int(((guess == batch["top_ids"][..., 0]) & scored).sum())
        count += int(scored.sum())
    mtp_acc = mtp.depth_accuracy(base.model, modules, batches, modules.head(base.model), size["mtp_depths"])
    return {
        "draft_top1": hits / max(count, 1),
        "medusa_topk": state_topk_accuracy(heads, batches, k_max=heads.config.top_k).tolist(),
        "mtp_top1_by_depth": mtp_acc,
    }


@torch.inference_mode()
def _choose(
    base: Base,
    size: dict[str, Any],
    cost: CostCurve,
    draft: Any,
    heads: Any,
    modules: Any,
    dirs: dict[str, Path],
    validation: DistillData | None,
    seed: int,
) -> dict[str, Any]:
    """γ, the Medusa tree and the MTP chain maximising expected tokens/s here; saved for `llm chat`."""
    if (
        validation is not None
    ):  # freshly trained: measure acceptance on held-out replies, keep it with the drafters
        accepted = measure_acceptance(base, draft.model, draft.head, heads, modules, validation, size)
        for name in dirs:
            _save_acceptance(dirs[name], **accepted)
    accepted = _acceptance(dirs["draft"])
    target = base.model
    ids = torch.randint(0, target.config.vocab_size, (1, 1), generator=torch.Generator().manual_seed(seed))
    cache = draft.setup_cache(1, 8)
    draft_s = median_seconds(lambda: (draft(ids, cache=cache), cache.crop(0)))
    hidden = torch.zeros(target.config.hidden_size)
    heads_s = median_seconds(lambda: heads(hidden))
    gamma, gamma_rates = choose_gamma(cost, draft_s, [accepted.get("draft_top1", 0.0)])
    topk = torch.tensor(accepted.get("medusa_topk") or [[0.0]])
    tree, tree_rates = choose_tree(cost, topk, heads_s)
    mtp_s = draft_s  # a module (one block) plus the frequent head costs about one draft layer's step
    chain, chain_rates = choose_gamma(
        cost, mtp_s, accepted.get("mtp_top1_by_depth") or [0.0], size["mtp_depths"]
    )
    # keep the choices beside the drafters, where `llm generate` and `llm chat` read them
    (dirs["draft"] / DECODING_CHOICES).write_text(json.dumps({"num_draft_tokens": gamma}))
    heads.tree = tree
    medusa.save_medusa_heads(heads, dirs["medusa"])
    modules.config.num_drafts = chain
    mtp.save_mtp_modules(modules, dirs["mtp"])
    return {
        "gamma": gamma,
        "gamma_expected_tokens_per_s": gamma_rates,
        "draft_cost": draft_s / cost(1),
        "medusa_tree": [list(p) for p in tree],
        "medusa_tree_expected_tokens_per_s": tree_rates,
        "medusa_heads_cost": heads_s / cost(1),
        "mtp_chain": chain,
        "mtp_chain_expected_tokens_per_s": chain_rates,
        "acceptance": accepted,
    }


def _decoders(
    base: Base,
    draft: Any,
    heads: Any,
    modules: Any,
    dirs: dict[str, Path],
    choices: dict[str, Any],
    size: dict,
) -> dict[str, Decoder]:
    target, gamma, lookup_gamma = base.model, choices["gamma"], size["lookup_tokens"]
    tree, chain = choices["medusa_tree"], choices["mtp_chain"]
    full_draft = draft.model if isinstance(draft, FrequentVocabDraft) else draft
    decoders: dict[str, Decoder] = {
        "plain": lambda ids, cfg: generate(target, ids, cfg),
        "speculative": lambda ids, cfg: speculative_generate(target, draft, ids, cfg, num_draft_tokens=gamma),
        "speculative-full-vocab": lambda ids, cfg: speculative_generate(
            target, full_draft, ids, cfg, num_draft_tokens=gamma
        ),
        "lookup": lambda ids, cfg: lookup_generate(target, ids, cfg, num_draft_tokens=lookup_gamma),
        "medusa": lambda ids, cfg: medusa.medusa_generate(target, heads, ids, cfg, tree=tree),
        "mtp": lambda ids, cfg: mtp.mtp_generate(target, modules, ids, cfg, num_drafts=chain),
    }
    if transformers_available():
        hf_target, hf_draft = load_hf_model(base.directory), load_hf_model(dirs["draft"])
        decoders["hf-plain"] = hf_decoder(hf_target)
        decoders["hf-assisted-default"] = hf_decoder(hf_target, assistant=hf_draft)
        decoders[f"hf-assisted-gamma{gamma}"] = hf_decoder(
            hf_target, assistant=hf_draft, num_assistant_tokens=gamma
        )
        decoders["hf-lookup"] = hf_decoder(hf_target, prompt_lookup=lookup_gamma)
    return decoders


def _memory_limit(model: Llama) -> float:
    """Tokens/s if a decoding step cost only one read of the weights at the measured bandwidth."""
    weights = [p for p in model.parameters()]
    nbytes = sum(p.numel() * p.element_size() for p in weights)
    seconds = median_seconds(lambda: [p.sum() for p in weights], repeats=3)  # one pass over every weight
    return 1.0 / seconds if seconds > 0 and nbytes else float("nan")
