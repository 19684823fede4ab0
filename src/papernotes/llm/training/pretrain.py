"""Pre-training a Llama on a text corpus: data preparation, the loss, and the run.

Next-token prediction, L = −(1/N) Σ_t log p(x_{t+1} | x_≤t), through the one
training loop (:mod:`papernotes.core.train`). The corpus is tokenised once with a
byte-level BPE tokenizer trained on it; both are cached under the cache folder,
keyed by everything that changes them.
"""

from __future__ import annotations

import json
import logging
import platform
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from papernotes.core.cache import recipe_key
from papernotes.core.files import atomic_write_dir
from papernotes.core.train import TrainConfig, TrainResult, train
from papernotes.llm.data.corpus import LMBatches, iter_documents, split_documents
from papernotes.llm.model.config import LlamaConfig
from papernotes.llm.model.llama import Llama
from papernotes.llm.model.tokenizer import (
    BOS,
    EOS,
    encode_documents,
    load_tokenizer,
    save_tokenizer,
    train_tokenizer,
)

logger = logging.getLogger(__name__)


@dataclass
class CorpusData:
    tokenizer: Tokenizer
    train_tokens: np.ndarray  # int32 token stream of the training files
    val_tokens: np.ndarray  # int32 token stream of the validation files
    directory: Path  # where tokenizer.json and the streams are cached

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()


def prepare_corpus(
    cache_dir: Path,
    vocab_size: int = 4096,
    max_bytes: int | None = 3_000_000,
    text_dir: str | Path | None = None,
    use_cache: bool = True,
) -> CorpusData:
    """Train the tokenizer and tokenise the corpus, or load both from the cache."""
    source = str(Path(text_dir).resolve()) if text_dir is not None else f"stdlib-{platform.python_version()}"
    key = recipe_key([source, vocab_size, max_bytes])
    directory = Path(cache_dir) / "corpus" / key
    if use_cache and (directory / "meta.json").is_file():
        logger.info("corpus: reusing %s", directory)
        tok = load_tokenizer(directory)
        train_tokens = np.load(directory / "train.npy", allow_pickle=False)
        val_tokens = np.load(directory / "val.npy", allow_pickle=False)
        return CorpusData(tok, train_tokens, val_tokens, directory)
    docs = list(iter_documents(text_dir, max_bytes))
    train_docs, val_docs = split_documents(docs)
    logger.info("corpus: %d train / %d validation files; training tokenizer", len(train_docs), len(val_docs))
    tok = train_tokenizer((d.text for d in train_docs), vocab_size)
    train_tokens = encode_documents(tok, [d.text for d in train_docs])
    val_tokens = encode_documents(tok, [d.text for d in val_docs])
    meta = {
        "source": source,
        "vocab_size": tok.get_vocab_size(),
        "max_bytes": max_bytes,
        "train_files": len(train_docs),
        "val_files": len(val_docs),
        "train_tokens": int(len(train_tokens)),
        "val_tokens": int(len(val_tokens)),
    }
    with atomic_write_dir(directory) as tmp:
        save_tokenizer(tok, tmp)
        np.save(tmp / "train.npy", train_tokens)
        np.save(tmp / "val.npy", val_tokens)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    return CorpusData(tok, train_tokens, val_tokens, directory)


def encode_corpus(
    tokenizer: Tokenizer, text_dir: str | Path | None = None, max_bytes: int | None = 3_000_000
) -> CorpusData:
    """The corpus split and tokenised with an existing tokenizer (a model's own), not cached."""
    train_docs, val_docs = split_documents(list(iter_documents(text_dir, max_bytes)))
    return CorpusData(
        tokenizer,
        encode_documents(tokenizer, [d.text for d in train_docs]),
        encode_documents(tokenizer, [d.text for d in val_docs]),
        Path(text_dir) if text_dir is not None else Path("stdlib"),
    )


def lm_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Mean next-token cross-entropy over the batch, and the number of predicted tokens."""
    logits = model(batch["input_ids"])  # (B, T, V)
    # cross-entropy in fp32: fp16/bf16 log-softmax over a large vocabulary is lossy
    loss = F.cross_entropy(logits.float().flatten(0, 1), batch["labels"].flatten())
    return loss, batch["labels"].numel()


def pretrain(
    model_config: LlamaConfig,
    train_config: TrainConfig,
    data: CorpusData,
    seq_len: int,
    attention: str = "sdpa",
    resume: bool = False,
) -> tuple[Llama, TrainResult]:
    """Train a fresh Llama (seeded by ``train_config.seed``) on ``data``."""
    torch.manual_seed(train_config.seed)
    model = Llama(model_config, attention=attention)
    micro = train_config.batch_size // train_config.grad_accum_steps
    batches = LMBatches(data.train_tokens, micro, seq_len, seed=train_config.seed)
    val_batches = LMBatches(data.val_tokens, micro, seq_len, seed=train_config.seed + 1)
    result = train(model, lm_loss, batches, train_config, val_batches=val_batches, resume=resume)
    return model, result


def model_config_for(data: CorpusData, base: LlamaConfig) -> LlamaConfig:
    """``base`` with the corpus tokenizer's vocabulary size and special-token ids."""
    return replace(
        base,
        vocab_size=data.vocab_size,
        bos_token_id=data.tokenizer.token_to_id(BOS),
        eos_token_id=data.tokenizer.token_to_id(EOS),
    )


def save_model_dir(model: Llama, tokenizer: Tokenizer, directory: str | Path) -> Path:
    """An HF model directory: config.json + model.safetensors + tokenizer files."""
    directory = Path(directory)
    model.save_pretrained(directory)
    save_tokenizer(tokenizer, directory)
    return directory
