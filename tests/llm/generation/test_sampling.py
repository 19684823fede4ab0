import pytest
import torch

from papernotes.errors import ConfigError
from papernotes.llm.generation.sampling import logits_to_probs, next_tokens, sample


def test_greedy_is_one_hot_on_argmax():
    logits = torch.tensor([[0.1, 3.0, -1.0]])
    assert torch.equal(logits_to_probs(logits, temperature=0), torch.tensor([[0.0, 1.0, 0.0]]))


def test_temperature_top_k_top_p_match_hand_computation():
    logits = torch.log(torch.tensor([0.5, 0.25, 0.15, 0.10]))
    torch.testing.assert_close(logits_to_probs(logits, 1.0), torch.tensor([0.5, 0.25, 0.15, 0.10]))
    torch.testing.assert_close(logits_to_probs(logits, 1.0, top_k=2), torch.tensor([2 / 3, 1 / 3, 0, 0]))
    # top_p=0.7: 0.5 alone is short of 0.7, so the token crossing it (0.25) is kept
    torch.testing.assert_close(logits_to_probs(logits, 1.0, top_p=0.7), torch.tensor([2 / 3, 1 / 3, 0, 0]))
    hot = logits_to_probs(logits, 0.5)
    expected = torch.tensor([0.5, 0.25, 0.15, 0.10]) ** 2
    torch.testing.assert_close(hot, expected / expected.sum())


def test_sampling_frequencies_follow_probs():
    probs = torch.tensor([0.6, 0.3, 0.1])
    gen = torch.Generator().manual_seed(0)
    draws = sample(probs.expand(20000, 3), gen)
    freq = torch.bincount(draws, minlength=3).float() / 20000
    torch.testing.assert_close(freq, probs, atol=0.015, rtol=0)


@pytest.mark.parametrize("kwargs", [{"temperature": -1}, {"top_p": 0.0}, {"top_k": 0}])
def test_invalid_sampling_settings_are_rejected(kwargs):
    with pytest.raises(ConfigError):
        logits_to_probs(torch.zeros(4), **{"temperature": 1.0, **kwargs})


def test_next_tokens_greedy_is_the_draw_from_the_one_hot_and_checks_the_same_settings():
    logits = torch.randn(5, 50, generator=torch.Generator().manual_seed(1))
    one_hot_draws = sample(logits_to_probs(logits, 0.0), torch.Generator().manual_seed(0))
    assert torch.equal(next_tokens(logits, 0.0), one_hot_draws)
    sampled = next_tokens(logits, 0.7, top_k=5, generator=torch.Generator().manual_seed(2))
    expected = sample(logits_to_probs(logits, 0.7, top_k=5), torch.Generator().manual_seed(2))
    assert torch.equal(sampled, expected)
    with pytest.raises(ConfigError, match="top_p"):
        next_tokens(logits, 0.0, top_p=0.0)
