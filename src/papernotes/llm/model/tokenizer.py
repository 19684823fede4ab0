"""Byte-level BPE tokenizers with Hugging Face ``tokenizers``: trained here, or read from a GGUF file.

Byte-level BPE (as in GPT-2 and Llama 3's tiktoken vocabulary) starts from the 256
byte values, so every string round-trips and nothing is ever "unknown"; merges are
learned from the corpus. We train a small vocabulary on the embedded corpus (Llama 3
uses 128K tokens; a few thousand suit a model of a few million parameters).

A GGUF file (llama.cpp) stores a pretrained one as metadata: ``tokenizer.ggml.tokens`` (spelled in
GPT-2's byte alphabet), ``merges``, ``token_type`` (3 = control: the special tokens) and ``pre``,
the name of the pre-tokenizer the merges were learned with. :func:`tokenizer_from_gguf` rebuilds it;
``tests/llm/model/test_gguf_tokenizer.py`` holds its ids equal to transformers' GGUF tokenizer.

Saved as ``tokenizer.json`` + ``tokenizer_config.json`` + ``special_tokens_map.json``
so that ``transformers.AutoTokenizer`` / ``PreTrainedTokenizerFast`` load the
directory as-is; the tests hold our ids equal to transformers'.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

from papernotes.errors import CheckpointError
from papernotes.llm.model import gguf_file

BOS = "<|begin_of_text|>"
EOS = "<|end_of_text|>"
SPECIAL_TOKENS = (BOS, EOS)
# tokenizer.ggml.token_type values (llama.cpp's llama_token_type) that become added tokens
GGUF_CONTROL = 3  # special: <|im_start|>, <|endoftext|> ...
GGUF_USER_DEFINED = 4  # matched whole in the text, but not special


def train_tokenizer(texts: Iterable[str], vocab_size: int = 4096) -> Tokenizer:
    """Train byte-level BPE on ``texts``; ids 0 and 1 are BOS and EOS."""
    tok = Tokenizer(models.BPE())
    # add_prefix_space=False: code is whitespace-sensitive, keep the text exactly
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def save_tokenizer(
    tok: Tokenizer,
    directory: str | Path,
    special: dict[str, str | None] | None = None,
    chat_template: str | None = None,
    model_max_length: int = 1_000_000,
) -> None:
    """Write the three files transformers reads, into an existing ``directory``.

    ``special`` maps ``bos_token`` / ``eos_token`` / ``pad_token`` / ``unk_token`` to token strings
    (our BOS and EOS by default); ``chat_template`` (Jinja) goes into tokenizer_config.json.
    """
    directory = Path(directory)
    tok.save(str(directory / "tokenizer.json"))
    special = {"bos_token": BOS, "eos_token": EOS} if special is None else special
    special = {name: token for name, token in special.items() if token is not None}
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **special,
        "model_max_length": model_max_length,
        "clean_up_tokenization_spaces": False,
    }
    if chat_template is not None:
        config["chat_template"] = chat_template
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (directory / "special_tokens_map.json").write_text(json.dumps(special, indent=2))


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Read ``tokenizer.json`` from a model or tokenizer directory, or rebuild a GGUF file's.

    For a GGUF file, the copy exported into the cache by ``Llama.from_pretrained`` is read when it
    exists (reading the file's 49K-token vocabulary takes seconds; the copy, milliseconds).
    """
    path = Path(path)
    if path.is_file():  # an HF model or tokenizer is a directory: a file must be GGUF
        gguf_file.check_magic(path)
        cached = gguf_file.cache_folder(path) / "tokenizer.json"
        if cached.is_file():
            return _read_tokenizer_json(cached)
        return tokenizer_from_gguf(gguf_file.open_gguf(path), path)[0]
    return _read_tokenizer_json(path / "tokenizer.json")


def _read_tokenizer_json(path: Path) -> Tokenizer:
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist; expected a tokenizer.json beside the model")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception on malformed JSON
        raise CheckpointError(f"{path} is not a valid tokenizers JSON file: {exc}") from exc


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte alphabet (Radford et al. 2019, ``encoder.py``): printable bytes stand for themselves,
    the other 68 are shifted to code points 256+, so that every byte is a visible character."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    shifted = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + i) for i, b in enumerate(shifted)}}


def gguf_pre_tokenizer(name: str, source: str | Path) -> pre_tokenizers.PreTokenizer:
    """The pre-tokenizer a GGUF file's ``tokenizer.ggml.pre`` names (llama.cpp, ``llama-vocab.cpp``).

    "smollm" (SmolLM, SmolLM2) applies two regexes in turn: ``\\p{N}``, so that every digit stands
    alone, then GPT-2's split on the rest. That is SmolLM2's own tokenizer.json (Digits with
    individual_digits, then ByteLevel). transformers 5.x has no entry for "smollm" and falls back to
    GPT-2's split alone. The vocabulary has no token holding a digit next to anything, so the two agree
    except where two or more whitespace characters precede a digit, or a space precedes a non-ASCII
    numeral (²): "x  1" is [x, ĠĠ, 1] here and in llama.cpp, [x, Ġ, Ġ, 1] in transformers.
    """
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if name == "smollm":
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    if name in ("default", "gpt2", "gpt-2"):
        return byte_level
    raise CheckpointError(
        f"{source}: tokenizer.ggml.pre={name!r} is not supported; supported: 'smollm', 'default', 'gpt-2'"
    )


def tokenizer_from_gguf(reader: gguf.GGUFReader, source: str | Path) -> tuple[Tokenizer, dict[str, Any]]:
    """The byte-level BPE a GGUF file describes, and the keyword arguments of :func:`save_tokenizer`.

    Those are ``special`` (``bos_token``, ``eos_token``, ``pad_token``, ``unk_token``: strings or None,
    from ``tokenizer.ggml.*_token_id``), ``chat_template`` (``tokenizer.chat_template``, None if absent)
    and ``model_max_length`` (``llama.context_length``): ``save_tokenizer(tok, directory, **config)``.
    """
    model = gguf_file.metadata(reader, "tokenizer.ggml.model", source)
    if model != "gpt2":
        raise CheckpointError(
            f"{source}: tokenizer.ggml.model={model!r} is not supported; expected 'gpt2' (byte-level BPE)"
        )
    tokens = gguf_file.metadata(reader, "tokenizer.ggml.tokens", source)
    merges = gguf_file.metadata(reader, "tokenizer.ggml.merges", source)
    types = gguf_file.metadata(reader, "tokenizer.ggml.token_type", source, default=[1] * len(tokens))
    if len(types) != len(tokens):
        raise CheckpointError(
            f"{source}: tokenizer.ggml.token_type has {len(types)} entries for {len(tokens)} tokens"
        )
    pairs = [tuple(merge.split(" ")) for merge in merges]
    if bad := next((m for m, pair in zip(merges, pairs) if len(pair) != 2), None):
        raise CheckpointError(f"{source}: tokenizer.ggml.merges holds {bad!r}; expected 'left right'")
    spelling = bytes_to_unicode()
    alphabet = set(spelling.values())
    # llama.cpp writes byte-level tokens in GPT-2's alphabet already; respell any that is not, as
    # transformers does, so that both build the same vocabulary
    spelled = [t if set(t) <= alphabet else "".join(spelling[b] for b in t.encode("utf-8")) for t in tokens]
    vocab = {token: index for index, token in enumerate(spelled)}
    tok = Tokenizer(
        models.BPE(
            vocab=vocab, merges=pairs, continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False
        )
    )
    tok.pre_tokenizer = gguf_pre_tokenizer(
        gguf_file.metadata(reader, "tokenizer.ggml.pre", source, "default"), source
    )
    tok.decoder = decoders.ByteLevel()
    # control tokens are the special ones: matched whole before pre-tokenizing, skipped when decoding
    # with skip_special_tokens. A control token outside the byte alphabet is a llama.cpp mislabel (its
    # respelled form is an ordinary token), so it is left alone, as transformers does
    control = [t for t, kind in zip(tokens, types) if kind == GGUF_CONTROL and set(t) <= alphabet]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in control])
    user = [t for t, kind in zip(spelled, types) if kind == GGUF_USER_DEFINED]
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in user])
    if tok.get_vocab_size() != len(tokens):
        raise CheckpointError(
            f"{source}: the vocabulary has {tok.get_vocab_size()} distinct entries for {len(tokens)} tokens"
        )

    def token(key: str) -> str | None:
        index = gguf_file.metadata(reader, f"tokenizer.ggml.{key}", source, default=None)
        if index is not None and not 0 <= index < len(tokens):
            raise CheckpointError(
                f"{source}: tokenizer.ggml.{key}={index} is outside the {len(tokens)} tokens"
            )
        return tokens[index] if index is not None else None

    config = {
        "special": {
            "bos_token": token("bos_token_id"),
            "eos_token": token("eos_token_id"),
            "pad_token": token("padding_token_id"),
            "unk_token": token("unknown_token_id"),
        },
        "chat_template": gguf_file.metadata(reader, "tokenizer.chat_template", source, default=None),
        "model_max_length": gguf_file.metadata(reader, "llama.context_length", source, default=1_000_000),
    }
    return tok, config


def encode_documents(tok: Tokenizer, texts: list[str]) -> np.ndarray:
    """Concatenate the documents' ids, each followed by EOS, as one int32 stream."""
    eos = tok.token_to_id(EOS)
    ids: list[int] = []
    for enc in tok.encode_batch(texts):
        ids.extend(enc.ids)
        ids.append(eos)
    return np.asarray(ids, dtype=np.int32)
