"""What the ``papernotes llm ...`` commands do, given their parsed arguments.

Kept apart from :mod:`papernotes.cli` so that the CLI only maps names to these
functions, and so that tests can call them directly.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from papernotes.core.checkpoint import atomic_write_file, load_checkpoint
from papernotes.core.config import apply_overrides, preset
from papernotes.core.experiments import default_cache_dir
from papernotes.core.train import TrainConfig, process_rank
from papernotes.errors import CheckpointError
from papernotes.llm.generate import DecodeStats, GenerationConfig, generate
from papernotes.llm.llama import Llama
from papernotes.llm.llama_config import PRESETS, LlamaConfig
from papernotes.llm.pretrain import model_config_for, prepare_corpus, pretrain, save_model_dir
from papernotes.llm.tokenizer import EOS, load_tokenizer

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
TARGET_MODEL_DIR = ("llm", "target")  # where `reproduce` caches the pre-trained target, under the cache dir


def train_command(args: argparse.Namespace) -> dict[str, Any]:
    """``papernotes llm train``: tokenizer + pre-training + an HF export; returns {} on ranks other than 0."""
    out = Path(args.out)
    data = prepare_corpus(
        out / "data", vocab_size=args.vocab_size, max_bytes=args.max_bytes or None, text_dir=args.text_dir
    )
    model_config = apply_overrides(
        model_config_for(data, preset(PRESETS, args.model, "model preset")), args.model_overrides
    )
    train_config = replace(
        TrainConfig(),
        steps=args.steps,
        batch_size=args.batch_size,
        grad_accum_steps=args.grad_accum_steps,
        lr=args.lr,
        min_lr=args.lr / 10,
        warmup_steps=max(1, args.steps // 20),
        precision=args.precision,
        checkpoint_every=args.checkpoint_every,
        eval_every=max(1, args.steps // 10),
        out_dir=str(out),
        seed=args.seed,
    )
    model, result = pretrain(
        model_config, train_config, data, args.seq_len, args.attention, resume=args.resume
    )
    if process_rank() != 0:  # under torchrun every rank holds the same weights; rank 0 writes them
        return {}
    model_dir = save_model_dir(model.float(), data.tokenizer, out / "model")
    train_losses, val_losses = result.train_losses, [list(v) for v in result.val_losses]
    record = out / "train_result.json"
    if result.start_step > 0 and record.is_file():  # a resumed run: keep the history before the resume point
        previous = json.loads(record.read_text())
        train_losses = previous["train_losses"][: result.start_step] + train_losses
        val_losses = [v for v in previous["val_losses"] if v[0] <= result.start_step] + val_losses
    info = {
        "steps": len(train_losses),
        "train_loss": train_losses[-1],
        "val_loss": val_losses[-1][1] if val_losses else float("nan"),
        "tokens_per_s": result.tokens_per_s,
        "model_dir": str(model_dir),
        "train_losses": train_losses,
        "val_losses": val_losses,
    }
    with atomic_write_file(record) as tmp:
        tmp.write_text(json.dumps(info, indent=2))
    return info


def resolve_model_dir(path: Path | None) -> Path:
    """``path``, or the target model cached by ``papernotes reproduce``."""
    if path is not None:
        return Path(path)
    cached = default_cache_dir().joinpath(*TARGET_MODEL_DIR)
    if not (cached / "config.json").is_file():
        raise CheckpointError(
            f"--model not given and no cached model at {cached}; run 'papernotes reproduce' first "
            "or pass --model DIR (a Hugging Face Llama directory)"
        )
    return cached


def generate_command(args: argparse.Namespace) -> tuple[str, DecodeStats]:
    """``papernotes llm generate``: continue ``--prompt`` with plain decoding."""
    model_dir = resolve_model_dir(args.model)
    tokenizer = load_tokenizer(model_dir)
    model = Llama.from_pretrained(model_dir, attention=args.attention).eval()
    input_ids = torch.tensor([tokenizer.encode(args.prompt).ids])  # (1, T)
    config = GenerationConfig(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        eos_token_id=tokenizer.token_to_id(EOS),
    )
    ids, stats = generate(model, input_ids, config)
    return args.prompt + tokenizer.decode(ids[0].tolist()), stats


def export_command(args: argparse.Namespace) -> Path:
    """``papernotes llm export``: a training run (or a model dir) -> an HF model directory."""
    run = Path(args.run)
    dtype = DTYPES[args.dtype]
    if (run / "config.json").is_file():  # already a model directory: convert the dtype
        model = Llama.from_pretrained(run)
        tokenizer_dir = run
    else:
        model_dir = run / "model"
        if not (model_dir / "config.json").is_file():
            raise CheckpointError(
                f"--run {run}: expected a model directory (config.json) or an 'llm train' run folder "
                f"with {model_dir}/config.json"
            )
        config = LlamaConfig.from_hf_dict(json.loads((model_dir / "config.json").read_text()))
        model = Llama(config)
        load_training_weights(model, run / "checkpoint")
        tokenizer_dir = model_dir
    out = save_model_dir(model.to(dtype), load_tokenizer(tokenizer_dir), args.out)
    return out


def load_training_weights(model: Llama, checkpoint_dir: Path) -> None:
    """Copy the fp32 weights of a ``core.train`` checkpoint into ``model``."""
    checkpoint = load_checkpoint(checkpoint_dir)
    missing, unexpected = model.load_state_dict(checkpoint.weights, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {checkpoint_dir} does not fit the model config: "
            f"missing {missing}, unexpected {unexpected}"
        )
