"""Supervised next-token training on marked target tokens: the batches and loss that fine-tuning
(:mod:`papernotes.llm.training.finetune`) and SFT (:mod:`papernotes.llm.training.sft`) share.

An example is a token sequence with a mask of the tokens to learn (the target after a prompt, or the
assistant turns of a conversation); every other position is labelled ``IGNORE_INDEX`` and carries no loss.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from papernotes.core.train import IGNORE_INDEX, TrainConfig
from papernotes.errors import DataError
from papernotes.llm.model.llama import Llama


@dataclass
class Encoded:
    ids: list[int]  # BOS source SEPARATOR [target EOS], or a chat conversation
    prompt_length: int  # tokens before the target (ignored when ``loss_mask`` is given)
    loss_mask: list[bool] | None = None  # per token: True where it is a target (chat: assistant tokens)

    def target_mask(self) -> list[bool]:
        if self.loss_mask is not None:
            return self.loss_mask
        return [i >= self.prompt_length for i in range(len(self.ids))]


class TaskBatches:
    """Deterministic padded batches of (prompt, target) sequences for :func:`core.train.train`.

    ``batches(step, micro_step)`` draws rows with a generator seeded by (seed, step, micro_step),
    so resumed runs see the same data. Sequences are right-padded: under causal attention no real
    token attends to a later pad, so no attention mask is needed. Labels are the next tokens, with
    prompt and pad positions set to ``IGNORE_INDEX``.
    """

    def __init__(self, examples: Sequence[Encoded], micro_batch_size: int, pad_token_id: int, seed: int = 0):
        if not examples:
            raise DataError("TaskBatches: no training examples")
        self.examples = list(examples)
        self.micro_batch_size = micro_batch_size
        self.pad_token_id = pad_token_id
        self.seed = seed

    def __call__(self, step: int, micro_step: int = 0) -> dict[str, torch.Tensor]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + step * 1_009 + micro_step)
        rows = torch.randint(0, len(self.examples), (self.micro_batch_size,), generator=gen).tolist()
        return pad_batch([self.examples[i] for i in rows], self.pad_token_id)


def pad_batch(examples: Sequence[Encoded], pad_token_id: int) -> dict[str, torch.Tensor]:
    """{"input_ids", "labels"} (b, L - 1) from sequences of length ≤ L, target-only labels."""
    L = max(len(e.ids) for e in examples)
    ids = torch.full((len(examples), L), pad_token_id, dtype=torch.long)  # (b, L)
    labels = torch.full((len(examples), L), IGNORE_INDEX, dtype=torch.long)  # (b, L)
    for row, e in enumerate(examples):
        ids[row, : len(e.ids)] = torch.tensor(e.ids)
        row_ids = torch.tensor(e.ids)
        labels[row, : len(e.ids)] = row_ids.masked_fill(~torch.tensor(e.target_mask()), IGNORE_INDEX)
    return {"input_ids": ids[:, :-1], "labels": labels[:, 1:]}  # predict token t + 1 from the prefix ≤ t


def target_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Mean cross-entropy over target tokens, and how many there were.

    Packed batches also carry ``position_ids`` and a 4-D block-causal ``attention_mask``. On a
    :class:`Llama` the LM head runs on the target positions only: prompt positions carry no loss, and the
    head is the costliest single layer of a large-vocabulary model (21 % of SmolLM2's weights, forward
    and backward), so skipping it there saves that share of the prompt tokens' compute, with the same loss.
    """
    labels = batch["labels"]  # (b, L)
    keep = labels != IGNORE_INDEX  # (b, L)
    inputs = {"position_ids": batch.get("position_ids"), "attention_mask": batch.get("attention_mask")}
    if isinstance(model, Llama):
        hidden = model(batch["input_ids"], logits=False, **inputs)  # (b, L, E)
        logits = model.lm_head(hidden[keep])  # (n, V): the target positions only
        loss = F.cross_entropy(logits.float(), labels[keep])
    else:  # a wrapper (DDP): call it, read nothing from it
        logits = model(batch["input_ids"], **inputs)  # (b, L, V)
        loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX)
    return loss, int(keep.sum())


def recipe_train_config(steps: int, batch_size: int, lr: float, precision: str, seed: int) -> TrainConfig:
    return dataclasses.replace(
        TrainConfig(),
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        min_lr=lr / 10,
        warmup_steps=max(1, steps // 20),
        weight_decay=0.0,  # adapters start at zero/random scale; decay would only pull them back
        precision=precision,
        eval_every=0,
        checkpoint_every=0,
        seed=seed,
    )
