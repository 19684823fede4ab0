"""Build a decoder for ``papernotes llm generate --method NAME`` from files on disk.

A decoder is ``(input_ids (1, T), GenerationConfig) -> (new_ids, DecodeStats)``. The extra
weights each method needs sit in one folder (``root``): beside an HF base model directory by default,
and for the base (SmolLM2's GGUF file, in site-packages) in the cache, where ``papernotes reproduce``
trains them:

    <root>/draft/    a smaller HF model with the same tokenizer (speculative decoding), and optionally
                     frequent_tokens.json (the FR-Spec vocabulary it proposes from) and decoding.json
                     ({"num_draft_tokens": γ}, the γ chosen from the measured cost curve)
    <root>/medusa/   medusa_heads.safetensors + medusa_config.json (with the chosen tree)
    <root>/mtp/      mtp_modules.safetensors + mtp_config.json (with the chain length)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch

from papernotes.errors import CheckpointError
from papernotes.llm.generation import lookup, medusa, mtp, speculative
from papernotes.llm.generation.benchmark import Decoder
from papernotes.llm.generation.draft import FrequentVocabDraft
from papernotes.llm.generation.frequent_vocab import VocabHead
from papernotes.llm.generation.generate import generate
from papernotes.llm.model.llama import Llama

FREQUENT_TOKENS = "frequent_tokens.json"  # in a draft folder: the FR-Spec vocabulary, a list of token ids
DECODING_CHOICES = "decoding.json"  # in a draft folder: {"num_draft_tokens": γ} chosen from measured costs
DEFAULT_NUM_DRAFT_TOKENS = 4


def sibling(root: Path, given: Path | None, name: str) -> Path:
    """``given``, or the folder ``name`` in ``root``; it must exist."""
    path = Path(given) if given is not None else Path(root) / name
    if not path.is_dir():
        raise CheckpointError(f"{path} does not exist; pass --{name} DIR (or train it first: see --help)")
    return path


def load_draft(model: Llama, directory: Path) -> tuple[Llama | FrequentVocabDraft, int | None]:
    """The draft in ``directory`` (with its FR-Spec head when it has one) and its chosen γ, if recorded."""
    draft = Llama.from_pretrained(directory, attention=model.attention).eval()
    speculative.check_draft(model, draft, 1)
    vocab_file, choices = directory / FREQUENT_TOKENS, directory / DECODING_CHOICES
    gamma = json.loads(choices.read_text()).get("num_draft_tokens") if choices.is_file() else None
    if not vocab_file.is_file():
        return draft, gamma
    tokens = torch.tensor(json.loads(vocab_file.read_text()), dtype=torch.long)
    if tokens.numel() == 0 or int(tokens.max()) >= model.config.vocab_size or int(tokens.min()) < 0:
        raise CheckpointError(f"{vocab_file}: expected token ids in 0..{model.config.vocab_size - 1}")
    return FrequentVocabDraft(draft, VocabHead(draft.lm_head.weight, tokens)), gamma


def _plain(model: Llama, root: Path, paths: dict[str, Path | None], gamma: int | None) -> Decoder:
    return lambda ids, cfg: generate(model, ids, cfg)


def _speculative(model: Llama, root: Path, paths: dict[str, Path | None], gamma: int | None) -> Decoder:
    draft, chosen = load_draft(model, sibling(root, paths.get("draft"), "draft"))
    gamma = gamma or chosen or DEFAULT_NUM_DRAFT_TOKENS
    speculative.check_draft(model, draft, gamma)
    return lambda ids, cfg: speculative.speculative_generate(model, draft, ids, cfg, num_draft_tokens=gamma)


def _lookup(model: Llama, root: Path, paths: dict[str, Path | None], gamma: int | None) -> Decoder:
    gamma = gamma or DEFAULT_NUM_DRAFT_TOKENS
    return lambda ids, cfg: lookup.lookup_generate(model, ids, cfg, num_draft_tokens=gamma)


def _medusa(model: Llama, root: Path, paths: dict[str, Path | None], gamma: int | None) -> Decoder:
    heads = medusa.load_medusa_heads(model, sibling(root, paths.get("medusa"), "medusa"))
    return lambda ids, cfg: medusa.medusa_generate(model, heads, ids, cfg)


def _mtp(model: Llama, root: Path, paths: dict[str, Path | None], gamma: int | None) -> Decoder:
    modules = mtp.load_mtp_modules(model, sibling(root, paths.get("mtp"), "mtp"))
    return lambda ids, cfg: mtp.mtp_generate(model, modules, ids, cfg, num_drafts=gamma)


# a plain mapping from method name to the function that assembles it
BUILDERS: dict[str, Callable[[Llama, Path, dict[str, Path | None], int | None], Decoder]] = {
    "plain": _plain,
    "speculative": _speculative,
    "lookup": _lookup,
    "medusa": _medusa,
    "mtp": _mtp,
}


def is_lossless(method: str, temperature: float) -> bool:
    """True when ``method``'s output follows plain decoding's distribution exactly at this temperature.

    Every method is exact when greedy (the tests compare tokens). When sampling, speculative decoding,
    lookup and MTP keep the distribution (rejection sampling, Leviathan et al. 2023); Medusa's typical
    acceptance (Cai et al. 2024, Sec. 2.3.1) accepts any plausible candidate and so changes it.
    """
    return method != "medusa" or temperature == 0


NOT_LOSSLESS = (
    "Medusa's typical acceptance at temperature > 0 is not lossless: the replies do not follow the model's "
    "own sampling distribution (greedy Medusa, or speculative/lookup/mtp sampling, are exact)"
)


def build_decoder(
    method: str,
    model: Llama,
    root: Path,
    paths: dict[str, Path | None],
    num_draft_tokens: int | None = None,
) -> Decoder:
    """The decoder for ``method`` with its extra weights from ``root`` (or the folders ``paths`` names).

    ``num_draft_tokens`` None: the γ recorded beside the draft, else 4 (MTP: its stored chain length).
    """
    return BUILDERS[method](model, Path(root), paths, num_draft_tokens)
