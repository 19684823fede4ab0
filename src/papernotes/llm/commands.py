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

from papernotes.core.checkpoint import load_checkpoint
from papernotes.core.config import apply_overrides, preset
from papernotes.core.files import atomic_write_file
from papernotes.core.train import TrainConfig, process_rank, short_run, train
from papernotes.errors import CheckpointError
from papernotes.llm.data.chat_format import encode_chat, load_chat_format
from papernotes.llm.data.corpus import LMBatches
from papernotes.llm.experiments.target import (
    accelerator_root,
    default_model_path,
    resolve_model_dir,
)
from papernotes.llm.generation import medusa, mtp
from papernotes.llm.generation.benchmark import validation_prompts
from papernotes.llm.generation.decoders import NOT_LOSSLESS, build_decoder, is_lossless
from papernotes.llm.generation.generate import DecodeStats, GenerationConfig
from papernotes.llm.generation.medusa import train as medusa_train
from papernotes.llm.model import hf_io
from papernotes.llm.model.config import PRESETS, LlamaConfig
from papernotes.llm.model.gguf import export_gguf
from papernotes.llm.model.llama import Llama
from papernotes.llm.model.tokenizer import load_tokenizer
from papernotes.llm.training.pretrain import (
    CorpusData,
    encode_corpus,
    model_config_for,
    prepare_corpus,
    pretrain,
    save_model_dir,
)

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def train_command(args: argparse.Namespace) -> dict[str, Any]:
    """``papernotes llm train``: tokenizer + pre-training + an HF export; returns {} on ranks other than 0."""
    out = Path(args.out)
    data = prepare_corpus(
        out / "data", vocab_size=args.vocab_size, max_bytes=args.max_bytes or None, text_dir=args.text_dir
    )
    model_config = apply_overrides(
        model_config_for(data, preset(PRESETS, args.model, "model preset")), args.model_overrides
    )
    train_config = short_run(
        args.steps,
        args.batch_size,
        args.lr,
        grad_accum_steps=args.grad_accum_steps,
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


def generate_command(args: argparse.Namespace) -> tuple[str, DecodeStats]:
    """``papernotes llm generate``: continue ``--prompt`` (or answer it, with ``--chat``).

    Without ``--model`` the base is used (SmolLM2-135M-Instruct from its GGUF file).
    """
    model_dir = Path(args.model) if args.model is not None else default_model_path()
    tokenizer = load_tokenizer(model_dir)
    model = Llama.from_pretrained(model_dir, attention=args.attention).eval()
    if args.adapter is not None:
        load_adapter_dir(model, args.adapter)
    eos = model.config.eos_token_id
    if args.chat:  # the prompt as a user message in the model's own template; stop at its end of turn
        chat = load_chat_format(model_dir)
        messages = [{"role": "user", "content": args.prompt}]
        ids = encode_chat(tokenizer, messages, add_generation_prompt=True, chat=chat).ids
        eos = chat.end_of_turn_id(tokenizer)
    else:
        ids = tokenizer.encode(args.prompt).ids
    input_ids = torch.tensor([ids])  # (1, T)
    config = GenerationConfig(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        eos_token_id=eos,
    )
    paths = {"draft": args.draft, "medusa": args.medusa, "mtp": args.mtp}
    decoder = build_decoder(args.method, model, accelerator_root(model_dir), paths, args.num_draft_tokens)
    if not is_lossless(args.method, args.temperature):
        logger.warning(NOT_LOSSLESS)
    new, stats = decoder(input_ids, config)
    text = tokenizer.decode([t for t in new[0].tolist() if t != eos])
    return (text if args.chat else args.prompt + text), stats


def _head_training(args: argparse.Namespace) -> tuple[Llama, CorpusData, TrainConfig]:
    """The base model, its corpus (tokenised with its own tokenizer) and the TrainConfig of a head command."""
    model_dir = resolve_model_dir(args.model)
    model = Llama.from_pretrained(model_dir, dtype=torch.float32)
    data = encode_corpus(load_tokenizer(model_dir), args.text_dir, args.max_bytes or None)
    config = short_run(args.steps, args.batch_size, args.lr, precision=args.precision, seed=args.seed)
    return model, data, config


def train_medusa_command(args: argparse.Namespace) -> dict[str, Any]:
    """``papernotes llm train-medusa``: Medusa-1 heads on a frozen base, tree calibrated on validation."""
    model, data, config = _head_training(args)
    heads = medusa.add_medusa_heads(model, replace(medusa.MedusaConfig(), num_heads=args.num_heads))
    medusa_train.train_medusa(
        model, heads, LMBatches(data.train_tokens, config.batch_size, args.seq_len, args.seed), config
    )
    val = LMBatches(data.val_tokens, config.batch_size, args.seq_len, args.seed + 1)
    accuracy = medusa_train.head_topk_accuracy(model, heads, (val(i) for i in range(4)), heads.config.top_k)
    medusa_train.calibrate_tree(model, heads, (val(i) for i in range(4)))
    out = medusa.save_medusa_heads(heads, args.out)
    return {"out": str(out), "top1": [round(float(a), 3) for a in accuracy[:, 0]]}


def train_mtp_command(args: argparse.Namespace) -> dict[str, Any]:
    """``papernotes llm train-mtp``: MTP modules on a frozen base, or jointly with ``--train-base``."""
    model, data, config = _head_training(args)
    modules = mtp.add_mtp_modules(model, replace(mtp.MTPConfig(), depth=args.depth))
    wrapper = mtp.MTPTrainingModel(model, modules, train_base=args.train_base)
    batches = LMBatches(data.train_tokens, config.batch_size, args.seq_len, args.seed)
    train(wrapper, mtp.mtp_training_loss, batches, config)
    out = mtp.save_mtp_modules(modules, args.out)
    if args.train_base:
        save_model_dir(model, data.tokenizer, Path(args.out) / "model")
    prompts = validation_prompts(data.val_tokens, 2, min(64, args.seq_len), seed=args.seed)
    accepted = [0] * args.depth
    proposed = [0] * args.depth
    for prompt in prompts:
        _, stats = mtp.mtp_generate(model.eval(), modules, prompt, GenerationConfig(max_new_tokens=32))
        for i, (a, p) in enumerate(zip(stats.accepted_by_position, stats.proposed_by_position)):
            accepted[i] += a
            proposed[i] += p
    return {
        "out": str(out),
        "acceptance": [round(a / p, 3) if p else None for a, p in zip(accepted, proposed)],
    }


def export_command(args: argparse.Namespace) -> Path:
    """``papernotes llm export``: a training run, a model dir or a GGUF file -> an HF model directory."""
    dtype = DTYPES[args.dtype]
    if getattr(args, "gguf", None) is not None:
        return export_gguf(args.gguf, args.out, dtype)
    run = Path(args.run)
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


def finetune_command(args: argparse.Namespace) -> dict[str, Any]:
    """``papernotes llm finetune``: full / LoRA / prefix fine-tuning on a task, then test metrics.

    Without ``--model`` the base is used (SmolLM2-135M-Instruct from its GGUF file). A model with a chat
    template gets the task in it (the instruction as system message, the record as user turn); one without
    (our own pre-trained models) gets the plain ``source =>`` format.
    """
    from papernotes.llm.data.chat_format import LLAMA3
    from papernotes.llm.data.tasks import table2text
    from papernotes.llm.model.gguf import cached_directory
    from papernotes.llm.peft import lora, prefix_tuning
    from papernotes.llm.training import finetune

    model_dir = Path(args.model) if args.model is not None else default_model_path()
    hf_dir = cached_directory(model_dir) if model_dir.is_file() else model_dir  # a GGUF file: its HF export
    tokenizer = load_tokenizer(model_dir)
    model = Llama.from_pretrained(model_dir, dtype=torch.float32)
    chat = load_chat_format(model_dir)
    chat = None if chat is LLAMA3 else chat  # no template of its own: the plain format
    targets = args.target_modules
    config = finetune.FinetuneConfig(
        method=args.method,
        lora=lora.LoraConfig(
            r=args.r,
            lora_alpha=args.lora_alpha,
            lora_dropout=args.lora_dropout,
            target_modules=targets[0] if targets == [lora.ALL_LINEAR] else tuple(targets),
        ),
        prefix=prefix_tuning.PrefixTuningConfig(
            num_virtual_tokens=args.num_virtual_tokens,
            prefix_projection=not args.no_prefix_projection,
            encoder_hidden_size=args.encoder_hidden_size,
        ),
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        precision=args.precision,
        seed=args.seed,
    )
    task = table2text.make_table2text(
        replace(table2text.Table2TextConfig(), test_size=args.eval_size, seed=args.seed)
    )
    result = finetune.finetune(model, tokenizer, task["train"], config, chat=chat)
    result.metrics, rows = finetune.evaluate(
        model, tokenizer, task["test"], config.max_new_tokens, config.eval_batch_size, chat=chat
    )
    result.samples = rows[:5]
    out = Path(args.out)
    saved = finetune.save_result_model(
        model,
        tokenizer,
        config,
        out / {"full": "model", "lora": "adapter", "prefix": "prefix"}[args.method],
        base=str(hf_dir),
        template_from=hf_dir if chat is not None else None,
    )
    info = {
        **result.as_dict(),
        "saved": str(saved),
        "base": str(model_dir),
        "format": "chat" if chat else "plain",
    }
    if chat is not None:
        info["instruction"] = finetune.INSTRUCTION
    with atomic_write_file(out / "result.json") as tmp:
        tmp.write_text(json.dumps(info, indent=2))
    return info


def load_adapter_dir(model: Llama, directory: Path) -> str:
    """Attach the LoRA adapter or prefix stored in a peft directory; returns its peft_type."""
    from papernotes.llm.peft import lora, prefix_tuning

    peft_type = hf_io.read_peft_config(directory)[0].get("peft_type")
    if peft_type == "LORA":
        lora.load_adapter(model, directory)
        lora.merge_lora(model)  # decode at the base model's cost
    elif peft_type == "PREFIX_TUNING":
        prefix_tuning.load_prefix(model, directory)
    else:
        raise CheckpointError(f"--adapter {directory}: peft_type {peft_type!r} is not LORA or PREFIX_TUNING")
    return peft_type
