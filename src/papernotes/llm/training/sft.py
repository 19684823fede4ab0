"""Supervised fine-tuning on chat conversations: loss on assistant tokens only, sequences packed.

Llama 3 §4.1.3: SFT is next-token cross-entropy on the target (assistant) tokens, with the prompt
tokens masked out of the loss. Conversations are encoded in the chat format
(:mod:`papernotes.llm.data.chat_format`) and *packed*: several conversations share one row up to
``max_length`` tokens, each with its own positions (restarting at 0) and a block-diagonal causal
attention mask, so that packing changes the arithmetic per row but not the result (the tests hold the
packed loss equal to the unpacked one). Training runs through :func:`papernotes.core.train.train`;
the method is full fine-tuning or LoRA (:func:`papernotes.llm.peft.lora.apply_lora`).

Conversations are rendered in the model's own chat template (``chat``; None means Llama 3's, the format of
our own tokenizer, whose special tokens :func:`prepare_model` adds). A model with its own template, such as
SmolLM2's ChatML, already has its tokens: its vocabulary is never resized.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tokenizers import Tokenizer

from papernotes.core.train import train
from papernotes.errors import ConfigError, DataError
from papernotes.llm.data.chat_format import (
    CHAT_TOKENS,
    LLAMA3,
    ChatFormat,
    Message,
    add_chat_tokens,
    check_conversation,
    encode_chat,
    write_chat_template,
)
from papernotes.llm.data.supervised import IGNORE_INDEX, Encoded, pad_batch, recipe_train_config, target_loss
from papernotes.llm.model.llama import Llama
from papernotes.llm.peft import lora
from papernotes.llm.training.pretrain import save_model_dir

logger = logging.getLogger(__name__)

METHODS = ("full", "lora")
DEFAULT_LR = {"full": 5e-5, "lora": 1e-3}  # SmolLM2-135M-Instruct (docs/post_training.md)


@dataclass
class SFTConfig:
    method: str = "full"  # "full" | "lora"
    lora: lora.LoraConfig = field(default_factory=lora.LoraConfig)  # used when method == "lora"
    steps: int = 300  # optimizer steps
    batch_size: int = 8  # rows per step; packed rows hold as many conversations as fit in max_length
    lr: float | None = None  # None: DEFAULT_LR[method]
    max_length: int = 512  # tokens per packed row
    pack: bool = True  # False: one conversation per (padded) row
    precision: str = "auto"  # "fp32" | "bf16" | "fp16" | "auto" (bf16 where native, else fp32)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.steps < 1 or self.batch_size < 1 or self.max_length < 2:
            raise ConfigError("steps and batch_size must be >= 1 and max_length >= 2")

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.method]


def encode_conversations(
    tokenizer: Tokenizer, conversations: Sequence[Sequence[Message]], chat: ChatFormat | None = None
) -> list[Encoded]:
    """Chat-format ids with the assistant mask as the loss mask; every conversation must train something."""
    encoded = []
    for i, messages in enumerate(conversations):
        try:
            check_conversation(messages, need_assistant=True)
        except DataError as exc:
            raise DataError(f"conversation {i}: {exc}") from exc
        rendered = encode_chat(tokenizer, messages, chat=chat)
        encoded.append(Encoded(rendered.ids, 0, rendered.assistant_mask))
    return encoded


def pack_batch(examples: Sequence[Encoded], max_length: int, pad_token_id: int) -> dict[str, torch.Tensor]:
    """Pack sequences first-fit (longest first) into rows of ``max_length``; see :func:`pack_rows`."""
    rows: list[list[Encoded]] = []
    for e in sorted(examples, key=lambda e: -len(e.ids)):
        _check_length(e, max_length)
        row = next((r for r in rows if sum(len(x.ids) for x in r) + len(e.ids) <= max_length), None)
        if row is None:
            rows.append([e])
        else:
            row.append(e)
    return pack_rows(rows, pad_token_id)


def _check_length(example: Encoded, max_length: int) -> None:
    if len(example.ids) > max_length:
        raise DataError(f"a conversation has {len(example.ids)} tokens; packed rows hold {max_length}")


def pack_rows(rows: Sequence[Sequence[Encoded]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """One row per group of sequences; returns input_ids, labels, position_ids (b, L - 1) and a
    block-causal attention_mask (b, 1, L - 1, L - 1) (True = attend)."""
    L = max(sum(len(x.ids) for x in r) for r in rows)
    ids = torch.full((len(rows), L), pad_token_id, dtype=torch.long)  # (b, L)
    labels = torch.full((len(rows), L), IGNORE_INDEX, dtype=torch.long)  # (b, L)
    positions = torch.zeros(len(rows), L, dtype=torch.long)  # (b, L): restart at 0 per conversation
    document = torch.full((len(rows), L), -1, dtype=torch.long)  # (b, L): which conversation, -1 = pad
    for b, row in enumerate(rows):
        start = 0
        for d, e in enumerate(row):
            end = start + len(e.ids)
            ids[b, start:end] = torch.tensor(e.ids)
            labels[b, start:end] = ids[b, start:end].masked_fill(~torch.tensor(e.target_mask()), IGNORE_INDEX)
            positions[b, start:end] = torch.arange(len(e.ids))
            document[b, start:end] = d
            start = end
    same = document[:, :, None] == document[:, None, :]  # (b, L, L)
    causal = torch.ones(L, L, dtype=torch.bool).tril()
    mask = (same & causal) | torch.eye(L, dtype=torch.bool)  # a pad query sees itself: no empty rows
    return {
        "input_ids": ids[:, :-1],
        "labels": labels[:, 1:],  # the next token; a conversation's first token is never a target
        "position_ids": positions[:, :-1],
        "attention_mask": mask[:, None, :-1, :-1],  # (b, 1, L - 1, L - 1)
    }


class ConversationBatches:
    """Deterministic batches of conversations for :func:`core.train.train` (seeded by step)."""

    def __init__(self, examples: Sequence[Encoded], config: SFTConfig, pad_token_id: int):
        if not examples:
            raise DataError("no conversations to train on")
        self.examples, self.config, self.pad_token_id = list(examples), config, pad_token_id

    def __call__(self, step: int, micro_step: int = 0) -> dict[str, torch.Tensor]:
        gen = torch.Generator().manual_seed(self.config.seed * 1_000_003 + step * 1_009 + micro_step)
        if not self.config.pack:
            rows = torch.randint(0, len(self.examples), (self.config.batch_size,), generator=gen).tolist()
            return pad_batch([self.examples[i] for i in rows], self.pad_token_id)
        # next-fit: draw conversations at random and fill batch_size rows of max_length tokens
        packed: list[list[Encoded]] = [[]]
        used = 0
        while True:
            e = self.examples[int(torch.randint(0, len(self.examples), (1,), generator=gen))]
            _check_length(e, self.config.max_length)
            if used + len(e.ids) > self.config.max_length:
                if len(packed) == self.config.batch_size:
                    break
                packed.append([])
                used = 0
            packed[-1].append(e)
            used += len(e.ids)
        return pack_rows(packed, self.pad_token_id)


@dataclass
class SFTResult:
    method: str
    trainable_parameters: int
    train_losses: list[float]
    step_s: float


def uses_llama3_tokens(chat: ChatFormat | None) -> bool:
    """Whether ``chat`` is Llama 3's format, whose special tokens our own tokenizer lacks until added."""
    return chat is None or chat is LLAMA3 or chat.end_of_turn in CHAT_TOKENS


def prepare_model(model: Llama, tokenizer: Tokenizer, chat: ChatFormat | None = None) -> list[str]:
    """Add missing Llama 3 chat tokens to the tokenizer and grow the model's vocabulary to fit; the tokens
    added. A model with a template of its own (``chat`` not Llama 3's) is left as it is."""
    if not uses_llama3_tokens(chat):
        return []
    added = add_chat_tokens(tokenizer)
    if tokenizer.get_vocab_size() > model.config.vocab_size:
        model.resize_token_embeddings(tokenizer.get_vocab_size())
    return added


def sft(
    model: Llama,
    tokenizer: Tokenizer,
    conversations: Sequence[Sequence[Message]],
    config: SFTConfig,
    progress: bool = True,
    chat: ChatFormat | None = None,
) -> SFTResult:
    """Fine-tune ``model`` (in place) on the assistant turns of ``conversations``, in ``chat``'s template."""
    prepare_model(model, tokenizer, chat)
    encoded = encode_conversations(tokenizer, conversations, chat)
    if config.method == "lora":
        lora.apply_lora(model, config.lora)
    else:
        model.requires_grad_(True)
    pad = (chat or LLAMA3).end_of_turn_id(tokenizer)
    batches = ConversationBatches(encoded, config, pad)
    train_config = recipe_train_config(
        config.steps, config.batch_size, config.learning_rate, config.precision, config.seed
    )
    torch.manual_seed(config.seed)
    result = train(model, target_loss, batches, dataclasses.replace(train_config, progress=progress))
    model.eval()
    return SFTResult(
        config.method,
        model.num_parameters(trainable_only=True),
        result.train_losses,
        result.wall_s / max(1, len(result.train_losses)),
    )


TEMPLATE_FILES = ("tokenizer_config.json", "special_tokens_map.json", "generation_config.json")


def save_chat_model(
    model: Llama, tokenizer: Tokenizer, directory: Path, template_from: Path | None = None
) -> Path:
    """An HF model directory that ``papernotes llm chat`` (and transformers) load with its chat template.

    ``template_from``: the model directory whose template, special tokens and generation config to keep
    (the base's, e.g. SmolLM2's ChatML); when it has no template, or is None, Llama 3's is written.
    """
    save_model_dir(model, tokenizer, directory)
    source = Path(template_from) if template_from is not None else None
    config = source / "tokenizer_config.json" if source is not None else None
    if config is not None and config.is_file() and json.loads(config.read_text()).get("chat_template"):
        for name in TEMPLATE_FILES:
            if (source / name).is_file():
                shutil.copyfile(source / name, Path(directory) / name)
    else:
        write_chat_template(directory)
    return Path(directory)
