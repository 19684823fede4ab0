"""Rejection sampling and Direct Preference Optimization, as Llama 3's post-training uses them.

**Rejection sampling** (Llama 3 §4.2.2): for each prompt, sample K responses from the current model,
score them (here with the task verifier, the "reward"), and keep the best for another round of SFT.
Ties among correct samples break towards the shorter response, then the higher log-probability. Pairs
of a correct (chosen) and an incorrect (rejected) sample of the same prompt become preference data.

**DPO** (Rafailov et al. 2023, Eq. 7) with Llama 3's two changes (§4.1.4)::

    L = -log σ(β [(log π(y_w) - log π_ref(y_w)) - (log π(y_l) - log π_ref(y_l))]) + α · NLL(y_w)

with β = 0.1 and α = 0.2, where the NLL term is normalised by the number of tokens (the mean over the
chosen tokens of the batch, as ``trl``'s "sft" loss term computes it), and the formatting tokens
(headers and ``<|eot_id|>``) are masked out of both terms: only the responses' content tokens count.
The reference model is frozen; its log-probabilities are computed once, before training. The policy
may be trained whole or through a LoRA adapter (``DPOConfig.method``); the reference may then be the
policy itself, since its log-probabilities are taken before the adapter is attached.

Conversations are rendered in the model's chat template (``chat``; None means Llama 3's).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from papernotes.core.train import train
from papernotes.errors import ConfigError, DataError
from papernotes.llm.data.chat_format import LLAMA3, ChatFormat, Message, encode_chat
from papernotes.llm.data.supervised import IGNORE_INDEX, Encoded, pad_batch, recipe_train_config
from papernotes.llm.data.tasks.instructions import Instruction, verify
from papernotes.llm.generation.responses import respond
from papernotes.llm.model.llama import Llama
from papernotes.llm.peft import lora

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreferencePair:
    prompt: tuple[Message, ...]  # the conversation up to the answer
    chosen: str
    rejected: str

    def conversation(self, which: str) -> list[Message]:
        """The prompt answered with the "chosen" or the "rejected" reply."""
        return answered(self.prompt, getattr(self, which))


def answered(prompt: Sequence[Message], reply: str) -> list[Message]:
    return [*prompt, {"role": "assistant", "content": reply}]


@dataclass
class RejectionResult:
    best: list[tuple[Instruction, str]]  # the best correct sample per prompt (prompts with none omitted)
    pairs: list[PreferencePair]
    pass_at_k: float  # prompts with at least one correct sample
    sample_accuracy: float  # correct samples over all samples


def rejection_sample(
    model: Llama,
    tokenizer: Tokenizer,
    examples: Sequence[Instruction],
    k: int = 8,
    temperature: float = 0.8,
    max_new_tokens: int = 48,
    seed: int = 0,
    reference_chosen: bool = False,
    chat: ChatFormat | None = None,
) -> RejectionResult:
    """Sample ``k`` answers per prompt, keep the best correct one, and pair correct with incorrect.

    With ``reference_chosen``, a prompt with no correct sample still yields a pair whose chosen reply
    is the task's reference answer (Llama 3 likewise pairs human-edited replies against sampled ones);
    a weak model then still gets preference data.
    """
    if k < 1:
        raise ConfigError(f"k must be >= 1, got {k}")
    prompts = [[{"role": "user", "content": e.prompt}] for e in examples]
    samples = respond(
        model, tokenizer, prompts, max_new_tokens, temperature, num_samples=k, seed=seed, chat=chat
    )
    best, pairs, hits, correct_total = [], [], 0, 0
    for example, prompt, responses in zip(examples, prompts, samples):
        scored = [(verify(example, r.text) and r.finished, r) for r in responses]
        correct = [r for ok, r in scored if ok]
        wrong = [r for ok, r in scored if not ok and r.text]
        correct_total += len(correct)
        if not correct:
            if reference_chosen and wrong:
                pairs.append(PreferencePair(tuple(prompt), example.answer, wrong[0].text))
            continue
        hits += 1
        logps = sequence_logprobs(model, tokenizer, [answered(prompt, r.text) for r in correct], chat=chat)
        ranked = sorted(zip(correct, logps.tolist()), key=lambda rl: (len(rl[0].ids), -rl[1]))
        winner = ranked[0][0].text
        best.append((example, winner))
        if wrong:  # the first wrong sample of the same prompt is the contrast
            pairs.append(PreferencePair(tuple(prompt), winner, wrong[0].text))
    total = max(1, len(examples) * k)
    return RejectionResult(best, pairs, hits / max(1, len(examples)), correct_total / total)


def response_mask(
    tokenizer: Tokenizer, messages: Sequence[Message], chat: ChatFormat | None = None
) -> tuple[list[int], list[bool]]:
    """Ids of a conversation and the mask of the final assistant reply's content tokens (no formatting)."""
    encoded = encode_chat(tokenizer, messages, chat=chat)
    return encoded.ids, encoded.reply_mask


def reply_batch(
    tokenizer: Tokenizer, conversations: Sequence[Sequence[Message]], chat: ChatFormat | None = None
) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids`` and ``labels`` (b, L - 1) whose only targets are each final reply's
    content tokens."""
    encoded = []
    for messages in conversations:
        ids, mask = response_mask(tokenizer, messages, chat)
        encoded.append(Encoded(ids, 0, mask))
    return pad_batch(encoded, (chat or LLAMA3).end_of_turn_id(tokenizer))


def token_logprobs(model: Llama, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(b, L - 1) log π(label | tokens before it) where a label is set, 0 elsewhere.

    The LM head runs on the labelled positions only (the reply), not on the prompt.
    """
    labels = batch["labels"]  # (b, L - 1)
    keep = labels != IGNORE_INDEX
    if isinstance(model, Llama):
        hidden = model(batch["input_ids"], logits=False)  # (b, L - 1, E)
        logits = model.lm_head(hidden[keep]).float()  # (n, V)
    else:  # a wrapper (DDP): call it, read nothing from it
        logits = model(batch["input_ids"])[keep].float()  # (n, V)
    picked = torch.gather(F.log_softmax(logits, dim=-1), 1, labels[keep][:, None]).squeeze(1)  # (n,)
    return torch.zeros(labels.shape, dtype=picked.dtype, device=picked.device).masked_scatter(keep, picked)


@torch.no_grad()
def sequence_logprobs(
    model: Llama,
    tokenizer: Tokenizer,
    conversations: Sequence[Sequence[Message]],
    batch_size: int = 32,
    chat: ChatFormat | None = None,
) -> torch.Tensor:
    """Summed log-probability of each conversation's final reply (content tokens only).

    Conversations are scored in batches of similar length (sorted), so little of a batch is padding.
    """
    lengths = [len(encode_chat(tokenizer, c, chat=chat).ids) for c in conversations]
    order = sorted(range(len(conversations)), key=lambda i: lengths[i])
    out = torch.zeros(len(conversations))
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        batch = reply_batch(tokenizer, [conversations[i] for i in rows], chat)
        out[rows] = token_logprobs(model, batch).sum(1).float()
    return out


def pair_logprobs(
    model: Llama, tokenizer: Tokenizer, pairs: Sequence[PreferencePair], chat: ChatFormat | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed reply log-probabilities (chosen, rejected) of every pair."""
    chosen = sequence_logprobs(model, tokenizer, [p.conversation("chosen") for p in pairs], chat=chat)
    return chosen, sequence_logprobs(model, tokenizer, [p.conversation("rejected") for p in pairs], chat=chat)


def dpo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    chosen_nll: torch.Tensor | float = 0.0,
    beta: float = 0.1,
    alpha: float = 0.2,
) -> torch.Tensor:
    """Mean DPO loss over the batch plus ``alpha`` times the chosen responses' per-token NLL (Llama 3)."""
    margin = (chosen_logps - ref_chosen_logps) - (rejected_logps - ref_rejected_logps)
    return -F.logsigmoid(beta * margin).mean() + alpha * chosen_nll


METHODS = ("full", "lora")


@dataclass
class DPOConfig:
    beta: float = 0.1  # Llama 3 §4.1.4
    alpha: float = 0.2  # weight of the NLL regulariser on chosen responses
    steps: int = 100
    batch_size: int = 8  # pairs per step
    lr: float = 1e-5  # Llama 3 used 1e-5 at 405B scale; small models take more
    precision: str = "auto"
    method: str = "full"  # "full" | "lora": what of the policy trains
    lora: lora.LoraConfig | None = None  # used when method == "lora" (None: peft's defaults)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"method must be one of {METHODS}, got {self.method!r}")


def check_reference(policy: Llama, reference: Llama) -> None:
    """The reference must share the policy's vocabulary and architecture, or its log-probs mean nothing."""
    keys = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads")
    diff = {k: (getattr(policy.config, k), getattr(reference.config, k)) for k in keys}
    diff = {k: v for k, v in diff.items() if v[0] != v[1]}
    if diff:
        raise DataError(f"the reference model does not fit the policy: {diff} (policy, reference)")


class PreferenceBatches:
    """Rows of (chosen, rejected) pairs with their precomputed reference log-probabilities."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        pairs: Sequence[PreferencePair],
        ref_chosen,
        ref_rejected,
        config,
        chat: ChatFormat | None = None,
    ):
        self.chosen = [p.conversation("chosen") for p in pairs]
        self.rejected = [p.conversation("rejected") for p in pairs]
        self.tokenizer, self.config, self.chat = tokenizer, config, chat
        self.ref_chosen, self.ref_rejected = ref_chosen, ref_rejected

    def __call__(self, step: int, micro_step: int = 0) -> dict[str, torch.Tensor]:
        gen = torch.Generator().manual_seed(self.config.seed * 1_000_003 + step * 1_009 + micro_step)
        rows = torch.randint(0, len(self.chosen), (self.config.batch_size,), generator=gen)
        batch = {"ref_chosen": self.ref_chosen[rows], "ref_rejected": self.ref_rejected[rows]}
        for side, conversations in (("chosen", self.chosen), ("rejected", self.rejected)):
            for key, tensor in reply_batch(
                self.tokenizer, [conversations[i] for i in rows], self.chat
            ).items():
                batch[f"{side}_{key}"] = tensor  # chosen_input_ids, chosen_labels, rejected_...
        return batch


def dpo(
    policy: Llama,
    reference: Llama,
    tokenizer: Tokenizer,
    pairs: Sequence[PreferencePair],
    config: DPOConfig,
    progress: bool = True,
    chat: ChatFormat | None = None,
) -> list[float]:
    """Train ``policy`` (in place) on preference pairs against the frozen ``reference``; the losses.

    ``reference`` may be ``policy`` itself: its log-probabilities are computed before training starts.
    """
    if not pairs:
        raise DataError("no preference pairs: DPO needs at least one (chosen, rejected) pair")
    check_reference(policy, reference)
    reference.eval().requires_grad_(False)
    ref_chosen, ref_rejected = pair_logprobs(reference, tokenizer, pairs, chat)
    batches = PreferenceBatches(tokenizer, pairs, ref_chosen, ref_rejected, config, chat)

    def loss_fn(model, batch):
        def side(name: str) -> torch.Tensor:
            return token_logprobs(model, {k: batch[f"{name}_{k}"] for k in ("input_ids", "labels")})

        chosen, rejected = side("chosen"), side("rejected")  # (b, L - 1) each
        tokens = (batch["chosen_labels"] != IGNORE_INDEX).sum()
        nll = -chosen.sum() / tokens.clamp(min=1)
        loss = dpo_loss(
            chosen.sum(1),
            rejected.sum(1),
            batch["ref_chosen"],
            batch["ref_rejected"],
            nll,
            config.beta,
            config.alpha,
        )
        return loss, int(batch["chosen_input_ids"].shape[0])

    if config.method == "lora":
        lora.apply_lora(policy, config.lora or lora.LoraConfig())  # freezes the rest of the policy
    else:
        policy.requires_grad_(True)
    train_config = recipe_train_config(
        config.steps, config.batch_size, config.lr, config.precision, config.seed
    )
    torch.manual_seed(config.seed)
    result = train(policy, loss_fn, batches, dataclasses.replace(train_config, progress=progress))
    policy.eval()
    return result.train_losses


@torch.no_grad()
def preference_accuracy(
    model: Llama, tokenizer: Tokenizer, pairs: Sequence[PreferencePair], chat: ChatFormat | None = None
) -> float:
    """How often the model gives the chosen reply a higher log-probability than the rejected one."""
    if not pairs:
        raise DataError("no preference pairs to score")
    chosen, rejected = pair_logprobs(model, tokenizer, pairs, chat)
    return float((chosen > rejected).float().mean())
