"""Byte-level BPE tokenizer trained with Hugging Face ``tokenizers``.

Byte-level BPE (as in GPT-2 and Llama 3's tiktoken vocabulary) starts from the 256
byte values, so every string round-trips and nothing is ever "unknown"; merges are
learned from the corpus. We train a small vocabulary on the embedded corpus (Llama 3
uses 128K tokens; a few thousand suit a model of a few million parameters).

Saved as ``tokenizer.json`` + ``tokenizer_config.json`` + ``special_tokens_map.json``
so that ``transformers.AutoTokenizer`` / ``PreTrainedTokenizerFast`` load the
directory as-is; the tests hold our ids equal to transformers'.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from papernotes.errors import CheckpointError

BOS = "<|begin_of_text|>"
EOS = "<|end_of_text|>"
SPECIAL_TOKENS = (BOS, EOS)


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


def save_tokenizer(tok: Tokenizer, directory: str | Path) -> None:
    """Write the three files transformers reads, into an existing ``directory``."""
    directory = Path(directory)
    tok.save(str(directory / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": EOS,
        "model_max_length": 1_000_000,
        "clean_up_tokenization_spaces": False,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (directory / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": BOS, "eos_token": EOS}, indent=2)
    )


def load_tokenizer(directory: str | Path) -> Tokenizer:
    """Read ``tokenizer.json`` from a model or tokenizer directory."""
    path = Path(directory) / "tokenizer.json"
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist; expected a tokenizer.json beside the model")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception on malformed JSON
        raise CheckpointError(f"{path} is not a valid tokenizers JSON file: {exc}") from exc


def encode_documents(tok: Tokenizer, texts: list[str]) -> np.ndarray:
    """Concatenate the documents' ids, each followed by EOS, as one int32 stream."""
    eos = tok.token_to_id(EOS)
    ids: list[int] = []
    for enc in tok.encode_batch(texts):
        ids.extend(enc.ids)
        ids.append(eos)
    return np.asarray(ids, dtype=np.int32)
