"""Fine-tuning a pre-trained Llama on a downstream task: full, LoRA or Prefix-Tuning.

One recipe for all three methods, so that they differ only in what trains: the same base,
data, batches, step budget and loop (:mod:`papernotes.core.train`). The loss is next-token
cross-entropy on the target tokens only (the source/prompt tokens are context, as in
Li & Liang 2021 §5 and Hu et al. 2021 §4), and evaluation decodes the test sources greedily
and scores the outputs with the task's metrics (BLEU and slot error rate for table-to-text).

Sequence layout: ``BOS source " =>" target EOS``; the model learns to continue after "=>".
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
from papernotes.llm.data.supervised import Encoded, TaskBatches, recipe_train_config, target_loss
from papernotes.llm.data.tasks import table2text
from papernotes.llm.generation.generate import GenerationConfig, generate_batch
from papernotes.llm.model.llama import Llama
from papernotes.llm.model.tokenizer import BOS, EOS
from papernotes.llm.peft import lora, prefix_tuning
from papernotes.llm.training.pretrain import save_model_dir

logger = logging.getLogger(__name__)

METHODS = ("full", "lora", "prefix")
SEPARATOR = " =>"  # ends the prompt; the target follows after a space
# peak learning rates picked on the embedded task at pn-small scale (prefix tuning at 3e-2 diverged:
# loss 4.3 after 120 steps, against 0.9 at 5e-3); the few adapter parameters take larger steps than
# full fine-tuning, as in both papers
DEFAULT_LR = {"full": 3e-3, "lora": 2e-2, "prefix": 5e-3}


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


def encode(tokenizer: Tokenizer, source: str, target: str | None = None) -> Encoded:
    """Token ids of one example; without ``target``, the prompt alone (for decoding)."""
    prompt = [tokenizer.token_to_id(BOS), *tokenizer.encode(source + SEPARATOR).ids]
    if target is None:
        return Encoded(prompt, len(prompt))
    return Encoded(prompt + [*tokenizer.encode(" " + target).ids, tokenizer.token_to_id(EOS)], len(prompt))


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
) -> FinetuneResult:
    """Attach the method to ``model`` and train it on ``train_examples`` (in place)."""
    base_parameters = model.num_parameters()
    attach_method(model, config)
    encoded = [encode(tokenizer, e.source, e.target) for e in train_examples]
    limit = model.config.max_position_embeddings - (
        config.prefix.num_virtual_tokens if config.method == "prefix" else 0
    )
    if (longest := max(len(e.ids) for e in encoded)) > limit:
        raise DataError(f"a training example has {longest} tokens; the model's context allows {limit}")
    batches = TaskBatches(encoded, config.batch_size, tokenizer.token_to_id(EOS), seed=config.seed)
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


def adapt_to_domain(
    model: Llama,
    tokenizer: Tokenizer,
    texts: Sequence[str],
    steps: int,
    batch_size: int = 32,
    lr: float = 3e-3,
    seed: int = 0,
) -> list[float]:
    """Continue pre-training every weight on unlabelled in-domain ``texts`` (plain LM loss); the losses.

    PEFT presumes a base that already speaks the output language (GPT-2 and GPT-3 in the papers).
    A small base pre-trained on code does not, so experiments give it the domain's unlabelled text
    first: the same adapted base then serves every fine-tuning method.
    """
    bos, eos = tokenizer.token_to_id(BOS), tokenizer.token_to_id(EOS)
    encoded = [Encoded([bos, *tokenizer.encode(t).ids, eos], 1) for t in texts]
    model.requires_grad_(True)
    config = recipe_train_config(steps, batch_size, lr, "auto", seed)
    result = train(model, target_loss, TaskBatches(encoded, batch_size, eos, seed=seed), config)
    return result.train_losses


def generate_texts(
    model: Llama,
    tokenizer: Tokenizer,
    sources: Sequence[str],
    max_new_tokens: int = 64,
    batch_size: int = 64,
) -> list[str]:
    """Greedy continuations of each source prompt, decoded to text (EOS stripped)."""
    eos = tokenizer.token_to_id(EOS)
    config = GenerationConfig(max_new_tokens=max_new_tokens, eos_token_id=eos)
    texts: list[str] = []
    for start in range(0, len(sources), batch_size):
        prompts = [encode(tokenizer, s).ids for s in sources[start : start + batch_size]]
        for ids in generate_batch(model, prompts, config, pad_token_id=eos):
            texts.append(tokenizer.decode([t for t in ids if t != eos]).strip())
    return texts


def evaluate(
    model: Llama,
    tokenizer: Tokenizer,
    examples: Sequence[table2text.Example],
    max_new_tokens: int = 64,
    batch_size: int = 64,
) -> tuple[dict[str, float], list[dict[str, str]]]:
    """BLEU (multi-reference) and slot error rate of greedy outputs; plus (source, output, reference) rows."""
    start = time.perf_counter()
    outputs = generate_texts(model, tokenizer, [e.source for e in examples], max_new_tokens, batch_size)
    metrics = {
        "bleu": table2text.bleu(outputs, [e.references for e in examples]),
        "ser": table2text.slot_error_rate([e.record for e in examples], outputs),
        "eval_s": time.perf_counter() - start,
    }
    rows = [{"source": e.source, "output": o, "reference": e.target} for e, o in zip(examples, outputs)]
    return metrics, rows


def save_result_model(
    model: Llama, tokenizer: Tokenizer, config: FinetuneConfig, out: Path, base: str
) -> Path:
    """Save what the method trained: a peft LoRA adapter, a peft prefix, or a full HF model directory."""
    if config.method == "lora":
        return lora.save_adapter(model, out, base_model_name_or_path=base)
    if config.method == "prefix":
        prefix_tuning.collapse_prefix(model)
        return prefix_tuning.save_prefix(model, out, base_model_name_or_path=base)
    return save_model_dir(model, tokenizer, out)
