"""Medusa-1 training: heads on a frozen base, and the measured accuracies the tree is built from.

Cai et al. 2024, "Medusa", arXiv 2401.10774, Sec. 2.2.1: the base is frozen and head k is trained
with cross-entropy against the token k + 2 positions ahead, weighted 0.8^k:

    L = Σ_k 0.8^k · CE(head_k(h_t), x_{t+k+2})

Training runs through ``core.train.train`` with the heads as the trained module, so the optimizer
and checkpoints hold only head weights. ``head_topk_accuracy`` measures each head's top-k accuracy
on validation batches; ``calibrate_tree`` turns it into the candidate tree (``tree.greedy_tree``).
Tests: ``tests/llm/generation/test_medusa.py`` (loss against a hand computation, frozen base, accuracy
rising with training, greedy tree structure).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from papernotes.core.train import IGNORE_INDEX, BatchFn, TrainConfig, TrainResult, ValBatchFn, train
from papernotes.errors import ConfigError, DataError
from papernotes.llm.generation.distill import reply_tokens
from papernotes.llm.generation.medusa.heads import Batch, MedusaHeads, check_heads_fit
from papernotes.llm.generation.medusa.tree import TreePath, greedy_tree
from papernotes.llm.model.llama import Llama

logger = logging.getLogger(__name__)


def _unwrap(heads: nn.Module) -> MedusaHeads:
    """The MedusaHeads inside a DDP wrapper (core.train wraps the trained module under torchrun)."""
    return heads.module if isinstance(heads, nn.parallel.DistributedDataParallel) else heads  # type: ignore[return-value]


def medusa_head_losses(
    model: Llama, heads: nn.Module, input_ids: torch.Tensor, labels: torch.Tensor
) -> list[torch.Tensor]:
    """CE_k for each head k on ids (B, T) with next-token labels (B, T) (labels[:, i] = t_{i+1}).

    Head k at position i targets t_{i+k+2} = labels[:, i + k + 1]; the last k + 1 positions
    have no target and are dropped, and ``IGNORE_INDEX`` labels are masked. The base runs
    without autograd (Medusa-1: it is frozen), so only the heads receive gradients.
    """
    with torch.no_grad():
        _, hidden = model(input_ids, return_hidden=True)  # (B, T, E)
    logits = heads(hidden)  # (K, B, T, V); called, not read, so a DDP wrapper syncs its gradients
    T = input_ids.shape[1]
    losses = []
    for k in range(logits.shape[0]):
        targets = labels[:, k + 1 :]  # (B, T - k - 1)
        head_logits = logits[k, :, : T - k - 1]  # (B, T - k - 1, V)
        if not bool((targets != IGNORE_INDEX).any()):
            losses.append(head_logits.sum() * 0.0)  # no target for this head: zero, still in the graph
            continue
        # cross-entropy in fp32: low-precision log-softmax over a large vocabulary is lossy
        losses.append(
            F.cross_entropy(head_logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)
        )
    return losses


def medusa_loss(model: Llama, heads: nn.Module, batch: Batch) -> tuple[torch.Tensor, int]:
    """(Σ_k λ^k · CE_k, labelled tokens) for a batch {"input_ids", "labels"} (B, T) (eq. 2).

    For ``core.train.train`` bind the base: ``train(heads, functools.partial(medusa_loss, model), ...)``
    (what :func:`train_medusa` does); ``heads`` may then be the DDP wrapper.
    """
    decay = _unwrap(heads).config.loss_decay
    losses = medusa_head_losses(model, heads, batch["input_ids"], batch["labels"])
    total = sum((decay**k * loss for k, loss in enumerate(losses)), torch.zeros((), device=losses[0].device))
    return total, int((batch["labels"] != IGNORE_INDEX).sum())


def train_medusa(
    model: Llama,
    heads: MedusaHeads,
    batches: BatchFn,
    train_config: TrainConfig,
    val_batches: ValBatchFn | None = None,
) -> TrainResult:
    """Medusa-1: freeze the base, train only the heads with ``core.train.train``.

    ``batches``/``val_batches`` follow ``train``'s contract (e.g. ``LMBatches``). The trained
    module is ``heads`` itself, so the optimizer and checkpoints hold only head weights.
    """
    check_heads_fit(model, heads)
    model.requires_grad_(False)
    model.eval()
    heads.requires_grad_(True)
    return train(heads, functools.partial(medusa_loss, model), batches, train_config, val_batches)


@torch.no_grad()
def head_topk_accuracy(
    model: Llama, heads: MedusaHeads, batches: Iterable[Batch], k_max: int = 10
) -> torch.Tensor:
    """(K, k_max): [k, j] = fraction of positions whose target t_{i+k+2} is in head k's top-(j+1).

    ``batches`` is an iterable of {"input_ids", "labels"} dicts (e.g. ``(val(i) for i in range(n))``).
    Feed the result to :func:`tree.greedy_tree` (or use :func:`calibrate_tree`).
    """
    check_heads_fit(model, heads)
    if not 1 <= k_max <= model.config.vocab_size:
        raise ConfigError(f"k_max must be in [1, vocab_size={model.config.vocab_size}], got {k_max}")
    K = heads.num_heads
    hits = torch.zeros(K, k_max, dtype=torch.float64)
    counts = torch.zeros(K, dtype=torch.float64)
    for batch in batches:
        input_ids, labels = batch["input_ids"], batch["labels"]
        _, hidden = model(input_ids, return_hidden=True)  # (B, T, E)
        logits = heads(hidden)  # (K, B, T, V)
        T = input_ids.shape[1]
        for k in range(K):
            targets = labels[:, k + 1 :].to(logits.device)  # (B, T - k - 1)
            valid = targets != IGNORE_INDEX
            top = logits[k, :, : T - k - 1].topk(k_max, dim=-1).indices  # (B, T - k - 1, k_max)
            hit = (top == targets[..., None]) & valid[..., None]  # at most one rank hits per position
            hits[k] += hit.flatten(0, 1).sum(0).double().cpu()
            counts[k] += float(valid.sum())
    if not bool((counts > 0).all()):
        raise DataError("head_topk_accuracy: the batches hold no target for some head (sequences too short?)")
    return (hits.cumsum(-1) / counts[:, None]).float()


def calibrate_tree(
    model: Llama, heads: MedusaHeads, batches: Iterable[Batch], num_nodes: int | None = None
) -> list[TreePath]:
    """Measure top-k accuracy (k_max = config.top_k), build the greedy tree, store it as ``heads.tree``."""
    accuracy = head_topk_accuracy(model, heads, batches, heads.config.top_k)
    heads.tree = greedy_tree(accuracy, heads.config.tree_nodes if num_nodes is None else num_nodes)
    logger.info("Medusa tree: %d nodes, depth %d", len(heads.tree), max(map(len, heads.tree), default=0))
    return heads.tree


# --- training on stored states (self-distillation data: no base forward per step) ---------------------


def _state_targets(heads: MedusaHeads, batch: Batch) -> torch.Tensor:
    """Token ids (B, T) in the heads' label space; padding and tokens outside a shared vocab are ignored."""
    targets = batch["input_ids"].masked_fill(~reply_tokens(batch), IGNORE_INDEX)  # reply tokens only
    if heads.config.share_lm_head and heads.vocab.numel():
        lookup = torch.full((heads.base_config.vocab_size,), IGNORE_INDEX, dtype=torch.long)
        lookup[heads.vocab] = torch.arange(heads.vocab.numel())
        targets = torch.where(targets >= 0, lookup[targets.clamp(min=0)], targets)
    return targets


def medusa_state_losses(heads: nn.Module, batch: Batch) -> list[torch.Tensor]:
    """CE_k of each head on a :class:`~papernotes.llm.generation.distill.DistillBatches` batch.

    The batch holds the frozen base's final-norm hidden states, so Medusa-1 training needs no base forward:
    head k at position i targets t_{i+k+2} = input_ids[:, i + k + 2] (eq. 2).
    """
    inner = _unwrap(heads)
    logits = heads(batch["hidden"], widen=False)  # (K, B, T, V or |vocab|)
    targets = _state_targets(inner, batch)
    T = targets.shape[1]
    losses = []
    for k in range(logits.shape[0]):
        target = targets[:, k + 2 :]  # (B, T - k - 2)
        head_logits = logits[k, :, : T - k - 2]
        if not bool((target != IGNORE_INDEX).any()):
            losses.append(head_logits.sum() * 0.0)
            continue
        losses.append(
            F.cross_entropy(head_logits.float().flatten(0, 1), target.flatten(), ignore_index=IGNORE_INDEX)
        )
    return losses


def medusa_state_loss(heads: nn.Module, batch: Batch) -> tuple[torch.Tensor, int]:
    """(Σ_k λ^k · CE_k, scored positions) on stored states; ``core.train``'s loss_fn for the heads."""
    decay = _unwrap(heads).config.loss_decay
    losses = medusa_state_losses(heads, batch)
    total = sum((decay**k * loss for k, loss in enumerate(losses)), torch.zeros(()))
    return total, int(batch["mask"].sum())


def train_medusa_on_states(heads: MedusaHeads, batches: BatchFn, train_config: TrainConfig) -> TrainResult:
    """Medusa-1 on self-distillation data: only the heads train; the base's states come with the batches."""
    heads.requires_grad_(True)
    return train(heads, medusa_state_loss, batches, train_config)


@torch.no_grad()
def state_topk_accuracy(heads: MedusaHeads, batches: Iterable[Batch], k_max: int = 10) -> torch.Tensor:
    """(K, k_max) top-k accuracies of each head on stored-state batches (what the tree is chosen from)."""
    K = heads.num_heads
    hits = torch.zeros(K, k_max, dtype=torch.float64)
    counts = torch.zeros(K, dtype=torch.float64)
    for batch in batches:
        logits = heads(batch["hidden"], widen=False)  # (K, B, T, ·)
        targets = _state_targets(heads, batch)
        T = targets.shape[1]
        for k in range(K):
            target = targets[:, k + 2 :]
            valid = target != IGNORE_INDEX
            if not bool(valid.any()):
                continue
            top = logits[k, :, : T - k - 2].topk(k_max, dim=-1).indices  # (B, T', k_max)
            rank_hit = (top == target[..., None]) & valid[..., None]  # (B, T', k_max)
            hits[k] += rank_hit.cumsum(-1).clamp(max=1).sum((0, 1)).double()
            counts[k] += valid.sum()
    return hits / counts.clamp(min=1)[:, None]
