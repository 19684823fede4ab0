"""Fine-tuning a pre-trained Llama on a downstream task: full, LoRA or Prefix-Tuning.

One recipe for all three methods, so that they differ only in what trains: the same base,
data, batches, step budget and loop (:mod:`papernotes.core.train`). The loss is next-token
cross-entropy on the target tokens only (the source/prompt tokens are context, as in
Li & Liang 2021 §5 and Hu et al. 2021 §4), and evaluation decodes the test sources greedily
and scores the outputs with the task's metrics (BLEU and slot error rate for table-to-text).

Two prompt formats:

- **chat** (a model with its own template, such as SmolLM2-135M-Instruct's ChatML): a system message states
  the task (:data:`INSTRUCTION`), the user turn is the record, the assistant turn the sentence; the loss is
  on the assistant's tokens and its end-of-turn token. Few-shot prompts put demonstrations before the
  record as earlier user/assistant turns.
- **plain** (our own tokenizer, no template): ``BOS source " =>" target EOS``; the model learns to
  continue after "=>".
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer

from papernotes.core.train import train
from papernotes.errors import ConfigError, DataError
from papernotes.llm.data.chat_format import ChatFormat, Message
from papernotes.llm.data.supervised import Encoded, TaskBatches, recipe_train_config, target_loss
from papernotes.llm.data.tasks import table2text
from papernotes.llm.generation.generate import GenerationConfig, generate_batch
from papernotes.llm.model.llama import Llama
from papernotes.llm.model.tokenizer import BOS, EOS
from papernotes.llm.peft import lora, prefix_tuning
from papernotes.llm.training.pretrain import save_model_dir
from papernotes.llm.training.sft import save_chat_model

logger = logging.getLogger(__name__)

METHODS = ("full", "lora", "prefix")
SEPARATOR = " =>"  # plain format: ends the prompt; the target follows after a space
# chat format: the system message that states the task (the user turn is the record itself)
INSTRUCTION = "Write one sentence that describes the restaurant, using every field of the record."
# peak learning rates for a short run on SmolLM2-135M-Instruct, from the sweep in docs/prefix_tuning.md;
# the few adapter parameters take larger steps than full fine-tuning, as in both papers
DEFAULT_LR = {"full": 1e-4, "lora": 2e-3, "prefix": 1e-3}


@dataclass
class FinetuneConfig:
    method: str = "lora"  # "full" | "lora" | "prefix"
    lora: lora.LoraConfig = field(default_factory=lora.LoraConfig)  # used when method == "lora"
    prefix: prefix_tuning.PrefixTuningConfig = field(default_factory=prefix_tuning.PrefixTuningConfig)
    steps: int = 300  # optimizer steps
    batch_size: int = 16  # examples per step
    lr: float | None = None  # None: DEFAULT_LR[method]
    precision: str = "auto"  # "fp32" | "bf16" | "fp16" | "auto" (bf16 where native, else fp32)
    max_new_tokens: int = 64  # evaluation decoding budget per example
    eval_batch_size: int = 64  # rows decoded together at evaluation
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.steps <= 0 or self.batch_size <= 0:
            raise ConfigError(f"steps and batch_size must be >= 1, got {self.steps} and {self.batch_size}")

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.method]


def task_messages(
    source: str, target: str | None = None, shots: Sequence[table2text.Example] = ()
) -> list[Message]:
    """The chat messages of one example: instruction, demonstrations, the record (and its sentence)."""
    messages = [{"role": "system", "content": INSTRUCTION}]
    for shot in shots:
        messages += [{"role": "user", "content": shot.source}, {"role": "assistant", "content": shot.target}]
    messages.append({"role": "user", "content": source})
    if target is not None:
        messages.append({"role": "assistant", "content": target})
    return messages


def encode(
    tokenizer: Tokenizer,
    source: str,
    target: str | None = None,
    chat: ChatFormat | None = None,
    shots: Sequence[table2text.Example] = (),
) -> Encoded:
    """Token ids of one example; without ``target``, the prompt alone (for decoding).

    With ``chat`` the example is a conversation in that template (the loss mask is the assistant's
    tokens); without it, the plain format, which takes no demonstrations.
    """
    if chat is not None:
        if target is None:
            ids = chat.encode(tokenizer, task_messages(source, None, shots), add_generation_prompt=True).ids
            return Encoded(ids, len(ids))
        encoded = chat.encode(tokenizer, task_messages(source, target, shots))
        return Encoded(encoded.ids, 0, encoded.assistant_mask)
    if shots:
        raise ConfigError("few-shot prompts need a chat format; the plain 'source =>' format takes none")
    prompt = [tokenizer.token_to_id(BOS), *tokenizer.encode(source + SEPARATOR).ids]
    if target is None:
        return Encoded(prompt, len(prompt))
    return Encoded(prompt + [*tokenizer.encode(" " + target).ids, tokenizer.token_to_id(EOS)], len(prompt))


def end_id(tokenizer: Tokenizer, chat: ChatFormat | None) -> int:
    """The token that ends a target: the template's end of turn, or EOS in the plain format."""
    return chat.end_of_turn_id(tokenizer) if chat is not None else tokenizer.token_to_id(EOS)


def attach_method(model: Llama, config: FinetuneConfig) -> None:
    """Make ``model`` trainable the way ``config.method`` says (in place)."""
    if config.method == "full":
        model.requires_grad_(True)
    elif config.method == "lora":
        lora.apply_lora(model, config.lora)
    else:
        prefix_tuning.apply_prefix_tuning(model, config.prefix)


@dataclass
class FinetuneResult:
    method: str
    trainable_parameters: int  # scalars updated by the optimizer
    base_parameters: int  # scalars of the base model (the denominator of the percentage)
    optimizer_state_bytes: int  # AdamW state measured after training
    step_s: float  # mean wall-clock seconds per optimizer step
    train_losses: list[float]
    metrics: dict[str, float] = field(default_factory=dict)  # task metrics on the evaluated split
    samples: list[dict[str, str]] = field(default_factory=list)  # a few (source, output, reference)

    @property
    def trainable_percent(self) -> float:
        return 100.0 * self.trainable_parameters / self.base_parameters

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "trainable_percent": self.trainable_percent}


def finetune(
    model: Llama,
    tokenizer: Tokenizer,
    train_examples: Sequence[table2text.Example],
    config: FinetuneConfig,
    progress: bool = True,
    chat: ChatFormat | None = None,
) -> FinetuneResult:
    """Attach the method to ``model`` and train it on ``train_examples`` (in place), in ``chat``'s
    template or (None) the plain format."""
    base_parameters = model.num_parameters()
    attach_method(model, config)
    encoded = [encode(tokenizer, e.source, e.target, chat) for e in train_examples]
    limit = model.config.max_position_embeddings - (
        config.prefix.num_virtual_tokens if config.method == "prefix" else 0
    )
    if (longest := max(len(e.ids) for e in encoded)) > limit:
        raise DataError(f"a training example has {longest} tokens; the model's context allows {limit}")
    batches = TaskBatches(encoded, config.batch_size, end_id(tokenizer, chat), seed=config.seed)
    train_config = recipe_train_config(
        config.steps, config.batch_size, config.learning_rate, config.precision, config.seed
    )
    train_config = dataclasses.replace(train_config, progress=progress)
    torch.manual_seed(config.seed)
    result = train(model, target_loss, batches, train_config)
    model.eval()
    return FinetuneResult(
        method=config.method,
        trainable_parameters=model.num_parameters(trainable_only=True),
        base_parameters=base_parameters,
        optimizer_state_bytes=result.optimizer_state_bytes,
        step_s=result.wall_s / max(1, len(result.train_losses)),
        train_losses=result.train_losses,
    )


def generate_texts(
    model: Llama,
    tokenizer: Tokenizer,
    sources: Sequence[str],
    max_new_tokens: int = 64,
    batch_size: int = 64,
    chat: ChatFormat | None = None,
    shots: Sequence[table2text.Example] = (),
) -> list[str]:
    """Greedy continuations of each source prompt, decoded to text (the end token stripped).

    Prompts are decoded in batches of similar length (sorted), so little of a batch is left padding.
    """
    end = end_id(tokenizer, chat)
    config = GenerationConfig(max_new_tokens=max_new_tokens, eos_token_id=end)
    prompts = [encode(tokenizer, s, chat=chat, shots=shots).ids for s in sources]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    texts: dict[int, str] = {}
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        for i, ids in zip(rows, generate_batch(model, [prompts[i] for i in rows], config, pad_token_id=end)):
            texts[i] = tokenizer.decode([t for t in ids if t != end]).strip()
    return [texts[i] for i in range(len(prompts))]


def evaluate(
    model: Llama,
    tokenizer: Tokenizer,
    examples: Sequence[table2text.Example],
    max_new_tokens: int = 64,
    batch_size: int = 64,
    chat: ChatFormat | None = None,
    shots: Sequence[table2text.Example] = (),
) -> tuple[dict[str, float], list[dict[str, str]]]:
    """BLEU (multi-reference) and slot error rate of greedy outputs; plus (source, output, reference) rows."""
    start = time.perf_counter()
    sources = [e.source for e in examples]
    outputs = generate_texts(model, tokenizer, sources, max_new_tokens, batch_size, chat, shots)
    metrics = {
        "bleu": table2text.bleu(outputs, [e.references for e in examples]),
        "ser": table2text.slot_error_rate([e.record for e in examples], outputs),
        "eval_s": time.perf_counter() - start,
    }
    rows = [{"source": e.source, "output": o, "reference": e.target} for e, o in zip(examples, outputs)]
    return metrics, rows


def save_result_model(
    model: Llama,
    tokenizer: Tokenizer,
    config: FinetuneConfig,
    out: Path,
    base: str,
    template_from: Path | None = None,
) -> Path:
    """Save what the method trained: a peft LoRA adapter, a peft prefix, or a full HF model directory
    (with the chat template of the model directory ``template_from``, when given)."""
    if config.method == "lora":
        return lora.save_adapter(model, out, base_model_name_or_path=base)
    if config.method == "prefix":
        prefix_tuning.collapse_prefix(model)
        return prefix_tuning.save_prefix(model, out, base_model_name_or_path=base)
    if template_from is not None:
        return save_chat_model(model, tokenizer, out, template_from)
    return save_model_dir(model, tokenizer, out)
