"""Build a decoder for ``papernotes llm generate --method NAME`` from files on disk.

A decoder is ``(input_ids (1, T), GenerationConfig) -> (new_ids, DecodeStats)``. The extra
weights each method needs sit beside the base model directory by default, the layout that
``papernotes reproduce`` caches and ``llm train-medusa`` / ``train-mtp`` write:

    <root>/target/   the HF base model (config.json, model.safetensors, tokenizer.json)
    <root>/draft/    a smaller HF model with the same tokenizer (speculative decoding)
    <root>/medusa/   medusa_heads.safetensors + medusa_config.json
    <root>/mtp/      mtp_modules.safetensors + mtp_config.json
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from papernotes.errors import CheckpointError
from papernotes.llm.generation import lookup, medusa, mtp, speculative
from papernotes.llm.generation.benchmark import Decoder
from papernotes.llm.generation.generate import generate
from papernotes.llm.model.llama import Llama


def sibling(model_dir: Path, given: Path | None, name: str) -> Path:
    """``given``, or the folder ``name`` beside ``model_dir``; it must exist."""
    path = Path(given) if given is not None else Path(model_dir).resolve().parent / name
    if not path.is_dir():
        raise CheckpointError(f"{path} does not exist; pass --{name} DIR (or train it first: see --help)")
    return path


def _plain(model: Llama, model_dir: Path, paths: dict[str, Path | None], gamma: int) -> Decoder:
    return lambda ids, cfg: generate(model, ids, cfg)


def _speculative(model: Llama, model_dir: Path, paths: dict[str, Path | None], gamma: int) -> Decoder:
    draft = Llama.from_pretrained(sibling(model_dir, paths.get("draft"), "draft"), attention=model.attention)
    speculative.check_draft(model, draft, gamma)
    return lambda ids, cfg: speculative.speculative_generate(model, draft, ids, cfg, num_draft_tokens=gamma)


def _lookup(model: Llama, model_dir: Path, paths: dict[str, Path | None], gamma: int) -> Decoder:
    return lambda ids, cfg: lookup.lookup_generate(model, ids, cfg, num_draft_tokens=gamma)


def _medusa(model: Llama, model_dir: Path, paths: dict[str, Path | None], gamma: int) -> Decoder:
    heads = medusa.load_medusa_heads(model, sibling(model_dir, paths.get("medusa"), "medusa"))
    return lambda ids, cfg: medusa.medusa_generate(model, heads, ids, cfg)


def _mtp(model: Llama, model_dir: Path, paths: dict[str, Path | None], gamma: int) -> Decoder:
    modules = mtp.load_mtp_modules(model, sibling(model_dir, paths.get("mtp"), "mtp"))
    return lambda ids, cfg: mtp.mtp_generate(model, modules, ids, cfg)


# a plain mapping from method name to the function that assembles it
BUILDERS: dict[str, Callable[[Llama, Path, dict[str, Path | None], int], Decoder]] = {
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
    method: str, model: Llama, model_dir: Path, paths: dict[str, Path | None], num_draft_tokens: int = 4
) -> Decoder:
    """The decoder for ``method``; ``paths`` may name "draft", "medusa", "mtp" folders explicitly."""
    return BUILDERS[method](model, Path(model_dir), paths, num_draft_tokens)
