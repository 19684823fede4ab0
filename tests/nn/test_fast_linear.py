"""fast_linear's forms against F.linear, the tuned Llama against the untuned one, and the tuning cache.

Ties: the forms sum in different orders, so tuned logits differ from untuned ones in the last bits and
an argmax could flip where the top two logits are that close. The greedy test therefore also checks that
every step's top-2 margin is far wider than the largest logit difference: equal outputs are not luck.
"""

import copy
import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from papernotes.core.config import preset
from papernotes.errors import ConfigError
from papernotes.llm.generation.generate import GenerationConfig, generate
from papernotes.llm.generation.speculative import speculative_generate
from papernotes.llm.model.config import PRESETS
from papernotes.llm.model.llama import Llama
from papernotes.nn import linear_tuning
from papernotes.nn.fast_linear import (
    Linear,
    LinearPlan,
    available_forms,
    clear_linear_forms,
    is_column_major,
    linear_plans,
)
from papernotes.nn.linear_tuning import choose_forms, tune_linears

FORMS = available_forms()
QUICK = {"repeats": 1, "cold_bytes": 2**16}  # tuning settings that keep a test well under a second
# plans that run a different form at each row count, so that a model exercises several at once
MIXED = {1: "transposed", 2: "weight_left", 5: "packed" if "packed" in FORMS else "linear"}
PACKED_MIXED = {1: "packed" if "packed" in FORMS else "linear", 3: "weight_left"}


def layer(n: int, k: int, bias: bool, seed: int = 0) -> Linear:
    torch.manual_seed(seed)
    return Linear(k, n, bias=bias)


def tiny_llama(tied: bool, seed: int = 0) -> Llama:
    torch.manual_seed(seed)
    config = dataclasses.replace(preset(PRESETS, "tiny"), tie_word_embeddings=tied)
    return Llama(config).eval()


def use_everywhere(model: nn.Module, forms: dict[int, str]) -> None:
    for m in model.modules():
        if isinstance(m, Linear):
            m.use_forms(forms)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("n, k, bias", [(48, 32, False), (33, 17, True), (520, 64, False)])
@pytest.mark.parametrize("rows", [1, 2, 5, 17])
def test_every_form_matches_f_linear(form, n, k, bias, rows):
    lin = layer(n, k, bias)
    lin.use_forms({1: form})
    for x in (torch.randn(rows, k), torch.randn(1, rows, k), torch.randn(2, rows, k)):
        with torch.inference_mode():
            y = lin(x)
        expected = F.linear(x, lin.weight, lin.bias)
        assert y.shape == expected.shape and y.is_contiguous()
        torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-5)


def test_plan_runs_the_nearest_measured_row_count_in_log_scale():
    plan = LinearPlan({1: "linear", 5: "transposed", 17: "weight_left"}, torch.float32, torch.device("cpu"))
    assert [plan.nearest(m) for m in (1, 2, 3, 4, 9, 10, 100)] == [1, 1, 5, 5, 5, 17, 17]
    assert plan.form(100) is plan.form(17)
    assert list(plan.copies) == ["transposed"] and not plan.columns  # linear reads W row-major
    both = LinearPlan({1: "transposed", 2: "packed"}, torch.float32, torch.device("cpu"))
    assert both.columns and list(both.copies) == ["packed"]  # W stored transposed: no second copy
    with pytest.raises(ConfigError, match="unknown"):
        LinearPlan({1: "fastest"}, torch.float32, torch.device("cpu"))


def test_forms_keep_nn_linear_state_and_autograd():
    lin, reference = layer(24, 16, True), layer(24, 16, True)
    lin.use_forms({1: "transposed"})
    assert isinstance(lin, nn.Linear)
    assert lin.state_dict().keys() == reference.state_dict().keys() == {"weight", "bias"}
    x = torch.randn(3, 16, requires_grad=True)
    lin(x).sum().backward()  # autograd on: plain F.linear, so the weight gets its gradient
    assert lin.weight.grad is not None and x.grad is not None


@pytest.mark.parametrize(
    "forms", [{1: "linear", 2: "transposed"}] + ([{1: "packed"}] if "packed" in FORMS else [])
)
def test_weight_copy_follows_in_place_edits_replacement_and_deepcopy(forms):
    lin = layer(40, 24, False)
    extra = lin.use_forms(forms)
    assert extra == 40 * 24 * 4
    x = torch.randn(2, 24)  # M = 2: the copy's form
    with torch.no_grad():
        lin.weight.mul_(2.0)  # an in-place edit (LoRA's merge does this) bumps the version
        torch.testing.assert_close(lin(x), F.linear(x, lin.weight))
        lin.weight = nn.Parameter(torch.randn(40, 24))  # a new Parameter
        torch.testing.assert_close(lin(x), F.linear(x, lin.weight))
        twin = copy.deepcopy(lin)  # oneDNN's packed copies cannot be copied: rebuilt on first use
        torch.testing.assert_close(twin(x), F.linear(x, lin.weight))


def test_moving_to_another_dtype_drops_the_plan():
    lin = layer(8, 4, False)
    lin.use_forms({1: "transposed"})
    lin.float()
    assert lin.plan is not None
    lin.double()
    assert lin.plan is None


@pytest.mark.parametrize("tied", [False, True])
def test_tuned_llama_logits_equal_untuned_and_state_dict_is_unchanged(tied, tmp_path):
    model = tiny_llama(tied)
    state = {name: t.clone() for name, t in model.state_dict().items()}
    ids = torch.randint(0, 256, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        cache = model.setup_cache(2, 16)
        expected = [model(ids, cache=cache), model(ids[:, :1], cache=cache), model(ids[:, :5], cache=cache)]
    report = tune_linears(model, rows=(1, 2, 5), cache_dir=tmp_path, **QUICK)
    assert sum(len(s.modules) for s in report.shapes) == 2 * 7 + 1
    for forms in (None, MIXED, PACKED_MIXED):  # the tuned choice, then forced forms
        if forms is not None:
            use_everywhere(model, forms)
        with torch.inference_mode():
            cache = model.setup_cache(2, 16)
            got = [model(ids, cache=cache), model(ids[:, :1], cache=cache), model(ids[:, :5], cache=cache)]
        for g, e in zip(got, expected, strict=True):
            torch.testing.assert_close(g, e, atol=1e-4, rtol=0)
    assert model.state_dict().keys() == state.keys()
    for name, t in model.state_dict().items():
        assert torch.equal(t, state[name]), name
    if tied:  # the head still is the embedding, and its copy is made once
        assert model.lm_head.weight is model.model.embed_tokens.weight


def test_layers_sharing_a_weight_share_one_plan_and_one_copy(tmp_path):
    first, second = layer(40, 24, False), layer(40, 24, False)
    second.weight = first.weight  # tied, as a head with its embedding
    model = nn.Sequential(first, second)
    report = tune_linears(model, rows=(1,), cache_dir=tmp_path, **QUICK)
    assert first.plan is second.plan
    assert report.extra_bytes == first.plan.extra_bytes
    assert report.weight_bytes == 40 * 24 * 4
    clear_linear_forms(model)
    assert all(plan is None for plan in linear_plans(model).values())


def test_greedy_with_mixed_forms_equals_untuned_greedy_and_margins_exclude_ties():
    model = tiny_llama(tied=True)
    prompts = [torch.randint(0, 256, (1, 6), generator=torch.Generator().manual_seed(s)) for s in range(3)]
    config = GenerationConfig(max_new_tokens=16)
    expected = [generate(model, p, config)[0] for p in prompts]
    sequences = [torch.cat((p, e), dim=1) for p, e in zip(prompts, expected, strict=True)]
    with torch.inference_mode():
        untuned = [model(s) for s in sequences]
    use_everywhere(model, MIXED)
    for p, e in zip(prompts, expected, strict=True):
        assert torch.equal(generate(model, p, config)[0], e)
    with torch.inference_mode():
        tuned = [model(s) for s in sequences]
    drift = max(float((t - u).abs().max()) for t, u in zip(tuned, untuned, strict=True))
    # the logits that chose each new token: positions T - 1 .. end - 1 of each full sequence
    chosen = [u[0, p.shape[1] - 1 : -1] for u, p in zip(untuned, prompts, strict=True)]
    top2 = torch.cat([c.topk(2).values for c in chosen])  # (steps, 2)
    margin = float((top2[:, 0] - top2[:, 1]).min())
    assert margin > 10 * drift, f"a near-tie (margin {margin:.2e}) could flip at drift {drift:.2e}"


def test_speculative_verification_with_tuned_forms_equals_tuned_plain_greedy():
    target, draft = tiny_llama(tied=True, seed=0), tiny_llama(tied=True, seed=1)
    use_everywhere(target, MIXED)  # verification runs M = gamma + 1 rows, plain decoding M = 1
    config = GenerationConfig(max_new_tokens=12)
    ids = torch.randint(0, 256, (1, 5), generator=torch.Generator().manual_seed(3))
    expected, _ = generate(target, ids, config)
    got, _ = speculative_generate(target, draft, ids, config, num_draft_tokens=4)
    assert torch.equal(got, expected)


def test_choose_forms_keeps_a_copy_only_where_it_pays():
    seconds = {
        1: {"linear": 10.0, "weight_left": 9.0, "transposed": 5.0, "packed": 6.0},
        5: {"linear": 20.0, "weight_left": 8.0, "transposed": 30.0, "packed": 4.0},
    }
    # against the row-major best (9, 8), M = 1 and M = 5 weighing 1/2 each: transposed at M = 1 and
    # packed at M = 5 score ½ log(9/5) + ½ log 2 = 0.64 with one copy, W being stored column-major
    assert choose_forms(seconds) == {1: "transposed", 5: "packed"}
    assert choose_forms(seconds, max_copies=0) == {1: "weight_left", 5: "weight_left"}
    assert choose_forms(seconds, min_gain=1.0) == {1: "weight_left", 5: "weight_left"}  # 0.64 < log 2
    small = {
        1: {"linear": 10.0, "weight_left": 9.9, "transposed": 9.7},
        2: {"linear": 10.0, "weight_left": 9.9, "transposed": 20.0},
    }
    assert choose_forms(small) == {1: "weight_left", 2: "weight_left"}  # +1 % does not pay for a copy
    assert choose_forms(small, min_gain=0.005) == {1: "transposed", 2: "weight_left"}
    free = {1: {"linear": 10.0, "weight_left": 9.9, "transposed": 9.7}}
    assert choose_forms(free) == {1: "transposed"}  # column-major storage: faster and no copy


def test_transposed_only_layer_stores_its_weight_column_major_and_a_tied_embedding_follows():
    model = tiny_llama(tied=True)
    ids = torch.randint(0, 256, (1, 7), generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        expected = model(ids)
    state = {name: t.clone() for name, t in model.state_dict().items()}
    assert model.lm_head.use_forms({1: "transposed"}) == 0  # no copy: W itself is stored transposed
    head = model.lm_head.weight
    assert head is model.model.embed_tokens.weight and is_column_major(head)
    with torch.inference_mode():
        torch.testing.assert_close(model(ids), expected, atol=1e-4, rtol=0)
    for name, t in model.state_dict().items():
        assert torch.equal(t, state[name]), name
    model(ids).logsumexp(-1).sum().backward()  # autograd on: plain F.linear on the transposed storage
    assert head.grad.shape == head.shape
    model.lm_head.clear_forms()
    assert head.is_contiguous() and model.lm_head.weight is head


def test_timing_layers_keep_each_form_on_its_own_layout():
    weights = [torch.randn(40, 24) for _ in range(2)]
    layers = linear_tuning.timing_layers(weights, FORMS)
    for form, group in layers.items():
        for weight, lin in zip(weights, group, strict=True):
            assert is_column_major(lin.weight) == (form == "transposed"), form  # not another form's layout
            assert torch.equal(lin.weight, weight)
            x = torch.randn(3, 24)
            with torch.inference_mode():
                torch.testing.assert_close(lin(x), F.linear(x, weight), atol=1e-5, rtol=1e-5)


def test_cache_round_trips_and_a_machine_or_shape_change_measures_again(tmp_path, monkeypatch):
    first = tune_linears(tiny_llama(tied=False), rows=(1, 3), cache_dir=tmp_path, **QUICK)
    assert not any(s.cached for s in first.shapes)
    records = sorted(tmp_path.glob("linear-*.json"))
    assert len(records) == len(first.shapes) == 5  # q/o, k/v, gate/up, down, head
    assert set(json.loads(records[0].read_text())["data"]["seconds"]) == {"1", "3"}
    second = tune_linears(tiny_llama(tied=False), rows=(1, 3), cache_dir=tmp_path, **QUICK)
    assert all(s.cached for s in second.shapes)
    assert [s.forms for s in second.shapes] == [s.forms for s in first.shapes]
    assert [s.seconds for s in second.shapes] == [s.seconds for s in first.shapes]

    wider = tiny_llama(tied=False)
    wider.lm_head = Linear(64, 300, bias=False)  # a new shape: only it is measured
    third = tune_linears(wider, rows=(1, 3), cache_dir=tmp_path, **QUICK)
    assert [s.out_features for s in third.shapes if not s.cached] == [300]

    other = {**linear_tuning.machine_recipe(), "threads": 64}
    monkeypatch.setattr(linear_tuning, "machine_recipe", lambda: other)
    moved = tune_linears(tiny_llama(tied=False), rows=(1, 3), cache_dir=tmp_path, **QUICK)
    assert not any(s.cached for s in moved.shapes)
