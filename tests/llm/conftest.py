"""Fixtures shared by the LLM tests."""

import dataclasses

import pytest
import torch

from papernotes.core.config import preset
from papernotes.llm.model.config import PRESETS
from papernotes.llm.model.llama import Llama
from papernotes.llm.model.tokenizer import BOS, EOS


@pytest.fixture(scope="session")
def tiny_llama():
    """``tiny_llama(tokenizer, seed=0, **config)``: a seeded tiny Llama sized to the tokenizer."""

    def build(tokenizer, seed: int = 0, **overrides) -> Llama:
        torch.manual_seed(seed)
        config = dataclasses.replace(
            preset(PRESETS, "tiny"),
            vocab_size=tokenizer.get_vocab_size(),
            bos_token_id=tokenizer.token_to_id(BOS),
            eos_token_id=tokenizer.token_to_id(EOS),
            **{"max_position_embeddings": 512, **overrides},
        )
        return Llama(config)

    return build
