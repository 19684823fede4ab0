import pytest
import torch

from papernotes.core.config import preset
from papernotes.errors import ConfigError, DataError
from papernotes.llm.generation.generate import GenerationConfig, generate
from papernotes.llm.generation.sampling import logits_to_probs
from papernotes.llm.model.config import PRESETS
from papernotes.llm.model.llama import Llama


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Llama(preset(PRESETS, "tiny")).eval()


def test_greedy_cached_generation_equals_argmax_over_full_forwards(model):
    prompt = torch.randint(0, 256, (1, 7))
    ids, stats = generate(model, prompt, GenerationConfig(max_new_tokens=12))
    seq = prompt
    with torch.no_grad():
        for _ in range(12):
            seq = torch.cat([seq, model(seq)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(ids, seq[:, 7:])
    assert stats.tokens == 12 and stats.target_calls == 12 and sum(stats.accepted_per_step) == 12


def test_sampling_is_reproducible_by_seed_and_follows_the_model(model):
    prompt = torch.randint(0, 256, (1, 5))
    cfg = GenerationConfig(max_new_tokens=6, temperature=0.8, top_k=20, seed=3)
    a, _ = generate(model, prompt, cfg)
    b, _ = generate(model, prompt, cfg)
    assert torch.equal(a, b)
    # every sampled token had non-zero probability under top-k filtering of the full-forward logits
    with torch.no_grad():
        logits = model(torch.cat([prompt, a], dim=1))[:, 4:-1]
    probs = logits_to_probs(logits, 0.8, top_k=20)
    assert (probs.gather(-1, a[..., None]) > 0).all()


def test_generation_stops_at_eos(model):
    prompt = torch.randint(0, 256, (1, 5))
    first, _ = generate(model, prompt, GenerationConfig(max_new_tokens=1))
    ids, stats = generate(model, prompt, GenerationConfig(max_new_tokens=10, eos_token_id=int(first)))
    assert ids.shape == (1, 1) and stats.tokens == 1


def test_prompt_longer_than_the_context_is_a_clear_error(model):
    too_long = torch.zeros(1, model.config.max_position_embeddings, dtype=torch.long)
    with pytest.raises(DataError, match="exceeds max_position_embeddings=128"):
        generate(model, too_long, GenerationConfig(max_new_tokens=1))
    with pytest.raises(DataError, match=r"shape \(1, T\)"):
        generate(model, torch.zeros(2, 3, dtype=torch.long), GenerationConfig())


def test_decode_stats_derive_tau_and_alpha_from_counts():
    from papernotes.llm.generation.generate import DecodeStats

    stats = DecodeStats(tokens=7, target_calls=3, accepted_per_step=[1, 4, 2], wall_s=2.0)
    for position, accepted in [(0, True), (1, True), (2, False), (0, True), (1, False)]:
        stats.record_position(position, accepted)
    assert stats.tokens_per_call == 7 / 3 and stats.tokens_per_s == 3.5
    assert stats.acceptance_rate == 3 / 5
    assert stats.proposed_by_position == [2, 2, 1] and stats.accepted_by_position == [2, 1, 0]
    assert stats.as_dict()["acceptance_rate"] == 3 / 5


def test_emit_cuts_exactly_at_eos_or_the_budget():
    from papernotes.llm.generation.generate import DecodeLoop

    loop = DecodeLoop(GenerationConfig(max_new_tokens=9, eos_token_id=9))
    assert not loop.emit([7, 1, 2])
    assert loop.emit([3, 9, 4])  # eos: the 4 after it is dropped
    assert loop.new == [7, 1, 2, 3, 9] and loop.stats.accepted_per_step == [3, 2]
    budget = DecodeLoop(GenerationConfig(max_new_tokens=4))
    assert not budget.emit([1, 2, 3]) and budget.emit([5, 6]) and budget.new == [1, 2, 3, 5]
    ids, stats = budget.result(torch.tensor([[0]]))
    assert ids.tolist() == [[1, 2, 3, 5]] and stats.tokens == 4 and stats.accepted_per_step == [3, 1]


def test_decode_stats_add_sums_counts_and_positions():
    from papernotes.llm.generation.generate import DecodeStats

    a, b = DecodeStats(tokens=3, target_calls=2, accepted_per_step=[1, 2], wall_s=1.0), DecodeStats(tokens=4)
    a.record_position(0, True)
    for position, accepted in [(0, False), (1, True)]:
        b.record_position(position, accepted)
    a.add(b)
    assert (a.tokens, a.drafted, a.accepted) == (7, 3, 2)
    assert a.proposed_by_position == [2, 1] and a.accepted_by_position == [1, 1]


@pytest.mark.parametrize("with_prefix", [False, True], ids=["plain", "prefix"])
def test_batched_generation_equals_one_prompt_at_a_time(with_prefix):
    from papernotes.llm.generation.generate import generate_batch
    from papernotes.llm.peft.prefix_tuning import PrefixTuningConfig, apply_prefix_tuning

    torch.manual_seed(0)
    model = Llama(preset(PRESETS, "tiny")).eval()
    if with_prefix:  # the prefix shifts positions by P: left padding must not disturb that
        apply_prefix_tuning(model, PrefixTuningConfig(num_virtual_tokens=3, encoder_hidden_size=8))
    gen = torch.Generator().manual_seed(5)
    prompts = [torch.randint(3, 256, (n,), generator=gen).tolist() for n in (7, 2, 11)]
    config = GenerationConfig(max_new_tokens=10, eos_token_id=int(prompts[0][3]))
    batched = generate_batch(model, prompts, config)
    for prompt, row in zip(prompts, batched):
        alone, _ = generate(model, torch.tensor([prompt]), config)
        assert row == alone[0].tolist()


def test_num_samples_prefills_once_and_equals_the_prompts_repeated():
    from papernotes.llm.generation.generate import generate_batch

    torch.manual_seed(0)
    model = Llama(preset(PRESETS, "tiny")).eval()
    gen = torch.Generator().manual_seed(6)
    prompts = [torch.randint(3, 256, (n,), generator=gen).tolist() for n in (5, 9)]
    config = GenerationConfig(max_new_tokens=8, temperature=1.0, seed=3)
    calls = []
    model.register_forward_hook(lambda module, args, out: calls.append(args[0].shape))
    sampled = generate_batch(model, prompts, config, num_samples=3)
    assert calls[0] == (2, 9)  # one prefill row per prompt, not per sample
    repeated = generate_batch(model, [p for p in prompts for _ in range(3)], config)
    assert sampled == repeated  # the same rows, the same sampling generator
    assert len({tuple(r) for r in sampled}) > 2  # the copies of a prompt sample apart
    with pytest.raises(ConfigError, match="num_samples"):
        generate_batch(model, prompts, config, num_samples=0)


def test_rows_that_finish_leave_the_batch_and_the_others_decode_unchanged():
    from papernotes.llm.generation.generate import generate_batch

    torch.manual_seed(0)
    model = Llama(preset(PRESETS, "tiny")).eval()
    gen = torch.Generator().manual_seed(7)
    prompts = [torch.randint(3, 256, (n,), generator=gen).tolist() for n in (6, 3, 9, 4)]
    first, _ = generate(model, torch.tensor([prompts[0]]), GenerationConfig(max_new_tokens=12))
    config = GenerationConfig(max_new_tokens=12, eos_token_id=int(first[0, 2]))  # row 0 stops at its 3rd
    calls = []
    model.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    batched = generate_batch(model, prompts, config)
    assert min(calls) < len(prompts)  # the finished rows were dropped from later steps
    for prompt, row in zip(prompts, batched):
        alone, _ = generate(model, torch.tensor([prompt]), config)
        assert row == alone[0].tolist()
    assert batched[0][-1] == config.eos_token_id and len(batched[0]) == 3
