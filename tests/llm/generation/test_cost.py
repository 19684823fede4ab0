"""Choosing γ, the Medusa tree and the MTP chain from a cost curve: the expected-rate arithmetic."""

import torch

from papernotes.llm.generation.cost import CostCurve, choose_gamma, choose_tree, expected_tokens


def test_expected_tokens_is_one_plus_the_accepted_prefix():
    assert expected_tokens([0.5], 3) == 1 + 0.5 + 0.25 + 0.125
    assert expected_tokens([1.0, 0.0], 4) == 2.0  # the first draft always, the second never
    assert expected_tokens([], 3) == 1.0


def test_a_flat_cost_curve_drafts_deep_and_a_steep_one_shallow():
    flat = CostCurve({1: 1.0, 2: 1.0, 5: 1.0, 17: 1.0}, context=128)
    steep = CostCurve({1: 1.0, 2: 2.0, 5: 5.0, 17: 17.0}, context=128)
    assert flat(3) == 1.0 and steep(3) == 3.0 and steep(100) == 17.0  # interpolated, flat past the ends
    deep, rates = choose_gamma(flat, draft_seconds=0.01, acceptance=[0.9], max_gamma=12)
    shallow, _ = choose_gamma(steep, draft_seconds=0.01, acceptance=[0.9], max_gamma=12)
    assert deep >= 8 and shallow == 1
    assert rates[deep] == max(rates.values())
    # a useless draft is never worth more than one token of lookahead
    assert choose_gamma(flat, draft_seconds=0.5, acceptance=[0.0])[0] == 1


def test_the_tree_grows_only_while_the_hardware_pays_for_it():
    accuracy = torch.tensor([[0.6, 0.8, 0.9], [0.4, 0.6, 0.7]])  # cumulative top-k per head
    flat = CostCurve({1: 1.0, 64: 1.0}, context=128)
    steep = CostCurve({1: 1.0, 64: 64.0}, context=128)
    big, _ = choose_tree(flat, accuracy, head_seconds=0.0)
    small, rates = choose_tree(steep, accuracy, head_seconds=0.0)
    assert len(big) > len(small) >= 1
    assert rates[min(rates, key=rates.get)] < rates[max(rates, key=rates.get)]
