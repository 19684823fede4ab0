"""A draft model distilled from the target (DistillSpec), proposing from the frequent vocabulary (FR-Spec).

Speculative decoding (Leviathan et al. 2023) pays the draft's cost γ times per target call, so the draft
must be much cheaper than the target and agree with it often. Here it is built *from* the target: its
token embedding (and so its tied head), its final norm, and a few of its decoder layers (by default its
first and its last: the first reads the embeddings, the last writes into the head's space; measured here,
that pair distils faster than the first two or the last two), then distilled on the target's own replies
with the forward KL of DistillSpec (Zhou et al. 2024, arXiv:2310.08461, the divergence suited to greedy
and sampled decoding alike):

    L = Σ_t Σ_x p_target(x | ≤ t) · (−log q_draft(x | ≤ t))       (cross-entropy to soft labels; eq. 1)

with p the target's top-k probabilities restricted to the draft's K tokens and renormalised. Only the
copied layers and the norm train; the embedding stays the target's, so the head keeps its meaning.

At decoding time the draft scores only its K most frequent tokens (:class:`~.frequent_vocab.VocabHead`,
FR-Spec), so a draft token costs (layers / 30 of the body) + (K / V of the head) of a target token.
:class:`FrequentVocabDraft` gives it the interface ``speculative_generate`` expects of a draft. The draft
itself is a plain Llama (HF layout), so transformers' assisted generation can run it too.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from papernotes.errors import ConfigError
from papernotes.llm.generation.distill import predicts_reply
from papernotes.llm.generation.frequent_vocab import VocabHead
from papernotes.llm.model.llama import Llama
from papernotes.nn.kv_cache import KVCache


@dataclass
class DraftConfig:
    layers: tuple[int, ...] = (0, -1)  # the target layers the draft copies, in order (negative: from the end)
    frequent_vocab: int = 8192  # K, the tokens the draft may propose (FR-Spec: about V / 4; 0 = all)


def draft_from_target(target: Llama, config: DraftConfig) -> Llama:
    """A new Llama with copies of the target's embedding, head, final norm and the chosen layers."""
    depth = target.config.num_hidden_layers
    if not config.layers or any(not -depth <= i < depth for i in config.layers):
        raise ConfigError(
            f"DraftConfig.layers must name target layers in -{depth}..{depth - 1}, got {config.layers}"
        )
    draft_config = dataclasses.replace(target.config, num_hidden_layers=len(config.layers))
    with torch.device("meta"):
        draft = Llama(draft_config, attention=target.attention)
    draft.model.embed_tokens = copy.deepcopy(target.model.embed_tokens)
    draft.model.norm = copy.deepcopy(target.model.norm)
    draft.model.layers = nn.ModuleList(copy.deepcopy(target.model.layers[i % depth]) for i in config.layers)
    for new_index, layer in enumerate(draft.model.layers):
        layer.self_attn.layer_idx = new_index  # the draft's own KV cache has one slot per draft layer
    if target.config.tie_word_embeddings:
        draft.lm_head.weight = draft.model.embed_tokens.weight  # one tensor, as in the target
    else:
        draft.lm_head = copy.deepcopy(target.lm_head)
    draft.model.rotary_emb = copy.deepcopy(target.model.rotary_emb)
    return draft.eval()


class FrequentVocabDraft(nn.Module):
    """A draft Llama whose proposals come from a :class:`VocabHead` (speculative decoding's draft interface).

    ``forward(input_ids, cache=...)`` returns full-vocabulary logits (B, 1, V) for the *last* position only
    (−inf outside the head's tokens): the draft loop reads only that row, and the prompt's prefill would
    otherwise score every prompt position.
    """

    def __init__(self, model: Llama, head: VocabHead) -> None:
        super().__init__()
        self.model = model
        self.head = head

    @property
    def config(self):  # noqa: ANN201 - the draft Llama's config (vocabulary size, context)
        return self.model.config

    @property
    def attention(self) -> str:
        return self.model.attention

    def setup_cache(self, batch_size: int, max_length: int) -> KVCache:
        return self.model.setup_cache(batch_size, max_length)

    def forward(self, input_ids: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        hidden = self.model(input_ids, cache=cache, logits=False)[:, -1:]  # (B, 1, E)
        return self.head.widen(self.head.logits(hidden))  # (B, 1, V)


def distill_loss(model: Llama, head: VocabHead, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """(forward-KL objective, scored positions) of a :class:`~.distill.DistillBatches` batch (eq. 1)."""
    hidden = model(batch["input_ids"], attention_mask=batch["mask"], logits=False)  # (B, L, E)
    log_q = F.log_softmax(head.logits(hidden).float(), dim=-1)  # (B, L, K)
    index = _head_index(head, batch["top_ids"])  # (B, L, k): row of each teacher token in the head, or -1
    p = batch["top_probs"] * (index >= 0)  # teacher mass outside the K tokens is dropped ...
    mass = p.sum(-1, keepdim=True)  # (B, L, 1)
    keep = predicts_reply(batch) & (mass[..., 0] > 0)  # the guesses of reply tokens only
    p = p / mass.clamp(min=1e-12)  # ... and the rest renormalised
    ce = -(p * log_q.gather(-1, index.clamp(min=0))).sum(-1)  # (B, L)
    count = int(keep.sum())
    return (ce * keep).sum() / max(count, 1), count


def _head_index(head: VocabHead, token_ids: torch.Tensor) -> torch.Tensor:
    """Vocabulary ids -> their row in the head (−1 when the head lacks them)."""
    if head.tokens is None:
        return token_ids
    lookup = torch.full((head.vocab_size,), -1, dtype=torch.long)
    lookup[head.tokens] = torch.arange(head.size)
    return lookup[token_ids]


class DistillModel(nn.Module):
    """The draft and its (frozen) head as one module for ``core.train.train``: forward -> (loss, tokens)."""

    def __init__(self, draft: Llama, head: VocabHead) -> None:
        super().__init__()
        self.draft = draft
        self.head = head
        draft.model.embed_tokens.requires_grad_(
            False
        )  # the target's embedding and tied head stay as they are

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        return distill_loss(self.draft, self.head, batch)


def distill_training_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """``loss_fn`` for ``core.train.train(DistillModel(...), distill_training_loss, DistillBatches(...))``."""
    return model(batch)
