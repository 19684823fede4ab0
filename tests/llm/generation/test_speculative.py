"""Speculative decoding: greedy equality with plain decoding, the always/never-accept drafts, and
exactness of the sampled distribution (chi-square against the target's known distribution, with a
power check: conftest.py's ``samples_follow``)."""

from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from papernotes.errors import ConfigError, DataError
from papernotes.llm.generation.generate import GenerationConfig, generate
from papernotes.llm.generation.sampling import verify_draft
from papernotes.llm.generation.speculative import speculative_generate
from papernotes.llm.model.config import PRESETS
from papernotes.llm.model.llama import Llama
from papernotes.nn.kv_cache import KVCache


class MarkovLM(nn.Module):
    """Hand-made model with the Llama decoding interface: p(next | context) = table[last token].

    Its exact output distribution over a sequence is a product of table rows, which is what
    the sampled-exactness tests compare against.
    """

    def __init__(self, table: torch.Tensor, max_position_embeddings: int = 64) -> None:
        super().__init__()
        self.table = table  # (V, V) rows sum to 1
        self.config = SimpleNamespace(
            vocab_size=table.shape[0], max_position_embeddings=max_position_embeddings
        )

    def setup_cache(self, batch_size: int, max_length: int) -> KVCache:
        return KVCache(0, batch_size, 1, max_length, 1)  # no layers: only the length bookkeeping

    def forward(self, input_ids: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        if cache is not None:
            cache.advance(input_ids.shape[1])
        return self.table.log()[input_ids]  # (B, T, V)


def sequence_probs(table: torch.Tensor, last: int, length: int) -> torch.Tensor:
    """Exact probabilities of every continuation of ``length`` tokens after token ``last``: (V,) * length."""
    probs = table[last]  # (V,)
    for _ in range(length - 1):
        probs = (
            probs[..., None] * table
        )  # (V,)*k x (V, V) -> (V,)*(k+1): the next row is picked by the last token
    return probs


@pytest.fixture(scope="module")
def pair():
    """A tiny target and a draft that agrees with it often but not always (perturbed weights)."""
    torch.manual_seed(0)
    config = replace(PRESETS["tiny"], initializer_range=0.1)  # peakier than HF's 0.02: clear argmaxes
    target = Llama(config).eval()
    draft = Llama(config).eval()
    noise = torch.Generator().manual_seed(1)
    draft.load_state_dict(
        {k: v + 0.005 * torch.randn(v.shape, generator=noise) for k, v in target.state_dict().items()}
    )
    return target, draft


def prompt(seed: int, length: int = 6) -> torch.Tensor:
    return torch.randint(0, 256, (1, length), generator=torch.Generator().manual_seed(seed))


# --- the acceptance rule --------------------------------------------------------------------------------


def test_verify_draft_greedy_accepts_the_argmax_prefix_then_emits_the_target_argmax():
    V = 6
    p = torch.nn.functional.one_hot(torch.tensor([2, 4, 1, 5]), V).float()  # target argmaxes (γ + 1, V)
    drafts = torch.tensor([2, 4, 3])
    q = torch.nn.functional.one_hot(drafts, V).float()
    assert verify_draft(p, q, drafts) == (2, 1)  # x_3 = 3 != 1: rejected, the residual is δ(1)
    assert verify_draft(p[:3], q[:2], drafts[:2]) == (2, 1)  # all accepted: the bonus is p_3's argmax
    assert verify_draft(p[:1], q[:0], drafts[:0]) == (0, 2)  # γ = 0: a plain step


def test_verify_draft_first_emitted_token_is_distributed_as_target(samples_follow):
    """Leviathan et al. 2023, Thm. 1: whatever q is, the first emitted token is ~ p_1."""
    gamma, runs = 2, 12_000
    p = torch.tensor([[0.05, 0.40, 0.15, 0.30, 0.10], [0.2, 0.2, 0.2, 0.2, 0.2], [0.1, 0.1, 0.1, 0.1, 0.6]])
    q = torch.tensor([[0.30, 0.10, 0.35, 0.05, 0.20], [0.5, 0.1, 0.1, 0.1, 0.2]])
    gen = torch.Generator().manual_seed(0)
    drafts = torch.stack(
        [torch.multinomial(q[i], runs, replacement=True, generator=gen) for i in range(gamma)], 1
    )

    def first_emitted(run: int) -> int:
        accepted, token = verify_draft(p, q, drafts[run], gen)
        return int(drafts[run, 0]) if accepted else token

    # power: q_1, what accepting every draft would emit, is rejected by the same test
    samples_follow(first_emitted, runs, target=p[0], wrong=q[0])


def test_verify_draft_residual_only_holds_tokens_the_draft_under_covers():
    # q over-covers token 0 only, so a rejection of 0 must resample among {1, 2} in proportion to p − q
    p, q = torch.tensor([[0.2, 0.5, 0.3], [1 / 3] * 3]), torch.tensor([[0.8, 0.1, 0.1]])
    gen = torch.Generator().manual_seed(0)
    seen = {verify_draft(p, q, torch.tensor([0]), gen) for _ in range(500)}
    assert {t for a, t in seen if a == 0} == {1, 2}


# --- greedy equality and the extreme drafts ---------------------------------------------------------------


@pytest.mark.parametrize("gamma", [1, 3, 5])
def test_greedy_speculative_equals_greedy(pair, gamma):
    target, draft = pair
    config = GenerationConfig(max_new_tokens=24)
    accepted = drafted = 0
    for seed in range(3):
        ids = prompt(seed)
        expected, _ = generate(target, ids, config)
        got, stats = speculative_generate(target, draft, ids, config, num_draft_tokens=gamma)
        assert torch.equal(got, expected)
        assert stats.tokens == 24 == sum(stats.accepted_per_step)
        assert len(stats.accepted_per_step) == stats.target_calls
        assert max(stats.accepted_per_step) <= gamma + 1
        accepted, drafted = accepted + stats.accepted, drafted + stats.drafted
    assert 0 < accepted < drafted  # both the accept and the reject paths ran


def test_adaptive_schedule_keeps_greedy_output(pair):
    target, draft = pair
    config = GenerationConfig(max_new_tokens=30)
    expected, _ = generate(target, prompt(7), config)
    got, _ = speculative_generate(target, draft, prompt(7), config, num_draft_tokens=2, adaptive=True)
    assert torch.equal(got, expected)


def test_target_as_its_own_draft_accepts_everything(pair):
    target, _ = pair
    gamma = 4
    config = GenerationConfig(max_new_tokens=1 + 3 * (gamma + 1))
    expected, _ = generate(target, prompt(1), config)
    got, stats = speculative_generate(target, target, prompt(1), config, num_draft_tokens=gamma)
    assert torch.equal(got, expected)
    assert stats.acceptance_rate == 1.0 and stats.drafted == 3 * gamma
    assert stats.accepted_per_step == [1, gamma + 1, gamma + 1, gamma + 1]  # prefill, then τ = γ + 1
    assert stats.accepted_by_position == stats.proposed_by_position == [3] * gamma


def test_gamma_shrinks_at_the_end_so_no_more_than_max_new_tokens(pair):
    target, _ = pair
    config = GenerationConfig(max_new_tokens=13)
    got, stats = speculative_generate(target, target, prompt(1), config, num_draft_tokens=4)
    assert got.shape == (1, 13)
    assert stats.accepted_per_step == [1, 5, 5, 2]  # the last block drafts only 1: 11 + 1 + bonus = 13


def test_adaptive_schedule_grows_by_two_after_full_acceptance(pair):
    target, _ = pair
    config = GenerationConfig(max_new_tokens=1 + 3 + 5 + 7)
    _, stats = speculative_generate(target, target, prompt(2), config, num_draft_tokens=2, adaptive=True)
    assert stats.accepted_per_step == [1, 3, 5, 7]  # γ = 2, 4, 6 (HF's "heuristic" schedule)


class ConstantDraft(MarkovLM):
    """A draft that always proposes the same token."""

    def __init__(self, vocab_size: int, token: int) -> None:
        table = torch.full((vocab_size, vocab_size), 1e-6)
        table[:, token] = 1.0
        super().__init__(table / table.sum(-1, keepdim=True), max_position_embeddings=128)


def test_never_agreeing_draft_accepts_nothing_and_keeps_greedy_output(pair):
    target, _ = pair
    config = GenerationConfig(max_new_tokens=16)
    expected, _ = generate(target, prompt(3), config)
    never = next(t for t in range(256) if t not in expected[0].tolist() and t not in prompt(3)[0].tolist())
    got, stats = speculative_generate(
        target, ConstantDraft(256, never), prompt(3), config, num_draft_tokens=3
    )
    assert torch.equal(got, expected)
    assert stats.accepted == 0 and stats.drafted > 0
    assert stats.accepted_per_step == [1] * 16  # τ = 1: one token per target call, like plain decoding


def test_eos_inside_an_accepted_block_stops_there(pair):
    target, _ = pair
    full, _ = generate(target, prompt(4), GenerationConfig(max_new_tokens=12))
    eos = int(full[0, 6])
    stop = full[0].tolist().index(eos)  # its first occurrence
    config = GenerationConfig(max_new_tokens=12, eos_token_id=eos)
    got, stats = speculative_generate(target, target, prompt(4), config, num_draft_tokens=4)
    assert torch.equal(got, full[:, : stop + 1])
    assert stats.tokens == stop + 1 == sum(stats.accepted_per_step)


def test_zero_new_tokens_returns_empty(pair):
    target, draft = pair
    got, stats = speculative_generate(target, draft, prompt(0), GenerationConfig(max_new_tokens=0))
    assert got.shape == (1, 0) and stats.tokens == 0


# --- exactness of the sampled distribution, end to end ---------------------------------------------------


def test_sampled_speculative_output_is_distributed_as_the_target(samples_follow):
    """Whole 4-token outputs from Markov target/draft models against the exact target joint (81 cells)."""
    target_table = torch.tensor([[0.5, 0.3, 0.2], [0.2, 0.2, 0.6], [0.35, 0.45, 0.2]])
    draft_table = torch.tensor([[0.2, 0.6, 0.2], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8]])  # a poor draft
    target, draft = MarkovLM(target_table), MarkovLM(draft_table)
    ids = torch.tensor([[0, 1, 2]])
    config = GenerationConfig(max_new_tokens=4, temperature=1.0)

    def run(seed):
        out, _ = speculative_generate(target, draft, ids, replace(config, seed=seed), num_draft_tokens=3)
        return out[0]

    # power: the draft's own distribution is rejected by the same test
    samples_follow(
        run,
        5000,
        target=sequence_probs(target_table, last=2, length=4),
        wrong=sequence_probs(draft_table, last=2, length=4),
    )


def top_k_at(table: torch.Tensor, temperature: float, k: int) -> torch.Tensor:
    """Each row of ``table`` at ``temperature``, restricted to its top ``k`` and renormalised."""
    logits = table.log() / temperature
    kth = logits.topk(k, dim=-1).values[:, -1:]  # (V, 1)
    return torch.softmax(logits.masked_fill(logits < kth, float("-inf")), -1)


def test_sampled_speculative_respects_temperature_and_top_k(samples_follow):
    """The draft samples with the target's transformation; the output follows the transformed target."""
    target_table = torch.tensor([[0.5, 0.3, 0.2], [0.2, 0.2, 0.6], [0.35, 0.45, 0.2]])
    draft_table = torch.tensor([[0.2, 0.6, 0.2], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8]])
    target, draft = MarkovLM(target_table), MarkovLM(draft_table)
    config = GenerationConfig(max_new_tokens=3, temperature=0.7, top_k=2)

    def run(seed):
        out, _ = speculative_generate(target, draft, torch.tensor([[1]]), replace(config, seed=seed), 2)
        return out[0]

    # never outside the top 2 (the helper checks zero-probability cells); power: the same top 2 at
    # temperature 1, i.e. a sampler that ignored the temperature, is rejected
    samples_follow(
        run,
        3000,
        target=sequence_probs(top_k_at(target_table, 0.7, 2), last=1, length=3),
        wrong=sequence_probs(top_k_at(target_table, 1.0, 2), last=1, length=3),
    )


# --- errors -------------------------------------------------------------------------------------------------


def test_draft_with_another_vocabulary_is_a_config_error(pair):
    target, _ = pair
    small = Llama(replace(PRESETS["tiny"], vocab_size=128))
    with pytest.raises(ConfigError, match="draft vocab_size=128 differs from target vocab_size=256"):
        speculative_generate(target, small, prompt(0), GenerationConfig(max_new_tokens=4))


def test_fewer_than_one_draft_token_is_a_config_error(pair):
    target, draft = pair
    with pytest.raises(ConfigError, match="num_draft_tokens must be >= 1, got 0"):
        speculative_generate(target, draft, prompt(0), GenerationConfig(max_new_tokens=4), num_draft_tokens=0)


def test_prompt_longer_than_the_context_is_a_data_error(pair):
    target, draft = pair
    too_long = torch.zeros(1, 126, dtype=torch.long)
    with pytest.raises(DataError, match="exceeds max_position_embeddings=128"):
        speculative_generate(target, draft, too_long, GenerationConfig(max_new_tokens=4))
