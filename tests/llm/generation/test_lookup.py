"""Prompt lookup decoding: the n-gram search, greedy equality with plain decoding while drafts are
accepted, and exactness of the sampled distribution with one-hot drafts."""

from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from papernotes.errors import ConfigError, DataError
from papernotes.llm.generation.generate import GenerationConfig, generate
from papernotes.llm.generation.lookup import find_lookup_draft, lookup_generate
from papernotes.llm.model.config import PRESETS
from papernotes.llm.model.llama import Llama
from papernotes.nn.kv_cache import KVCache


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    # initializer 0.1 (HF's is 0.02): peaky enough that greedy decoding falls into loops to look up
    return Llama(replace(PRESETS["tiny"], initializer_range=0.1)).eval()


def draft(tokens: list[int], gamma: int = 4, max_ngram_size: int = 3) -> list[int]:
    return find_lookup_draft(torch.tensor(tokens), gamma, max_ngram_size).tolist()


def test_lookup_proposes_what_followed_the_longest_matching_ngram():
    assert draft([1, 2, 3, 9, 8, 7, 6, 1, 2, 3]) == [9, 8, 7, 6]
    assert draft([1, 2, 3, 9, 8, 1, 2, 3], gamma=2) == [9, 8]
    # the 3-gram [5, 2, 3] never occurred before; the 2-gram [2, 3] did
    assert draft([4, 2, 3, 7, 1, 5, 2, 3]) == [7, 1, 5, 2]
    # tokens past the end of the text are not invented: the proposal is shorter than γ
    assert draft([4, 2, 7, 3, 2], gamma=4, max_ngram_size=1) == [7, 3, 2]


def test_lookup_prefers_the_most_recent_match_and_handles_no_match():
    assert draft([5, 1, 7, 5, 2, 5], max_ngram_size=1) == [2, 5]
    assert draft([1, 2, 3]) == []
    assert draft([7]) == []
    assert draft([3, 3, 3], max_ngram_size=2) == [3]  # overlapping matches count


def test_greedy_lookup_equals_greedy_and_accepts_drafts_on_repetitive_text(model):
    config = GenerationConfig(max_new_tokens=32)
    accepted, calls = 0, 0
    for seed in range(3):
        pattern = torch.randint(0, 256, (1, 8), generator=torch.Generator().manual_seed(seed))
        ids = pattern.repeat(1, 3)  # (1, 24): a prompt that repeats itself
        expected, _ = generate(model, ids, config)
        got, stats = lookup_generate(model, ids, config, num_draft_tokens=4)
        assert torch.equal(got, expected)
        assert sum(stats.accepted_per_step) == 32 and len(stats.accepted_per_step) == stats.target_calls
        accepted, calls = accepted + stats.accepted, calls + stats.target_calls
    assert accepted > 0  # α > 0
    assert 3 * 32 / calls > 1.2  # τ > 1: fewer target calls than tokens


def test_lookup_stops_at_eos_and_never_exceeds_max_new_tokens(model):
    ids = torch.randint(0, 256, (1, 8), generator=torch.Generator().manual_seed(1)).repeat(1, 3)
    full, _ = generate(model, ids, GenerationConfig(max_new_tokens=20))
    for n in (1, 2, 7, 20):
        got, _ = lookup_generate(model, ids, GenerationConfig(max_new_tokens=n))
        assert torch.equal(got, full[:, :n])
    eos = int(full[0, 10])
    got, _ = lookup_generate(model, ids, GenerationConfig(max_new_tokens=20, eos_token_id=eos))
    assert torch.equal(got, full[:, : full[0].tolist().index(eos) + 1])


class MarkovLM(nn.Module):
    """Hand-made model with the Llama decoding interface: p(next | context) = table[last token]."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = table  # (V, V) rows sum to 1
        self.config = SimpleNamespace(vocab_size=table.shape[0], max_position_embeddings=64)

    def setup_cache(self, batch_size: int, max_length: int) -> KVCache:
        return KVCache(0, batch_size, 1, max_length, 1)  # no layers: only the length bookkeeping

    def forward(self, input_ids: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        if cache is not None:
            cache.advance(input_ids.shape[1])
        return self.table.log()[input_ids]  # (B, T, V)


def joint(table: torch.Tensor, last: int, length: int) -> torch.Tensor:
    """Exact probabilities of every ``length``-token continuation of token ``last``: (V,) * length."""
    probs = table[last]  # (V,)
    for _ in range(length - 1):
        probs = probs[..., None] * table  # the next row is picked by the last token: (V,)*k -> (V,)*(k+1)
    return probs


def test_sampled_lookup_output_is_distributed_as_the_target(samples_follow):
    """With a 3-token vocabulary lookup drafts almost every step; whole 4-token outputs against the
    exact joint (81 cells)."""
    table = torch.tensor([[0.5, 0.3, 0.2], [0.2, 0.2, 0.6], [0.35, 0.45, 0.2]])
    target = MarkovLM(table)
    ids = torch.tensor([[0, 1, 2, 0, 1, 2]])
    config = GenerationConfig(max_new_tokens=4, temperature=1.0)
    drafted = 0

    def run(seed: int) -> torch.Tensor:
        nonlocal drafted
        out, stats = lookup_generate(target, ids, replace(config, seed=seed), num_draft_tokens=3)
        drafted += stats.drafted
        return out[0]

    sharper = torch.softmax(table.log() / 0.8, dim=-1)  # the same model at temperature 0.8
    # power: a sampler that drifted to temperature 0.8 is rejected by the same test
    samples_follow(run, 4000, target=joint(table, last=2, length=4), wrong=joint(sharper, last=2, length=4))
    assert drafted > 4000  # drafts were proposed and verified, not just plain steps


def test_lookup_argument_errors(model):
    ids = torch.zeros(1, 4, dtype=torch.long)
    with pytest.raises(ConfigError, match="num_draft_tokens must be >= 1, got 0"):
        lookup_generate(model, ids, GenerationConfig(max_new_tokens=4), num_draft_tokens=0)
    with pytest.raises(ConfigError, match="max_ngram_size must be >= 1, got 0"):
        lookup_generate(model, ids, GenerationConfig(max_new_tokens=4), max_ngram_size=0)
    with pytest.raises(DataError, match="exceeds max_position_embeddings=128"):
        lookup_generate(model, torch.zeros(1, 127, dtype=torch.long), GenerationConfig(max_new_tokens=4))
