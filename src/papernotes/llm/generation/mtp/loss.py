"""MTP losses and training wrappers: the DeepSeek-V3 objective and training on stored states.

Paper: DeepSeek-AI 2024, arXiv:2412.19437, Sec. 2.2. The objective (eqs. 24-25) is

    L = L_main + (λ / D) Σ_k CrossEntropy(P^k, t_{k+2:T+1})

with P^k from module k through the main model's shared head (``modules.py``). Training is joint
(base and modules) or on a frozen base; ``mtp_state_loss`` trains the modules on stored h^0
(self-distillation data) without a base forward.

Shapes: B batch, T tokens, E hidden size, V vocabulary. Depth k = 1..D indexes the modules.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from papernotes.core.train import IGNORE_INDEX
from papernotes.errors import ConfigError, DataError
from papernotes.llm.generation.distill import reply_tokens
from papernotes.llm.generation.frequent_vocab import VocabHead
from papernotes.llm.generation.mtp.modules import MTPModules, _check_pair, _module_forward, shared_logits
from papernotes.llm.model.llama import Llama


def mtp_hidden_states(
    model: Llama, modules: MTPModules, hidden: torch.Tensor, input_ids: torch.Tensor
) -> list[torch.Tensor]:
    """Run the chain over whole sequences: h^0 (B, T, E), ids (B, T) -> [h^k (B, T - k, E) for k = 1..D].

    Position i of depth k uses t_{i+k} = input_ids[:, i + k]; positions with i + k >= T have no
    input token and are dropped (the paper's h^k_{1:T-k}). Causal attention makes dropping the
    tail equal to masking it.
    """
    T = input_ids.shape[1]
    outputs = []
    for k, module in enumerate(modules.layers, start=1):
        if T - k <= 0:
            break  # sequence too short for this depth: no position has an input token
        hidden = _module_forward(model, module, hidden[:, : T - k], input_ids[:, k:], start=0)  # (B, T-k, E)
        outputs.append(hidden)
    return outputs


@dataclass
class MTPLosses:
    """The terms of the DeepSeek-V3 objective for one batch."""

    main: torch.Tensor  # L_main: next-token cross-entropy, mean over labelled tokens
    depths: list[torch.Tensor]  # L_k for k = 1..D: mean cross-entropy for t_{i+k+1}
    total: torch.Tensor  # the objective to back-propagate (see mtp_losses)
    tokens: int  # labelled tokens of the main loss


def _cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    if not bool((labels != IGNORE_INDEX).any()):
        return logits.sum() * 0.0  # no target at this depth: zero, still connected to the graph
    # cross-entropy in fp32: low-precision log-softmax over a large vocabulary is lossy
    return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX)


def mtp_losses(
    model: Llama,
    modules: MTPModules,
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    train_base: bool = True,
) -> MTPLosses:
    """L_main, each L_k and the objective for ids (B, T) with next-token labels (B, T) (labels[i] = t_{i+1}).

    Targets of depth k are ``labels[:, k:]`` (t_{i+k+1}); the last k positions have none and are
    dropped; ``IGNORE_INDEX`` labels are masked at every depth.

    - ``train_base=True`` (joint training): total = L_main + (λ / D) Σ_k L_k (eq. 25).
    - ``train_base=False`` (modules on a frozen base): the base runs without autograd and
      must have no trainable parameters (``model.requires_grad_(False)``; ConfigError
      otherwise), because the shared embedding and head would else receive MTP gradients.
      total = L_main.detach() + (λ / D) Σ_k L_k: the same number as the joint objective, for
      comparable reports, but L_main is a constant, so only the MTP term trains the modules.
    """
    _check_pair(model, modules)
    if not train_base:
        trainable = [name for name, p in model.named_parameters() if p.requires_grad]
        if trainable:
            raise ConfigError(
                f"mtp_loss(train_base=False) needs a frozen base, but {len(trainable)} base parameters "
                f"require grad (e.g. {trainable[0]}); call model.requires_grad_(False)"
            )
    no_grad = torch.no_grad() if not train_base else contextlib.nullcontext()
    with no_grad:
        logits, hidden = model(input_ids, return_hidden=True)  # (B, T, V), h^0 (B, T, E)
    main = _cross_entropy(logits, labels)
    depths = [
        _cross_entropy(shared_logits(model, h), labels[:, k:])  # (B, T-k, V) against t_{i+k+1}
        for k, h in enumerate(mtp_hidden_states(model, modules, hidden, input_ids), start=1)
    ]
    weight = modules.config.loss_weight / modules.depth
    mtp_term = weight * torch.stack(depths).sum() if depths else main.new_zeros(())
    total = (main if train_base else main.detach()) + mtp_term
    return MTPLosses(main, depths, total, int((labels != IGNORE_INDEX).sum()))


def mtp_loss(
    model: Llama, modules: MTPModules, batch: dict[str, torch.Tensor], train_base: bool = True
) -> tuple[torch.Tensor, int]:
    """(objective, labelled tokens) for a batch {"input_ids", "labels"} (B, T) as ``LMBatches`` gives.

    See :func:`mtp_losses` for the two modes. To train with ``core.train.train`` use
    :class:`MTPTrainingModel` and :func:`mtp_training_loss`, which route through this function.
    """
    losses = mtp_losses(model, modules, batch["input_ids"], batch["labels"], train_base)
    return losses.total, losses.tokens


class MTPTrainingModel(nn.Module):
    """The base and its modules as one module for ``core.train.train`` (optimizer, DDP, checkpoints).

    ``train_base=False`` freezes the base here (``requires_grad_(False)``), so the training loop's
    optimizer holds only the module parameters. ``forward`` returns (objective, tokens).
    """

    def __init__(self, model: Llama, modules: MTPModules, train_base: bool = True) -> None:
        super().__init__()
        self.base = model
        self.mtp = modules
        self.train_base = train_base
        if not train_base:
            model.requires_grad_(False)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
        """ids, labels (B, T) -> (objective, labelled tokens)."""
        return mtp_loss(self.base, self.mtp, {"input_ids": input_ids, "labels": labels}, self.train_base)


def mtp_training_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """``loss_fn`` for ``core.train.train(MTPTrainingModel(...), mtp_training_loss, ...)``.

    It calls the module (never reads attributes), so it also works on the DDP wrapper.
    """
    return model(batch["input_ids"], batch["labels"])


def mtp_state_loss(
    model: Llama,
    modules: MTPModules,
    batch: dict[str, torch.Tensor],
    head: VocabHead | None = None,
    depths: int | None = None,
) -> tuple[torch.Tensor, int]:
    """Mean CE over draft depths 1..``depths`` from stored h^0 (self-distillation data; no base forward).

    Depth k applies ``modules.layer_at(k)`` to h^{k-1} and the true token t_{i+k} and is scored on
    t_{i+k+1} (eq. 21-24, teacher-forced). With ``depths`` > D the last module is applied again to its own
    output, which trains it for the chain it drafts at decoding time. ``head`` scores only its tokens;
    targets outside them, and padding, are ignored.
    """
    ids = batch["input_ids"]
    targets = ids.masked_fill(~reply_tokens(batch), IGNORE_INDEX)  # scored on reply tokens only
    if head is not None and head.tokens is not None:
        lookup = torch.full((head.vocab_size,), IGNORE_INDEX, dtype=torch.long)
        lookup[head.tokens] = torch.arange(head.size)
        targets = torch.where(targets >= 0, lookup[targets.clamp(min=0)], targets)
    T = ids.shape[1]
    hidden = batch["hidden"].to(modules.layers[0].eh_proj.weight.dtype)  # h^0 (B, T, E)
    losses = []
    for k in range(1, (depths or modules.depth) + 1):
        if T - k - 1 <= 0:
            break
        layer = modules.layer_at(k)
        hidden = _module_forward(model, layer, hidden[:, : T - k], ids[:, k:], start=0)  # (B, T-k, E)
        normed = model.model.norm(hidden[:, : T - k - 1])
        logits = model.lm_head(normed) if head is None else head.logits(normed)  # (B, T-k-1, ·)
        losses.append(_cross_entropy(logits, targets[:, k + 1 :]))
    if not losses:
        raise DataError(f"sequences of {T} tokens are too short for MTP training (need at least 3)")
    return torch.stack(losses).mean(), int(batch["mask"].sum())


@torch.no_grad()
def depth_accuracy(
    model: Llama,
    modules: MTPModules,
    batches: Sequence[dict[str, torch.Tensor]],
    head: VocabHead | None,
    depths: int,
) -> list[float]:
    """Per draft depth, how often the module's top-1 (teacher-forced, on stored states) is the next token."""
    hits, counts = [0] * depths, [0] * depths
    for batch in batches:
        ids, mask = batch["input_ids"], reply_tokens(batch)  # scored on reply tokens only
        T = ids.shape[1]
        hidden = batch["hidden"].to(modules.layers[0].eh_proj.weight.dtype)
        for k in range(1, depths + 1):
            if T - k - 1 <= 0:
                break
            hidden = _module_forward(model, modules.layer_at(k), hidden[:, : T - k], ids[:, k:], start=0)
            normed = model.model.norm(hidden[:, : T - k - 1])
            logits = model.lm_head(normed) if head is None else head.logits(normed)
            guess = logits.argmax(-1) if head is None else head.ids(logits.argmax(-1))  # (B, T-k-1)
            valid = mask[:, k + 1 :]
            hits[k - 1] += int(((guess == ids[:, k + 1 :]) & valid).sum())
            counts[k - 1] += int(valid.sum())
    return [h / c if c else 0.0 for h, c in zip(hits, counts)]


class MTPStateModel(nn.Module):
    """Frozen base + trainable modules for ``core.train.train`` on stored states; forward -> (loss, n)."""

    def __init__(self, model: Llama, modules: MTPModules, head: VocabHead | None, depths: int) -> None:
        super().__init__()
        model.requires_grad_(False)
        self.base, self.mtp, self.depths = model, modules, depths
        self.head = head

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        return mtp_state_loss(self.base, self.mtp, batch, self.head, self.depths)
