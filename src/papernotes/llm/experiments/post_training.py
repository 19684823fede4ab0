"""The ``llm-post-training`` experiment: base -> SFT -> rejection-sampling SFT -> DPO, as in Llama 3 §4.

Starting from SmolLM2-135M-Instruct (:func:`~papernotes.llm.experiments.target.ensure_base`), every stage
runs on the embedded instruction tasks with verifiable answers
(:mod:`papernotes.llm.data.tasks.instructions`), each conversation in the base's own ChatML template:

1. **SFT** on the training conversations (reference answers), assistant tokens only, packed rows; through a
   LoRA adapter on every linear layer (frozen weights: no weight gradients), merged afterwards. The full size
   also trains full SFT beside it, for comparison.
2. **Rejection sampling**: K samples per training prompt from the SFT model, scored by the verifiers; the
   shortest correct sample per prompt is kept, and (correct, incorrect) samples of one prompt become
   preference pairs. A second SFT round (RS-SFT) trains on the kept samples mixed with references.
3. **DPO** on the pairs (β = 0.1, NLL weight 0.2), through a LoRA adapter, against the RS-SFT model as
   the frozen reference (its log-probabilities are taken before the adapter is attached).

Each stage is scored on the test split (greedy): accuracy by the task verifiers, per task, on the phrasings
training saw and on the two held out; mean reply length; preference accuracy (chosen log-prob > rejected)
on pairs sampled the same way from validation prompts, which no stage trains on; perplexity on held-out
English text and replies to a few general prompts, to catch forgetting.

Cached by recipe under ``<cache>/llm/post_training/<size>/``: each stage's adapter and scores, the sampled
pairs, and the final model as an HF directory with the base's chat template (``papernotes llm chat --model``
it).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from papernotes.core.cache import (
    is_current,
    machine_recipe,
    mark_current,
    read_record,
    recipe_key,
    write_record,
)
from papernotes.core.experiments import ExperimentContext, ExperimentResult
from papernotes.core.precision import resolve_precision
from papernotes.llm.data.prompts import chat_prompts
from papernotes.llm.data.tasks.instructions import (
    Instruction,
    InstructionConfig,
    conversation,
    make_instructions,
)
from papernotes.llm.experiments.base import english_ids, perplexity
from papernotes.llm.experiments.post_training_report import plot, post_training_goals, tables
from papernotes.llm.experiments.target import Base, ensure_base
from papernotes.llm.generation.responses import respond, score_instructions
from papernotes.llm.model.llama import Llama
from papernotes.llm.peft import lora
from papernotes.llm.training import preference, sft

logger = logging.getLogger(__name__)

POST_DIR = ("llm", "post_training")  # stage adapters, records and the final model, per size, in the cache
RECIPE_VERSION = 3  # bump when the code changes what the same recipe produces

# Budget: the quick size is at most ~6 minutes on 2 AVX2 cores with a fresh cache (fp32). Every stage
# trains a LoRA adapter (frozen weights: no weight gradients), rows are short, and sampling, scoring and
# log-probabilities run in batches.
POST_SIZES: dict[str, dict[str, Any]] = {
    "tiny": {
        "train_size": 14,
        "test_size": 7,
        "validation_size": 7,
        "sft_steps": 2,
        "full_sft": False,
        "rows": 2,
        "max_length": 96,
        "rs_prompts": 3,
        "k": 2,
        "rs_steps": 1,
        "dpo_steps": 1,
        "dpo_batch": 2,
        "max_new_tokens": 4,
        "general_prompts": 1,
        "general_new_tokens": 4,
        "ppl_tokens": 64,
        "ppl_window": 64,
    },
    "quick": {
        "train_size": 2000,
        "test_size": 70,
        "validation_size": 28,
        "sft_steps": 20,
        "full_sft": False,
        "rows": 8,
        "max_length": 128,
        "rs_prompts": 28,
        "k": 4,
        "rs_steps": 6,
        "dpo_steps": 6,
        "dpo_batch": 8,
        "max_new_tokens": 40,
        "general_prompts": 3,
        "general_new_tokens": 32,
        "ppl_tokens": 1024,
        "ppl_window": 512,
    },
    "full": {
        "train_size": 4000,
        "test_size": 140,
        "validation_size": 70,
        "sft_steps": 80,
        "full_sft": True,
        "rows": 8,
        "max_length": 128,
        "rs_prompts": 140,
        "k": 4,
        "rs_steps": 30,
        "dpo_steps": 40,
        "dpo_batch": 8,
        "max_new_tokens": 48,
        "general_prompts": 6,
        "general_new_tokens": 64,
        "ppl_tokens": 4096,
        "ppl_window": 512,
    },
}
# LoRA on every linear layer for SFT (as QLoRA and most chat fine-tunes do), rank 16, α = 2r; SFT's learning
# rate comes from the sweep in docs/post_training.md (20 quick steps: 1e-3 → 37 %, 2e-3 → 46 % test accuracy)
SFT_LORA = lora.LoraConfig(r=16, lora_alpha=32, target_modules=lora.ALL_LINEAR)
LR = {"sft": 2e-3, "sft-full": 5e-5, "rs-sft": 5e-4, "dpo": 2e-4}
BATCH = 72  # prompts decoded together: the quick size's 70 test prompts in one batch


def run_post_training(ctx: ExperimentContext) -> ExperimentResult:
    size = POST_SIZES[ctx.size]
    start = time.perf_counter()
    base = ensure_base(ctx)
    data = _data(base, size, ctx.seed)
    folder = ctx.cache_dir.joinpath(*POST_DIR, ctx.size)  # sizes apart: a quick run never waits on a full one
    english = english_ids(base)[: size["ppl_tokens"] + 1]
    general = [
        p.text for kind in ("short-qa", "open") for p in chat_prompts(kind, size["general_prompts"], ctx.seed)
    ]
    general = general[: size["general_prompts"]]
    key = recipe_key(
        {
            "version": RECIPE_VERSION,
            "base": base.key,
            "size": size,
            "lr": LR,
            "seed": ctx.seed,
            "machine": machine_recipe(),
        }
    )
    trained: list[str] = []
    reused: list[str] = [f"{base.path.name} (dequantised)"]
    timings: dict[str, float] = {}
    losses: dict[str, list[float]] = {}  # training losses of the stages trained in this run
    rows: list[dict[str, Any]] = []
    per_task: dict[str, dict[str, float]] = {}
    samples: list[dict[str, Any]] = []
    replies: dict[str, list[str]] = {}

    def score(name: str, model: Llama, held_out: list[preference.PreferencePair]) -> None:
        """Score a stage (or read its scores, cached beside its adapter)."""
        path = folder / f"{name}.json"
        record = read_record(path, recipe_key([key, name, [_pair_json(p) for p in held_out]]), ctx.use_cache)
        if record is None:
            t0 = time.perf_counter()
            scores = score_instructions(
                model,
                base.tokenizer,
                data["test"],
                size["max_new_tokens"],
                samples=7,
                chat=base.chat,
                batch_size=BATCH,
            )
            pref = (
                preference.preference_accuracy(model, base.tokenizer, held_out, base.chat)
                if held_out
                else float("nan")
            )
            ppl, _ = perplexity(model, english, size["ppl_window"], size["ppl_tokens"])
            answers = respond(
                model,
                base.tokenizer,
                [[{"role": "user", "content": text}] for text in general],
                size["general_new_tokens"],
                chat=base.chat,
            )
            record = {
                "row": {
                    "stage": name,
                    "accuracy": scores.accuracy,
                    "seen_accuracy": scores.seen_accuracy,
                    "unseen_accuracy": scores.unseen_accuracy,
                    "preference_accuracy": pref,
                    "mean_length": scores.mean_length,
                    "perplexity": ppl,
                    "train_s": timings.get(name, 0.0),
                    "eval_s": time.perf_counter() - t0,
                },
                "per_task": scores.per_task,
                "samples": scores.samples,
                "general": [a[0].text for a in answers],
            }
            write_record(path, recipe_key([key, name, [_pair_json(p) for p in held_out]]), record)
        rows.append(record["row"])
        per_task[name] = record["per_task"]
        samples.extend({"stage": name, **s} for s in record["samples"])
        replies[name] = record["general"]

    def stage(name: str, parent: Llama, train_fn) -> Llama:
        """``parent`` after the stage's LoRA adapter (trained now, or read from the cache), merged."""
        directory = folder / name
        stage_key = recipe_key([key, name])
        model = parent
        if is_current(directory, stage_key, ctx.use_cache):
            lora.load_adapter(model, directory)
            reused.append(f"{name} adapter ({directory})")
        else:
            t0 = time.perf_counter()
            losses[name] = train_fn(model)
            timings[name] = time.perf_counter() - t0
            lora.save_adapter(model, directory, base_model_name_or_path=str(base.directory))
            mark_current(directory, stage_key)
            trained.append(f"{name} (LoRA adapter, merged)")
        return lora.merge_and_unload(model).eval()

    # the held-out preference pairs come from the SFT model; the base is scored on them afterwards
    model = base.fresh()
    sft_conversations = [conversation(e) for e in data["train"]]

    def train_sft(m: Llama) -> list[float]:
        config = sft.SFTConfig(
            method="lora",
            lora=SFT_LORA,
            steps=size["sft_steps"],
            batch_size=size["rows"],
            max_length=size["max_length"],
            lr=LR["sft"],
            seed=ctx.seed,
        )
        return sft.sft(m, base.tokenizer, sft_conversations, config, chat=base.chat).train_losses

    model = stage("sft", model, train_sft)
    t0 = time.perf_counter()
    sampled = _sample(ctx, folder, key, model, base, data, size)
    timings["rejection sampling"] = time.perf_counter() - t0  # near 0 when read from the cache
    rs, held_out = sampled["train"], sampled["held_out"]
    score("base", base.model, held_out)
    score("sft", model, held_out)
    if size[
        "full_sft"
    ]:  # full SFT beside the LoRA one, for the comparison only (the pipeline goes on from LoRA)
        full = base.fresh()
        path = folder / "sft-full.json"
        if (
            read_record(path, recipe_key([key, "sft-full", [_pair_json(p) for p in held_out]]), ctx.use_cache)
            is None
        ):
            t0 = time.perf_counter()
            config = sft.SFTConfig(
                method="full",
                steps=size["sft_steps"],
                batch_size=size["rows"],
                max_length=size["max_length"],
                lr=LR["sft-full"],
                seed=ctx.seed,
            )
            losses["sft-full"] = sft.sft(
                full, base.tokenizer, sft_conversations, config, chat=base.chat
            ).train_losses
            timings["sft-full"] = time.perf_counter() - t0
            trained.append("sft-full (every weight)")
        score("sft-full", full, held_out)
        del full

    kept = [conversation(e, reply) for e, reply in rs["best"]]
    # the kept samples alone are few at this scale: they are mixed with reference answers of other training
    # prompts, as Llama 3 mixes rejection-sampled data with its other SFT sources
    rest = [conversation(e) for e in data["train"][size["rs_prompts"] :]]
    mixture = kept + rest[: max(len(kept), 4 * size["rows"])]

    def train_rs(m: Llama) -> list[float]:
        config = sft.SFTConfig(
            method="lora",
            lora=SFT_LORA,
            steps=size["rs_steps"],
            batch_size=size["rows"],
            max_length=size["max_length"],
            lr=LR["rs-sft"],
            seed=ctx.seed + 1,
        )
        return sft.sft(m, base.tokenizer, mixture, config, chat=base.chat).train_losses

    model = stage("rs-sft", model, train_rs)
    score("rs-sft", model, held_out)
    unseen = sum(e.unseen for e in data["test"])
    notes = [
        f"base {base.path.name}, trained in {resolve_precision('auto')} (precision auto), every prompt in "
        "its ChatML template (with its default system line); "
        f"{len(data['train'])} training conversations, {len(data['test'])} test examples ({unseen} in "
        f"held-out phrasings), greedy, ≤ {size['max_new_tokens']} new tokens",
        f"SFT: LoRA r = {SFT_LORA.r} on every linear layer, {size['sft_steps']} steps of {size['rows']} "
        f"packed rows of {size['max_length']} tokens, LR {LR['sft']}; RS-SFT {size['rs_steps']} steps at "
        f"{LR['rs-sft']} on {len(kept)} kept samples + {len(mixture) - len(kept)} references; DPO "
        f"{size['dpo_steps']} steps of {size['dpo_batch']} pairs at {LR['dpo']} (LoRA r = 8 on every linear "
        "layer), β = 0.1, NLL weight 0.2",
        f"rejection sampling on {size['rs_prompts']} training prompts, K = {size['k']}, T = 0.8: pass@K "
        f"{rs['pass_at_k']:.2f}, sample accuracy {rs['sample_accuracy']:.2f}, {len(rs['best'])} kept, "
        f"{len(rs['pairs'])} pairs; held-out pairs from {len(data['validation'])} validation prompts: "
        f"{len(held_out)} (the reference answer is the chosen reply where no sample is correct)",
    ]
    pairs = rs["pairs"]
    if pairs:
        reference_logps_from = model  # the RS-SFT model is the frozen reference: scored before LoRA attaches

        def train_dpo(m: Llama) -> list[float]:
            config = preference.DPOConfig(
                steps=size["dpo_steps"],
                batch_size=size["dpo_batch"],
                lr=LR["dpo"],
                method="lora",
                lora=lora.LoraConfig(r=8, lora_alpha=16, target_modules=lora.ALL_LINEAR),
                seed=ctx.seed,
            )
            return preference.dpo(m, reference_logps_from, base.tokenizer, pairs, config, chat=base.chat)

        model = stage("dpo", model, train_dpo)
        score("dpo", model, held_out)
        final = folder / "model"
        final_key = recipe_key([key, "dpo", "model"])
        if not is_current(final, final_key, ctx.use_cache):
            sft.save_chat_model(model, base.tokenizer, final, template_from=base.directory)
            mark_current(final, final_key)
        notes.append(f"the DPO model, with the base's chat template: papernotes llm chat --model {final}")
    else:
        notes.append("DPO skipped: rejection sampling produced no (correct, incorrect) pair")

    figure = plot(rows, per_task, ctx.out_dir / "post_training.png")
    return ExperimentResult(
        metrics={
            "stages": rows,
            "per_task": per_task,
            "samples": samples,
            "general_replies": {"prompts": general, **replies},
            "timings": timings,
            "train_losses": losses,
            "rejection": {
                "pass_at_k": rs["pass_at_k"],
                "sample_accuracy": rs["sample_accuracy"],
                "kept": len(rs["best"]),
                "pairs": len(rs["pairs"]),
                "held_out_pairs": len(held_out),
            },
            "settings": size,
            "seconds": time.perf_counter() - start,
        },
        tables=tables(rows, per_task, general, replies, samples),
        figures=[figure.name],
        notes=notes,
        goals=post_training_goals(rows),
        trained=trained,
        reused=reused,
    )


def _data(base: Base, size: dict[str, Any], seed: int) -> dict[str, list[Instruction]]:
    """The instruction splits, keeping what fits a packed row with room for a sampled reply."""
    data = make_instructions(
        InstructionConfig(
            train_size=size["train_size"],
            validation_size=size["validation_size"],
            test_size=size["test_size"],
            seed=seed,
        )
    )
    room = min(size["max_length"], base.model.config.max_position_embeddings) - size["max_new_tokens"]

    def fits(e: Instruction) -> bool:
        return len(base.chat.encode(base.tokenizer, conversation(e)).ids) <= room

    return {split: [e for e in examples if fits(e)] for split, examples in data.items()}


def _pair_json(pair: preference.PreferencePair) -> dict[str, Any]:
    return {"prompt": list(pair.prompt), "chosen": pair.chosen, "rejected": pair.rejected}


def _sample(
    ctx: ExperimentContext,
    folder: Path,
    key: str,
    model: Llama,
    base: Base,
    data: dict[str, list[Instruction]],
    size: dict[str, Any],
) -> dict[str, Any]:
    """Rejection sampling from the SFT model on training prompts; held-out pairs from validation prompts."""
    path = folder / "rejection_sampling.json"
    sample_key = recipe_key([key, "rejection-sampling"])
    record = read_record(path, sample_key, ctx.use_cache)
    if record is None:
        common = {"max_new_tokens": size["max_new_tokens"], "reference_chosen": True, "chat": base.chat}
        train = preference.rejection_sample(
            model, base.tokenizer, data["train"][: size["rs_prompts"]], size["k"], seed=ctx.seed, **common
        )
        held_out = preference.rejection_sample(
            model, base.tokenizer, data["validation"], size["k"], seed=ctx.seed + 1, **common
        )
        index = {e.prompt: i for i, e in enumerate(data["train"])}
        record = {
            "train": {
                "best": [[index[e.prompt], reply] for e, reply in train.best],
                "pairs": [_pair_json(p) for p in train.pairs],
                "pass_at_k": train.pass_at_k,
                "sample_accuracy": train.sample_accuracy,
            },
            "held_out": [_pair_json(p) for p in held_out.pairs],
        }
        write_record(path, sample_key, record)

    def pairs(rows: list[dict[str, Any]]) -> list[preference.PreferencePair]:
        return [preference.PreferencePair(tuple(r["prompt"]), r["chosen"], r["rejected"]) for r in rows]

    train = dict(record["train"])
    train["best"] = [(data["train"][i], reply) for i, reply in train["best"]]
    train["pairs"] = pairs(train["pairs"])
    return {"train": train, "held_out": pairs(record["held_out"])}
