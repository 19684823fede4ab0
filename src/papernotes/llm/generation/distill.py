"""Self-distillation data: the target's own replies, its hidden states and its next-token distributions.

Every drafter is trained to predict the *target*, not a dataset: DistillSpec (Zhou et al. 2024,
arXiv:2310.08461) distils the draft toward the target's distributions on text the target generated, and
Medusa (Cai et al. 2024, Sec. 2.3.2) trains the heads of chat models on the model's own replies. So one
pass over embedded prompts collects, for every position of every (prompt + reply) sequence:

- the token ids, and where the reply starts;
- the target's final-norm hidden state h_t (what Medusa heads and MTP modules read), (L, E);
- the target's top-k next-token probabilities (ids and values), the soft labels of the draft's forward
  KL. Storing all 49 152 probabilities per position would take 200 KB; the top 32 hold nearly all the
  mass of a confident model, and the rest is renormalised away.

The work is batched: replies come from :func:`~papernotes.llm.generation.generate.generate_batch`
(left-padded, one forward per step for the whole batch), and the states are read off those same forwards,
so nothing is scored twice. Per-token Python loops could not fit the experiment's budget.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tokenizers import Tokenizer

from papernotes.llm.data.chat_format import ChatFormat
from papernotes.llm.generation.generate import GenerationConfig, generate_batch
from papernotes.llm.model.llama import Llama

logger = logging.getLogger(__name__)


@dataclass
class DistillData:
    ids: list[torch.Tensor]  # per sequence (L,) int64: prompt, then the target's reply
    reply_starts: list[int]  # index of each sequence's first reply token
    hidden: list[torch.Tensor]  # per sequence (L, E): the target's final-norm hidden state at each position
    top_ids: list[torch.Tensor]  # per sequence (L, k): the target's k most likely next tokens
    top_probs: list[torch.Tensor]  # per sequence (L, k): their probabilities (temperature 1)

    @property
    def num_tokens(self) -> int:
        return sum(len(i) for i in self.ids)

    def split(self, validation: int) -> tuple[DistillData, DistillData]:
        """The first sequences for training, the last ``validation`` held out."""
        cut = len(self.ids) - validation
        parts = (slice(0, cut), slice(cut, None))
        return tuple(  # type: ignore[return-value]
            DistillData(self.ids[p], self.reply_starts[p], self.hidden[p], self.top_ids[p], self.top_probs[p])
            for p in parts
        )


class _Recorder:
    """``generate_batch``'s observer: per row, the hidden state and top-k of every real column, in order."""

    def __init__(self, rows: int, top_k: int) -> None:
        self.top_k = top_k
        self.hidden: list[list[torch.Tensor]] = [[] for _ in range(rows)]
        self.top_ids: list[list[torch.Tensor]] = [[] for _ in range(rows)]
        self.top_probs: list[list[torch.Tensor]] = [[] for _ in range(rows)]

    def __call__(self, logits: torch.Tensor, states: torch.Tensor, real: torch.Tensor) -> None:
        probs, top = torch.softmax(logits.float(), dim=-1).topk(self.top_k, dim=-1)  # (B, T, k) each
        for row in range(len(self.hidden)):
            keep = real[row]  # (T,) bool: the row's real columns
            self.hidden[row].append(states[row, keep].float())
            self.top_ids[row].append(top[row, keep])
            self.top_probs[row].append(probs[row, keep])


def collect(
    model: Llama,
    tokenizer: Tokenizer,
    chat: ChatFormat,
    prompts: Sequence[str],
    max_new_tokens: int = 96,
    batch_size: int = 8,
    top_k: int = 32,
) -> DistillData:
    """The target's greedy replies to ``prompts`` (user messages in its chat template), with its states.

    The states come from the very forwards that generate the replies (``generate_batch``'s observer): every
    prompt position from the prefill, then one position per step. The last token of a sequence has no
    forward of its own (decoding stops there), so a sequence keeps its tokens up to the one before.
    """
    eot = chat.end_of_turn_id(tokenizer)
    asked = [[{"role": "user", "content": p}] for p in prompts]
    rows = [chat.encode(tokenizer, messages, add_generation_prompt=True).ids for messages in asked]
    config = GenerationConfig(max_new_tokens=max_new_tokens, eos_token_id=eot)
    data = DistillData([], [], [], [], [])
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        record = _Recorder(len(batch), top_k)
        replies = generate_batch(model, batch, config, pad_token_id=eot, observe=record)
        for row, (prompt, reply) in enumerate(zip(batch, replies)):
            ids = torch.tensor([*prompt, *reply])[:-1]  # (n,): every token that was fed to a forward
            n = len(ids)
            data.ids.append(ids)
            data.reply_starts.append(len(prompt))
            # cloned outside inference mode: the drafters train on these (autograd refuses inference tensors)
            data.hidden.append(torch.cat(record.hidden[row])[:n].clone())
            data.top_ids.append(torch.cat(record.top_ids[row])[:n].clone())
            data.top_probs.append(torch.cat(record.top_probs[row])[:n].clone())
        logger.info("self-distillation: %d / %d replies", len(data.ids), len(rows))
    logger.info("self-distillation: %d sequences, %d tokens", len(data.ids), data.num_tokens)
    return data


class DistillBatches:
    """Deterministic training batches of windows of the distillation sequences (``core.train``'s BatchFn).

    ``batches(step, micro_step)`` -> {"input_ids" (b, L), "mask" (b, L) bool, "reply" (b, L) bool,
    "top_ids" (b, L, k), "top_probs" (b, L, k), "hidden" (b, L, E)}, right-padded; a window of at most
    ``seq_len`` tokens per sequence, drawn from a generator seeded by (seed, step, micro_step), so a resumed
    run is exact. "mask" marks real tokens (the context every model attends to); "reply" marks the tokens
    of the target's reply, the only ones a drafter is trained and scored on: the prompts share one system
    line and formulaic requests, which a drafter learns by heart and never drafts at decoding time.
    """

    def __init__(self, data: DistillData, micro_batch_size: int, seq_len: int, seed: int = 0) -> None:
        self.data, self.micro_batch_size, self.seq_len, self.seed = data, micro_batch_size, seq_len, seed

    def __call__(self, step: int, micro_step: int = 0) -> dict[str, torch.Tensor]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + step * 1_009 + micro_step)
        rows = torch.randint(0, len(self.data.ids), (self.micro_batch_size,), generator=gen).tolist()
        windows = []
        for row in rows:
            n = len(self.data.ids[row])
            start = int(torch.randint(0, max(1, n - self.seq_len + 1), (1,), generator=gen))
            windows.append((row, start, min(n, start + self.seq_len)))
        L = max(end - start for _, start, end in windows)
        k, E = self.data.top_ids[0].shape[1], self.data.hidden[0].shape[1]
        b = len(windows)
        batch = {
            "input_ids": torch.zeros(b, L, dtype=torch.long),
            "mask": torch.zeros(b, L, dtype=torch.bool),
            "reply": torch.zeros(b, L, dtype=torch.bool),
            "top_ids": torch.zeros(b, L, k, dtype=torch.long),
            "top_probs": torch.zeros(b, L, k),
            "hidden": torch.zeros(b, L, E),
        }
        for i, (row, start, end) in enumerate(windows):
            n = end - start
            batch["input_ids"][i, :n] = self.data.ids[row][start:end]
            batch["mask"][i, :n] = True
            batch["reply"][i, :n] = torch.arange(start, end) >= self.data.reply_starts[row]
            batch["top_ids"][i, :n] = self.data.top_ids[row][start:end]
            batch["top_probs"][i, :n] = self.data.top_probs[row][start:end]
            batch["hidden"][i, :n] = self.data.hidden[row][start:end]
        return batch


def reply_tokens(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(b, L) bool: the real tokens that belong to a reply (all real tokens for a batch without "reply")."""
    return batch["mask"] & batch.get("reply", batch["mask"])


def predicts_reply(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(b, L) bool: the positions whose next token is a reply token, the targets of a next-token guess
    (the last position of a window keeps its own flag: its next token lies past the window)."""
    reply = reply_tokens(batch)
    return torch.cat((reply[:, 1:], reply[:, -1:]), dim=1) & batch["mask"]
