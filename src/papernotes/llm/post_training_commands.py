"""What ``papernotes llm sft | rejection-sample | dpo | chat`` do: load, train or sample, write files.

Data comes from the embedded instruction tasks by default, or from JSONL files:

* conversations (``--data`` of ``llm sft``): one ``{"messages": [{"role": ..., "content": ...}, ...]}``
  per line;
* preference pairs (``--pairs`` of ``llm dpo``, written by ``llm rejection-sample``): one
  ``{"prompt": [messages], "chosen": "...", "rejected": "..."}`` per line.

Without ``--model`` every command starts from the base (SmolLM2-135M-Instruct from its GGUF file) and
works in the model's own chat template. Trained models are written as Hugging Face directories with that
template in ``tokenizer_config.json`` (the base's files copied; Llama 3's template for models without one),
so ``papernotes llm chat --model DIR`` talks to them; LoRA runs also write the peft adapter.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import torch

from papernotes.core.files import atomic_write_file
from papernotes.errors import DataError
from papernotes.llm.chat import ChatSession
from papernotes.llm.data.chat_format import LLAMA3, ChatFormat, load_chat_format
from papernotes.llm.data.tasks.instructions import InstructionConfig, conversation, make_instructions
from papernotes.llm.experiments.target import accelerator_root, default_model_path, resolve_model_dir
from papernotes.llm.generation.decoders import NOT_LOSSLESS, build_decoder, is_lossless
from papernotes.llm.generation.generate import GenerationConfig
from papernotes.llm.generation.responses import score_instructions
from papernotes.llm.model.gguf import cached_directory
from papernotes.llm.model.llama import Llama
from papernotes.llm.model.tokenizer import load_tokenizer
from papernotes.llm.peft import lora
from papernotes.llm.training import preference, sft

logger = logging.getLogger(__name__)

ACCELERATORS = ("draft", "medusa", "mtp")  # folders beside a model that chat uses when present
METHOD_OF = {"draft": "speculative", "medusa": "medusa", "mtp": "mtp"}


def read_jsonl(path: Path, what: str) -> list[dict[str, Any]]:
    if not path.is_file():
        raise DataError(f"{path} does not exist; expected a JSONL file of {what}")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{number}: not JSON ({exc.msg})") from exc
    if not rows:
        raise DataError(f"{path} holds no {what}")
    return rows


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write_file(path) as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _load(model_arg: Path | None, default: Path | None = None) -> tuple[Path, Llama, Any, ChatFormat]:
    """The model (``--model``, else ``default``, else the reproduce target), its tokenizer and chat format.

    A model with its own chat template keeps it; one without gets Llama 3's, with the special tokens added.
    """
    model_dir = Path(model_arg) if model_arg is not None else default or resolve_model_dir(None)
    tokenizer = load_tokenizer(model_dir)
    model = Llama.from_pretrained(model_dir, dtype=torch.float32)
    chat = load_chat_format(model_dir)
    if chat is LLAMA3:
        added = sft.prepare_model(model, tokenizer)
        if added:
            logger.warning(
                "%s has no chat tokens; added %s (untrained: fine-tune before chatting)", model_dir, added
            )
    return model_dir, model, tokenizer, chat


def _tasks(args: argparse.Namespace) -> dict[str, list]:
    return make_instructions(
        InstructionConfig(train_size=args.train_size, test_size=args.eval_size, seed=args.seed)
    )


def _hf_dir(model_dir: Path) -> Path:
    """The model's HF directory: itself, or a GGUF file's cached export (where its template lives)."""
    return cached_directory(model_dir) if Path(model_dir).is_file() else Path(model_dir)


def save_chat_model(model: Llama, tokenizer: Any, directory: Path, template_from: Path | None = None) -> Path:
    """An HF directory with the chat template of ``template_from`` (Llama 3's when it has none)."""
    return sft.save_chat_model(model, tokenizer, directory, template_from)


def sft_command(args: argparse.Namespace) -> dict[str, Any]:
    model_dir, model, tokenizer, chat = _load(args.model, default=default_model_path())
    data = _tasks(args)
    if args.data is not None:
        rows = read_jsonl(args.data, "conversations")
        try:
            conversations = [r["messages"] for r in rows]
        except (KeyError, TypeError) as exc:
            raise DataError(f"{args.data}: every line needs a 'messages' list") from exc
    else:
        conversations = [conversation(e) for e in data["train"]]
    config = sft.SFTConfig(
        method="lora" if args.lora else "full",
        lora=lora.LoraConfig(r=args.r, lora_alpha=2 * args.r, target_modules="all-linear"),
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        max_length=args.max_length,
        seed=args.seed,
    )
    result = sft.sft(model, tokenizer, conversations, config, chat=chat)
    out = Path(args.out)
    info: dict[str, Any] = {
        "base": str(model_dir),
        "method": config.method,
        "train_losses": result.train_losses,
    }
    if args.lora:
        info["adapter"] = str(
            lora.save_adapter(model, out / "adapter", base_model_name_or_path=str(_hf_dir(model_dir)))
        )
        lora.merge_and_unload(model)
    info["model"] = str(save_chat_model(model, tokenizer, out / "model", _hf_dir(model_dir)))
    info["scores"] = score_instructions(model, tokenizer, data["test"], chat=chat).as_dict()
    with atomic_write_file(out / "result.json") as tmp:
        tmp.write_text(json.dumps(info, indent=2))
    return info


def rejection_sample_command(args: argparse.Namespace) -> dict[str, Any]:
    _, model, tokenizer, chat = _load(args.model, default=default_model_path())
    prompts = _tasks(args)["train"][: args.prompts]
    result = preference.rejection_sample(
        model,
        tokenizer,
        prompts,
        args.k,
        args.temperature,
        args.max_new_tokens,
        args.seed,
        reference_chosen=True,
        chat=chat,
    )
    out = Path(args.out)
    write_jsonl(out / "sft.jsonl", [{"messages": conversation(e, reply)} for e, reply in result.best])
    write_jsonl(
        out / "pairs.jsonl",
        [{"prompt": list(p.prompt), "chosen": p.chosen, "rejected": p.rejected} for p in result.pairs],
    )
    return {
        "prompts": len(prompts),
        "kept": len(result.best),
        "pairs": len(result.pairs),
        "pass_at_k": result.pass_at_k,
        "sample_accuracy": result.sample_accuracy,
        "out": str(out),
    }


def read_pairs(path: Path) -> list[preference.PreferencePair]:
    pairs = []
    for i, row in enumerate(read_jsonl(path, "preference pairs"), 1):
        try:
            pairs.append(preference.PreferencePair(tuple(row["prompt"]), row["chosen"], row["rejected"]))
        except (KeyError, TypeError) as exc:
            raise DataError(f"{path}:{i}: expected 'prompt' (messages), 'chosen' and 'rejected'") from exc
    return pairs


def dpo_command(args: argparse.Namespace) -> dict[str, Any]:
    model_dir, policy, tokenizer, chat = _load(args.model, default=default_model_path())
    reference = Llama.from_pretrained(args.ref, dtype=torch.float32)
    sft.prepare_model(reference, load_tokenizer(args.ref), chat)
    preference.check_reference(policy, reference)
    if args.pairs is not None:
        pairs = read_pairs(args.pairs)
    else:  # sample pairs from the reference on the embedded prompts
        prompts = _tasks(args)["train"][: args.prompts]
        pairs = preference.rejection_sample(
            reference, tokenizer, prompts, args.k, seed=args.seed, reference_chosen=True, chat=chat
        ).pairs
    before = preference.preference_accuracy(policy, tokenizer, pairs, chat) if pairs else float("nan")
    config = preference.DPOConfig(
        beta=args.beta,
        alpha=args.alpha,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
    )
    losses = preference.dpo(policy, reference, tokenizer, pairs, config, chat=chat)
    directory = save_chat_model(policy, tokenizer, Path(args.out) / "model", _hf_dir(model_dir))
    info = {
        "pairs": len(pairs),
        "train_losses": losses,
        "model": str(directory),
        "preference_accuracy_before": before,
        "preference_accuracy_after": preference.preference_accuracy(policy, tokenizer, pairs, chat),
    }
    with atomic_write_file(Path(args.out) / "result.json") as tmp:
        tmp.write_text(json.dumps(info, indent=2))
    return info


def chat_session(args: argparse.Namespace) -> ChatSession:
    """A session for ``llm chat``: an accelerator beside the model is used unless ``--method plain``."""
    model_dir, model, tokenizer, chat = _load(args.model, default=default_model_path())
    model.eval()
    method, decoder = "plain", None
    if args.method != "plain":
        root = accelerator_root(model_dir)
        present = [name for name in ACCELERATORS if (root / name).is_dir()]
        lossless = [name for name in present if is_lossless(METHOD_OF[name], args.temperature)]
        wanted = {"auto": lossless[:1], "speculative": ["draft"], "medusa": ["medusa"], "mtp": ["mtp"]}[
            args.method
        ]
        if wanted:
            method = METHOD_OF[wanted[0]]
            decoder = build_decoder(method, model, root, {}, args.num_draft_tokens)
            if not is_lossless(method, args.temperature):
                logger.warning(NOT_LOSSLESS)
    config = GenerationConfig(
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed
    )
    return ChatSession(
        model, tokenizer, config, system=args.system, decoder=decoder, method=method, chat=chat
    )
