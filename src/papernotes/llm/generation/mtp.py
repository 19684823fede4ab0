"""Multi-token prediction (MTP) modules, their training loss, and self-speculative decoding.

Paper: DeepSeek-AI 2024, "DeepSeek-V3 Technical Report", arXiv:2412.19437, Sec. 2.2.

Idea: besides the next token, train D small sequential modules to predict the tokens 2..D+1
ahead. Module k keeps the causal chain: at position i it combines the depth-(k-1)
representation h_i^{k-1} with the embedding of token t_{i+k}, runs one transformer block and
predicts t_{i+k+1} through the main model's SHARED output head:

    h'_i^k = M_k [RMSNorm(h_i^{k-1}); RMSNorm(Emb(t_{i+k}))]        (eq. 21, M_k: 2E -> E)
    h^k_{1:T-k} = TRM_k(h'^k_{1:T-k})                                 (eq. 22, a causal block)
    P^k_{i+k+1} = OutHead(h_i^k) = softmax(W_out RMSNorm_final(h_i^k)) (eq. 23)
    L = L_main + (λ / D) Σ_k CrossEntropy(P^k, t_{k+2:T+1})           (eqs. 24-25)

Here h^0 is the main model's output representation, ``Llama.forward(return_hidden=True)``:
the POST-final-norm hidden state (HF's ``last_hidden_state``), so no hook into the base is
needed; module k's own ``hnorm`` re-normalises it. The embedding and the output head (final
norm + lm_head) are the main model's own tensors, not copies. Each module's block is a fresh
``LlamaDecoderLayer`` with its own weights.

At inference the modules draft D tokens that the main model verifies in one forward (as in
speculative decoding, Leviathan et al. 2023, arXiv:2211.17192); greedy output is exactly the
main model's greedy output, sampled output follows its distribution exactly.

Tests (``tests/llm/generation/test_mtp.py``): the loss against a hand computation position by
position, gradient flow in the joint and frozen-base modes, greedy ``mtp_generate`` equal to
``generate`` token for token (random, garbage and trained modules, depth 1 and 2), high
acceptance after training on a repetitive sequence, the acceptance rule's output distribution,
and the save/load round trip and its errors.

Shapes: B batch, T tokens, E hidden size, V vocabulary, m drafts in one step. Depth k = 1..D
indexes the modules; ``modules.layers[k - 1]`` is module k.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from papernotes.core.checkpoint import load_weights
from papernotes.core.train import IGNORE_INDEX
from papernotes.errors import CheckpointError, ConfigError, DataError
from papernotes.llm.generation.distill import reply_tokens
from papernotes.llm.generation.frequent_vocab import VocabHead
from papernotes.llm.generation.generate import DecodeLoop, DecodeStats, GenerationConfig, check_prompt
from papernotes.llm.generation.sampling import logits_to_probs, sample, verify_draft
from papernotes.llm.model.config import LlamaConfig
from papernotes.llm.model.extra_weights import load_extra_weights, read_extra_config, save_extra_weights
from papernotes.llm.model.llama import Llama, LlamaDecoderLayer
from papernotes.nn.kv_cache import KVCache
from papernotes.nn.rmsnorm import RMSNorm

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "mtp_modules.safetensors"
CONFIG_FILE = "mtp_config.json"


@dataclass
class MTPConfig:
    """Multi-token prediction hyper-parameters; defaults are DeepSeek-V3's early pre-training."""

    depth: int = 1  # D, sequential modules; module k predicts the token k + 1 ahead (V3: 1)
    loss_weight: float = 0.3  # λ on the mean MTP loss: 0.3 for V3's first 10T tokens, then 0.1
    num_drafts: int = 0  # drafts per step when decoding (0: depth); past depth the last module chains

    def __post_init__(self) -> None:
        if not isinstance(self.depth, int) or isinstance(self.depth, bool) or self.depth < 1:
            raise ConfigError(f"MTPConfig.depth must be a positive integer, got {self.depth!r}")
        if not isinstance(self.loss_weight, int | float) or self.loss_weight < 0:
            raise ConfigError(f"MTPConfig.loss_weight must be a number >= 0, got {self.loss_weight!r}")
        if not isinstance(self.num_drafts, int) or self.num_drafts < 0:
            raise ConfigError(f"MTPConfig.num_drafts must be an integer >= 0, got {self.num_drafts!r}")


PRESETS: dict[str, MTPConfig] = {
    "deepseek-v3": MTPConfig(depth=1, loss_weight=0.3),
    "deepseek-v3-late": MTPConfig(depth=1, loss_weight=0.1),  # the last 4.8T tokens of V3
    "tiny": MTPConfig(depth=2, loss_weight=0.3),  # tests: depth 2 exercises the chain
}


class MTPModule(nn.Module):
    """One MTP module: ``hnorm``, ``enorm``, the projection ``eh_proj`` (M_k) and a transformer block.

    Parameter names follow DeepSeek-V3's checkpoints (``enorm``, ``hnorm``, ``eh_proj``) so an
    export can be mapped by name; the block is a ``LlamaDecoderLayer`` that reads slot 0 of the
    module's own one-layer KV cache.
    """

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        E = config.hidden_size
        self.hnorm = RMSNorm(E, config.rms_norm_eps)  # on h^{k-1}
        self.enorm = RMSNorm(E, config.rms_norm_eps)  # on Emb(t_{i+k})
        self.eh_proj = nn.Linear(2 * E, E, bias=False)  # M_k
        self.block = LlamaDecoderLayer(config, layer_idx=0)

    def forward(
        self,
        hidden: torch.Tensor,
        embeds: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        *,
        backend: str,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """h^{k-1} (B, T, E) and Emb(t_{i+k}) (B, T, E) at the same T positions -> h^k (B, T, E).

        With ``cache`` the T positions follow the cache's filled slots and the cache advances by T.
        """
        x = self.eh_proj(torch.cat((self.hnorm(hidden), self.enorm(embeds)), dim=-1))  # eq. 21: (B, T, E)
        T = x.shape[1]
        # causal is bottom-right aligned, so with a cache query i sees the cached slots and new keys <= i
        out = self.block(x, cos, sin, backend=backend, causal=T > 1, cache=cache)  # eq. 22
        if cache is not None:
            cache.advance(T)
        return out


class MTPModules(nn.Module):
    """The D modules. They hold no embedding or head: those stay the main model's (see ``shared_logits``)."""

    def __init__(self, base_config: LlamaConfig, config: MTPConfig) -> None:
        super().__init__()
        self.config = config
        self.base_config = base_config  # shapes of the main model the modules were built for
        self.layers = nn.ModuleList(MTPModule(base_config) for _ in range(config.depth))
        # the tokens the modules draft from (FR-Spec rows of the shared head); empty = all. Stored with them.
        self.register_buffer("vocab", torch.zeros(0, dtype=torch.long))

    def head(self, model: Llama) -> VocabHead | None:
        """The shared head restricted to ``vocab`` (None: the model's whole head)."""
        return VocabHead(model.lm_head.weight, self.vocab) if self.vocab.numel() else None

    @property
    def depth(self) -> int:
        return len(self.layers)

    def layer_at(self, depth: int) -> MTPModule:
        """The module for draft depth ``depth`` (1-based); past D the last module is applied again, feeding
        on its own output state (the chain drafter of EAGLE, Li et al. 2024, built from an MTP module)."""
        return self.layers[min(depth, self.depth) - 1]

    def setup_caches(self, max_length: int, levels: int | None = None) -> list[KVCache]:
        """One single-layer KVCache per draft depth (their attention also runs over past positions)."""
        weight = self.layers[0].eh_proj.weight
        cfg = self.base_config
        return [
            KVCache(1, 1, cfg.num_key_value_heads, max_length, cfg.head_dim, weight.dtype, weight.device)
            for _ in range(levels or self.depth)
        ]


def add_mtp_modules(model: Llama, config: MTPConfig) -> MTPModules:
    """Build fresh MTP modules for ``model``, in its dtype and on its device, and return them.

    The modules are returned, NOT registered on ``model``: the base keeps its HF-identical
    ``state_dict`` (``save_pretrained`` and HF parity are untouched). Consequences: cast or move
    both (``model.to(d); modules.to(d)``), and train both through ``MTPTrainingModel``.
    """
    modules = MTPModules(model.config, config)
    std = model.config.initializer_range
    for module in modules.modules():
        if isinstance(module, nn.Linear):  # the base's init: N(0, initializer_range); norms stay 1
            nn.init.normal_(module.weight, mean=0.0, std=std)
    weight = model.lm_head.weight
    return modules.to(device=weight.device, dtype=weight.dtype)


def _check_pair(model: Llama, modules: MTPModules) -> None:
    cfg, ref = model.config, modules.base_config
    fields = ("hidden_size", "num_key_value_heads", "head_dim", "num_attention_heads", "intermediate_size")
    for name in fields:
        if getattr(cfg, name) != getattr(ref, name):
            raise ConfigError(
                f"MTP modules were built for {name}={getattr(ref, name)}, the model has {getattr(cfg, name)}"
            )
    dtypes = (model.lm_head.weight.dtype, modules.layers[0].eh_proj.weight.dtype)
    if dtypes[0] != dtypes[1]:
        raise ConfigError(f"model is {dtypes[0]} but the MTP modules are {dtypes[1]}; cast both")


def shared_logits(model: Llama, hidden: torch.Tensor, head: VocabHead | None = None) -> torch.Tensor:
    """The main model's output head on an MTP representation: (..., E) -> (..., V) (eq. 23).

    With ``head`` (the main head's frequent-token rows, FR-Spec) only those tokens are scored and the
    rest get −inf: a draft then costs K / V of the head.
    """
    normed = model.model.norm(hidden)
    return model.lm_head(normed) if head is None else head.widen(head.logits(normed))


def _module_forward(
    model: Llama,
    module: MTPModule,
    hidden: torch.Tensor,
    tokens: torch.Tensor,
    start: int,
    cache: KVCache | None = None,
) -> torch.Tensor:
    """Module k at positions [start, start + T): h^{k-1} (B, T, E), ids t_{i+k} (B, T) -> h^k (B, T, E)."""
    B, T = tokens.shape
    positions = torch.arange(start, start + T, device=tokens.device).expand(B, T)  # (B, T)
    embeds = model.model.embed_tokens(tokens)  # (B, T, E), the shared embedding
    cos, sin = model.model.rotary_emb(positions, embeds.dtype)  # (B, T, head_dim) each
    return module(hidden, embeds, cos, sin, backend=model.attention, cache=cache)


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


def _draft(
    model: Llama,
    modules: MTPModules,
    caches: list[KVCache],
    hidden: list[torch.Tensor],
    seq: torch.Tensor,
    n: int,
    num_drafts: int,
    config: GenerationConfig,
    generator: torch.Generator,
    head: VocabHead | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Drafts for t_{n+1} .. t_{n+m}, given committed tokens seq[:, :n + 1] and h^0 at positions < n.

    Module k at position j reads h^{k-1}_j and t_{j+k}. Its cache keeps only positions whose
    inputs are all committed (j + k <= n); every call feeds the positions from its cache's end up
    to n - 1, where tokens past t_n are the drafts d_1 .. d_{k-1} and h^{k-1} past the committed
    ones is this step's output of module k - 1, then crops the cache back to the committed part.
    So after any rollback the caches hold exactly what a full recomputation would, with no
    bookkeeping beyond ``crop``. ``hidden[k]`` (1, L, E) buffers h^k by position, read by module k+1.
    Returns draft ids (m,) and their draft distributions q (m, V).
    """
    drafts: list[torch.Tensor] = []
    probs: list[torch.Tensor] = []
    for k in range(1, num_drafts + 1):
        cache, start = caches[k - 1], caches[k - 1].length
        tokens = torch.cat([seq[:, : n + 1], *[d.view(1, 1) for d in drafts]], dim=1)  # (1, n + k)
        out = _module_forward(
            model,
            modules.layer_at(k),
            hidden[k - 1][:, start:n],
            tokens[:, start + k : n + k],
            start,
            cache,
        )  # h^k at positions start .. n - 1: (1, n - start, E)
        cache.crop(max(0, n - k + 1))  # keep positions j <= n - k: their inputs are all committed
        if k < len(hidden):
            hidden[k][:, start:n] = out  # positions past the committed ones are rewritten next step
        logits = shared_logits(model, out[0, -1], head)
        q = logits_to_probs(logits, config.temperature, config.top_k, config.top_p)
        drafts.append(sample(q, generator))  # t_{n+k} drafted from position n - 1
        probs.append(q)
    V = model.config.vocab_size
    if not drafts:
        return seq.new_zeros(0), torch.zeros(0, V, device=seq.device)
    return torch.stack(drafts), torch.stack(probs)  # (m,), (m, V)


@torch.inference_mode()
def mtp_generate(
    model: Llama,
    modules: MTPModules,
    input_ids: torch.Tensor,
    config: GenerationConfig,
    num_drafts: int | None = None,
    head: VocabHead | None = None,
) -> tuple[torch.Tensor, DecodeStats]:
    """Self-speculative decoding: the MTP modules draft, the main model verifies in one forward.

    Each step: the modules draft up to D tokens after the last emitted token t_n (fewer near
    ``max_new_tokens``); the main model reads [t_n, drafts] with its KV cache; the longest
    accepted prefix plus one token from the main model are emitted (``sampling.verify_draft``); the
    main cache is cropped to the emitted tokens. Greedy output equals ``generate``'s token for
    token; sampled output has the same distribution (not the same tokens for a seed).
    ``num_drafts`` (default D) may exceed D: the last module then drafts again from its own output state
    (a chain, as EAGLE's draft head). ``head`` restricts the drafts to frequent tokens (FR-Spec).
    Stats: ``record_position(k - 1, accepted)`` for every draft of depth k that was verified.
    """
    check_prompt(model, input_ids, config)
    _check_pair(model, modules)
    loop = DecodeLoop(config)
    T = input_ids.shape[1]
    length = T + config.max_new_tokens  # the last verified position is T + max_new_tokens - 2
    cache = model.setup_cache(1, length)
    chain = num_drafts or modules.config.num_drafts or modules.depth
    head = head if head is not None else modules.head(model)
    if chain < 1:
        raise ConfigError(f"num_drafts must be >= 1, got {chain}")
    caches = modules.setup_caches(length, levels=chain)
    E = model.config.hidden_size
    seq = input_ids.new_zeros(1, length)  # committed tokens t_0 .. t_n
    seq[:, :T] = input_ids
    logits, h = model(input_ids, cache=cache, return_hidden=True)  # prefill: (1, T, V), (1, T, E)
    loop.stats.target_calls += 1
    if config.max_new_tokens == 0:  # as generate: the prefill runs, nothing is emitted
        return loop.result(input_ids)
    hidden = [h.new_zeros(1, length, E) for _ in range(chain)]  # hidden[k]: h^k by position
    hidden[0][:, :T] = h
    emitted = [loop.sample(logits[0, -1])]
    n = T  # index of the newest committed token t_n; the main cache holds positions < n
    while not loop.emit(emitted):  # eos and max_new_tokens cut exactly
        seq[:, n] = emitted[-1]
        # drafts + the bonus token must fit in max_new_tokens
        count = min(chain, config.max_new_tokens - len(loop.new) - 1)
        drafts, q = _draft(model, modules, caches, hidden, seq, n, count, config, loop.generator, head)
        feed = torch.cat([seq[:, n : n + 1], drafts.view(1, -1)], dim=1)  # [t_n, d_1 .. d_m]: (1, m + 1)
        logits, h = model(feed, cache=cache, return_hidden=True)  # (1, m + 1, V), (1, m + 1, E)
        loop.stats.target_calls += 1
        accepted, bonus = verify_draft(loop.probs(logits[0]), q, drafts, loop.generator)  # p: (m + 1, V)
        for position in range(count):
            loop.stats.record_position(position, position < accepted)
        cache.crop(n + accepted + 1)  # keep t_n and the accepted drafts; drop the rejected tail
        hidden[0][:, n : n + accepted + 1] = h[:, : accepted + 1]
        seq[:, n + 1 : n + accepted + 1] = drafts[:accepted]
        emitted = [*drafts[:accepted].tolist(), bonus]
        n += accepted + 1
    return loop.result(input_ids)


def save_mtp_modules(modules: MTPModules, directory: str | Path) -> Path:
    """Write ``mtp_modules.safetensors`` and ``mtp_config.json`` into ``directory`` (created if needed).

    Only the modules' own weights are stored (the embedding and head belong to the base).
    """
    meta = {
        **dataclasses.asdict(modules.config),
        "base_hidden_size": modules.base_config.hidden_size,  # informative; shapes are checked per tensor
        "torch_dtype": str(modules.layers[0].eh_proj.weight.dtype).removeprefix("torch."),
    }
    return save_extra_weights(modules, directory, WEIGHTS_FILE, CONFIG_FILE, meta)


def load_mtp_modules(model: Llama, directory: str | Path) -> MTPModules:
    """Load modules written by :func:`save_mtp_modules` for ``model`` (in its dtype and device).

    Raises CheckpointError for a missing or unreadable file and missing or unexpected tensors,
    ShapeMismatchError naming the tensor and both shapes when a weight does not fit the base.
    """
    config, _ = read_extra_config(directory, CONFIG_FILE, MTPConfig, "save_mtp_modules")
    modules = add_mtp_modules(model, config)
    stored_vocab = load_weights(Path(directory) / WEIGHTS_FILE).get("vocab")
    if stored_vocab is not None:  # the buffer's length is the file's
        modules.vocab = torch.zeros_like(stored_vocab)
    load_extra_weights(modules, directory, WEIGHTS_FILE, model.lm_head.weight, f"depth={config.depth}")
    if modules.vocab.numel() and int(modules.vocab.max()) >= model.config.vocab_size:
        raise CheckpointError(
            f"{Path(directory) / WEIGHTS_FILE}: the modules' vocab holds token ids up to "
            f"{int(modules.vocab.max())}, the model has vocab_size={model.config.vocab_size}"
        )
    logger.info("loaded %d MTP modules from %s", config.depth, directory)
    return modules
