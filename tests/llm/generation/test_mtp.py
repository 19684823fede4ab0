"""DeepSeek-V3 multi-token prediction: modules, loss, training modes, self-speculative decoding, I/O."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from papernotes.core.config import preset
from papernotes.core.train import TrainConfig, train
from papernotes.errors import CheckpointError, ConfigError, DataError, ShapeMismatchError
from papernotes.llm.generation.generate import GenerationConfig, generate
from papernotes.llm.generation.mtp import (
    MTPConfig,
    MTPTrainingModel,
    add_mtp_modules,
    load_mtp_modules,
    mtp_generate,
    mtp_hidden_states,
    mtp_loss,
    mtp_losses,
    mtp_training_loss,
    save_mtp_modules,
    shared_logits,
)
from papernotes.llm.generation.mtp.decode import _draft
from papernotes.llm.model.config import PRESETS
from papernotes.llm.model.llama import Llama

PERIOD = 12  # the synthetic text repeats a cycle of 12 distinct tokens
CYCLE = torch.randperm(250, generator=torch.Generator().manual_seed(5))[:PERIOD] + 3  # avoids bos/eos


def tiny_model(seed: int = 0, **changes) -> Llama:
    torch.manual_seed(seed)
    return Llama(dataclasses.replace(preset(PRESETS, "tiny"), **changes)).eval()


def cycle_batches(step: int, micro: int = 0, rows: int = 8, length: int = 33) -> dict[str, torch.Tensor]:
    """Windows of the repeating cycle at random offsets: a pure function of (step, micro)."""
    gen = torch.Generator().manual_seed(1000 * step + micro)
    offsets = torch.randint(0, PERIOD, (rows, 1), generator=gen)
    window = CYCLE[(offsets + torch.arange(length)) % PERIOD]  # (rows, length)
    return {"input_ids": window[:, :-1], "labels": window[:, 1:]}


def fit(model: torch.nn.Module, steps: int) -> None:
    cfg = TrainConfig(
        steps=steps, batch_size=8, lr=1e-2, min_lr=1e-3, warmup_steps=3, eval_every=0, progress=False
    )
    train(model, mtp_training_loss, cycle_batches, cfg)


@pytest.fixture(scope="module")
def trained():
    """Base and depth-2 modules trained jointly from scratch on the cycle."""
    model = tiny_model(seed=3)
    modules = add_mtp_modules(model, MTPConfig(depth=2))
    fit(MTPTrainingModel(model, modules, train_base=True), steps=60)
    return model.eval(), modules.eval()


def test_modules_have_the_paper_shapes_and_share_embedding_and_head():
    model = tiny_model()
    modules = add_mtp_modules(model, MTPConfig(depth=2))
    E = model.config.hidden_size
    assert modules.depth == 2 and modules.layers[1].eh_proj.weight.shape == (E, 2 * E)  # M_k: 2E -> E
    names = set(modules.state_dict())
    assert not any("embed" in n or "lm_head" in n for n in names)  # shared, not copied
    assert "layers.0.block.self_attn.q_proj.weight" in names
    assert not any(n.startswith("mtp") for n in model.state_dict())  # the base stays HF-identical
    ids = torch.randint(0, 256, (2, 9))
    with torch.no_grad():
        _, hidden = model(ids, return_hidden=True)
        states = mtp_hidden_states(model, modules, hidden, ids)
        assert [tuple(h.shape) for h in states] == [(2, 8, E), (2, 7, E)]  # h^k_{1:T-k}
        before = shared_logits(model, states[0])
        model.lm_head.weight.mul_(2.0)  # the modules read the base's head: their logits follow it
        torch.testing.assert_close(shared_logits(model, states[0]), 2.0 * before)
    # a fresh block, not a copy of a base layer
    assert not torch.equal(
        modules.layers[0].block.mlp.up_proj.weight, model.model.layers[-1].mlp.up_proj.weight
    )


def chain_by_hand(model, modules, h0, ids, i, k):
    """h^k_i (E,) from eqs. 21-22 written out, over positions 0..i only."""
    hidden = h0[:, : i + 1]  # (1, i + 1, E)
    cos, sin = model.model.rotary_emb(torch.arange(i + 1)[None], hidden.dtype)
    for depth in range(1, k + 1):
        m = modules.layers[depth - 1]
        embeds = model.model.embed_tokens(ids[:, depth : depth + i + 1])  # t_{j+depth}, j = 0..i
        x = m.eh_proj(torch.cat([m.hnorm(hidden), m.enorm(embeds)], dim=-1))
        hidden = m.block(x, cos, sin, backend="naive", causal=True)
    return hidden[0, i]


def test_loss_is_main_plus_weighted_mean_of_depth_losses_by_hand():
    model = tiny_model()
    modules = add_mtp_modules(model, MTPConfig(depth=2, loss_weight=0.3))
    ids = torch.randint(3, 256, (2, 10), generator=torch.Generator().manual_seed(7))
    labels = torch.cat([ids[:, 1:], torch.randint(3, 256, (2, 1))], dim=1)
    labels[0, 4] = -100  # masked everywhere it appears as a target
    with torch.no_grad():
        losses = mtp_losses(model, modules, ids, labels)
        loss, tokens = mtp_loss(model, modules, {"input_ids": ids, "labels": labels})
        # by hand, one position at a time: the chain run on the prefix 0..i only, naive attention
        logits, h0 = model(ids, return_hidden=True)
        main = [
            -logits[b, i].log_softmax(-1)[labels[b, i]]
            for b in range(2)
            for i in range(10)
            if labels[b, i] >= 0
        ]
        per_depth = []
        for k in (1, 2):
            terms = []
            for b in range(2):
                for i in range(10 - k):
                    target = labels[b, i + k]  # t_{i+k+1}
                    if target >= 0:
                        h = chain_by_hand(model, modules, h0[b : b + 1], ids[b : b + 1], i, k)
                        terms.append(-model.lm_head(model.model.norm(h)).log_softmax(-1)[target])
            per_depth.append(torch.stack(terms).mean())
    expected_main = torch.stack(main).mean()
    torch.testing.assert_close(losses.main, expected_main)
    torch.testing.assert_close(torch.stack(losses.depths), torch.stack(per_depth))
    torch.testing.assert_close(loss, expected_main + 0.3 / 2 * (per_depth[0] + per_depth[1]))
    assert tokens == 19


def test_frozen_base_mode_trains_only_the_modules():
    model = tiny_model()
    modules = add_mtp_modules(model, MTPConfig(depth=1))
    batch = cycle_batches(0)
    with pytest.raises(ConfigError, match="frozen base"):
        mtp_loss(model, modules, batch, train_base=False)
    wrapper = MTPTrainingModel(model, modules, train_base=False)  # freezes the base
    loss, _ = mtp_training_loss(wrapper, batch)
    loss.backward()
    assert all(p.grad is None for p in model.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in modules.parameters())
    # the reported value is the joint objective, the gradient only the MTP term
    losses = mtp_losses(model, modules, batch["input_ids"], batch["labels"], train_base=False)
    torch.testing.assert_close(loss, losses.main + 0.3 * losses.depths[0])
    base_before = {n: p.clone() for n, p in model.state_dict().items()}
    module_before = [p.clone() for p in modules.parameters()]
    modules.zero_grad()
    fit(wrapper, steps=3)
    assert all(torch.equal(p, base_before[n]) for n, p in model.state_dict().items())
    assert all(not torch.equal(p, q) for p, q in zip(modules.parameters(), module_before))


def test_joint_mode_trains_base_and_modules_and_mtp_term_reaches_the_base():
    model = tiny_model()
    modules = add_mtp_modules(model, MTPConfig(depth=2))
    batch = cycle_batches(0)
    loss, _ = mtp_training_loss(MTPTrainingModel(model, modules), batch)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in modules.parameters())
    joint = model.model.layers[0].mlp.up_proj.weight.grad.clone()
    model.zero_grad()
    logits = model(batch["input_ids"])
    F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten()).backward()
    assert not torch.allclose(model.model.layers[0].mlp.up_proj.weight.grad, joint)  # L_k adds to it


def test_training_on_a_repetitive_sequence_makes_drafts_accepted(trained):
    model, modules = trained
    prompt = CYCLE[:5].view(1, 5)
    cfg = GenerationConfig(max_new_tokens=30)
    expected, _ = generate(model, prompt, cfg)
    assert torch.equal(expected[0], CYCLE[(torch.arange(30) + 5) % PERIOD])  # the base learned the cycle
    ids, stats = mtp_generate(model, modules, prompt, cfg)
    assert torch.equal(ids, expected)
    assert stats.accepted_by_position[0] / stats.proposed_by_position[0] > 0.9  # module 1
    assert stats.accepted_by_position[1] / stats.proposed_by_position[1] > 0.9  # module 2
    assert stats.tokens_per_call > 2.5 and stats.target_calls < 14  # about 3 tokens per main forward
    assert sum(stats.accepted_per_step) == stats.tokens == 30


def test_modules_trained_on_a_frozen_base_are_accepted(trained):
    model, _ = trained
    base_before = model.lm_head.weight.clone()
    modules = add_mtp_modules(model, MTPConfig(depth=1))
    fit(MTPTrainingModel(model, modules, train_base=False), steps=40)
    model.requires_grad_(True)  # the fixture is shared: give the base back unfrozen
    assert torch.equal(model.lm_head.weight, base_before)
    ids, stats = mtp_generate(
        model, modules.eval(), CYCLE[:3].view(1, 3), GenerationConfig(max_new_tokens=20)
    )
    assert stats.acceptance_rate > 0.9
    assert torch.equal(ids, generate(model, CYCLE[:3].view(1, 3), GenerationConfig(max_new_tokens=20))[0])


@pytest.mark.parametrize("depth", [1, 2])
def test_greedy_mtp_equals_greedy_generate(trained, depth):
    random_model = tiny_model(seed=1)
    random_modules = add_mtp_modules(random_model, MTPConfig(depth=depth))
    trained_model, trained_modules = trained
    if depth == 1:  # depth 1 of the trained pair: a one-module view of the same weights
        trained_modules = _first_modules(trained_modules, 1)
    gen = torch.Generator().manual_seed(depth)
    for model, modules in ((random_model, random_modules), (trained_model, trained_modules)):
        for length, new in ((1, 9), (4, 17), (11, 24)):
            prompt = torch.randint(3, 256, (1, length), generator=gen)
            if model is trained_model and length == 4:
                prompt = CYCLE[2:6].view(1, 4)  # mostly accepted drafts
            cfg = GenerationConfig(max_new_tokens=new)
            ids, stats = mtp_generate(model, modules, prompt, cfg)
            assert torch.equal(ids, generate(model, prompt, cfg)[0])
            assert stats.tokens == new == sum(stats.accepted_per_step)
            assert len(stats.accepted_per_step) == stats.target_calls


def _first_modules(modules, depth):
    """The first ``depth`` modules of a trained set, sharing their weights."""
    from papernotes.llm.generation.mtp import MTPModules

    view = MTPModules(modules.base_config, MTPConfig(depth=depth))
    view.layers = torch.nn.ModuleList(list(modules.layers)[:depth])
    return view


def test_garbage_drafts_still_give_the_exact_greedy_output():
    model = tiny_model(seed=2)
    modules = add_mtp_modules(model, MTPConfig(depth=2))
    with torch.no_grad():  # every draft is the token the main model never picks here
        for module in modules.layers:
            module.eh_proj.weight.normal_(0.0, 5.0)
    prompt = torch.randint(3, 256, (1, 6))
    cfg = GenerationConfig(max_new_tokens=15)
    ids, stats = mtp_generate(model, modules, prompt, cfg)
    assert torch.equal(ids, generate(model, prompt, cfg)[0])
    assert stats.accepted == 0 and stats.target_calls == 15  # never worse than one token per call


def test_eos_and_max_new_tokens_end_exactly(trained):
    model, modules = trained
    prompt = CYCLE[:4].view(1, 4)
    eos = int(CYCLE[(4 + 5) % PERIOD])  # the 6th new token: steps emit 1 (prefill), 3, 3, so mid-step
    cfg = GenerationConfig(max_new_tokens=30, eos_token_id=eos)
    ids, stats = mtp_generate(model, modules, prompt, cfg)
    assert torch.equal(ids, generate(model, prompt, cfg)[0]) and ids.shape == (1, 6) and stats.tokens == 6
    assert sum(stats.accepted_per_step) == 6
    for new in (0, 1, 2, 3, 4):
        ids, _ = mtp_generate(model, modules, prompt, GenerationConfig(max_new_tokens=new))
        assert torch.equal(ids, CYCLE[(torch.arange(new) + 4) % PERIOD].view(1, new))


def test_draft_caches_match_a_full_recomputation_after_rollbacks():
    """Each draft step's distributions equal the training-path chain over [committed, drafts]."""
    model = tiny_model(seed=4)
    modules = add_mtp_modules(model, MTPConfig(depth=3))
    seq = torch.randint(3, 256, (1, 40), generator=torch.Generator().manual_seed(9))
    cfg = GenerationConfig(temperature=1.0)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        _, h0 = model(seq, return_hidden=True)  # committed main hidden states (causal: prefixes agree)
        caches = modules.setup_caches(48)
        hidden = [torch.zeros(1, 48, 64) for _ in range(3)]
        hidden[0][:, :40] = h0
        n = 2
        for advance in (1, 4, 2, 3, 1, 4, 4, 2):  # accepted drafts + 1, as after each verification
            drafts, q = _draft(model, modules, caches, hidden, seq, n, 3, cfg, gen)
            ext = torch.cat([seq[:, : n + 1], drafts[:2].view(1, 2)], dim=1)  # (1, n + 3)
            _, full_h0 = model(ext, return_hidden=True)
            states = mtp_hidden_states(model, modules, full_h0, ext)
            full_q = torch.stack([shared_logits(model, h[0, n - 1]).softmax(-1) for h in states])
            torch.testing.assert_close(q, full_q, atol=1e-5, rtol=1e-4)
            n += advance


def test_sampled_mtp_decoding_repeats_by_seed():
    model = tiny_model()
    modules = add_mtp_modules(model, MTPConfig(depth=2))
    prompt = torch.randint(3, 256, (1, 5))
    cfg = GenerationConfig(max_new_tokens=12, temperature=0.9, top_k=40, seed=4)
    a, stats = mtp_generate(model, modules, prompt, cfg)
    b, _ = mtp_generate(model, modules, prompt, cfg)
    assert torch.equal(a, b) and a.shape == (1, 12) and stats.tokens == 12


def test_modules_follow_the_model_dtype():
    model = tiny_model()
    modules = add_mtp_modules(model, MTPConfig(depth=1))
    model.to(torch.float64)
    with pytest.raises(ConfigError, match="cast both"):
        mtp_generate(model, modules, torch.randint(3, 256, (1, 4)), GenerationConfig(max_new_tokens=3))
    modules.to(torch.float64)
    assert add_mtp_modules(model, MTPConfig()).layers[0].eh_proj.weight.dtype == torch.float64
    prompt = torch.randint(3, 256, (1, 4))
    cfg = GenerationConfig(max_new_tokens=6)
    assert torch.equal(mtp_generate(model, modules, prompt, cfg)[0], generate(model, prompt, cfg)[0])


def test_save_load_round_trip(tmp_path, trained):
    model, modules = trained
    save_mtp_modules(modules, tmp_path / "mtp")
    assert {p.name for p in (tmp_path / "mtp").iterdir()} == {"mtp_modules.safetensors", "mtp_config.json"}
    loaded = load_mtp_modules(model, tmp_path / "mtp")
    assert loaded.config == modules.config
    for (name, a), (_, b) in zip(modules.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    prompt = CYCLE[:3].view(1, 3)
    cfg = GenerationConfig(max_new_tokens=10)
    (ids_loaded, stats_loaded), (ids, stats) = (
        mtp_generate(model, m, prompt, cfg) for m in (loaded, modules)
    )
    assert torch.equal(ids_loaded, ids) and stats_loaded.accepted == stats.accepted > 0


def test_weights_that_do_not_fit_the_base_name_the_tensor(tmp_path):
    small = tiny_model()
    save_mtp_modules(add_mtp_modules(small, MTPConfig(depth=1)), tmp_path / "mtp")
    wider = tiny_model(intermediate_size=96)  # only the blocks' MLP weights differ
    with pytest.raises(
        ShapeMismatchError,
        match=r"tensor layers\.0\.block\.mlp\.gate_proj\.weight has shape \(128, 64\).*needs \(96, 64\)",
    ):
        load_mtp_modules(wider, tmp_path / "mtp")
    (tmp_path / "mtp" / "mtp_config.json").write_text('{"depth": 2, "loss_weight": 0.3}')
    with pytest.raises(CheckpointError, match=r"missing \['layers\.1\."):
        load_mtp_modules(small, tmp_path / "mtp")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_mtp_modules(small, tmp_path / "nowhere")


def test_prompt_too_long_is_a_data_error():
    model = tiny_model()
    modules = add_mtp_modules(model, MTPConfig(depth=2))
    too_long = torch.zeros(1, model.config.max_position_embeddings, dtype=torch.long)
    with pytest.raises(DataError, match="exceeds max_position_embeddings=128"):
        mtp_generate(model, modules, too_long, GenerationConfig(max_new_tokens=1))
    with pytest.raises(DataError, match=r"shape \(1, T\)"):
        mtp_generate(model, modules, torch.zeros(2, 3, dtype=torch.long), GenerationConfig())
    with pytest.raises(ConfigError, match="depth"):
        MTPConfig(depth=0)


def test_sampled_mtp_decoding_follows_the_model_distribution(samples_follow):
    """Joint law of the first two new tokens (the second one drafted, then accepted or resampled)."""
    model = tiny_model(seed=6, vocab_size=6, initializer_range=0.3)  # peaked, non-uniform p
    modules = add_mtp_modules(model, MTPConfig(depth=1))  # random module: q far from p
    prompt = torch.tensor([[1, 4, 0]])
    with torch.no_grad():
        p1 = model(prompt)[0, -1].softmax(-1)  # (6,)
        after = torch.cat([prompt.expand(6, 3), torch.arange(6)[:, None]], dim=1)  # (6, 4): prompt, t1
        logits, h0 = model(after, return_hidden=True)
        p2 = logits[:, -1].softmax(-1)  # (6, 6): p(t2 | t1)
        q2 = shared_logits(model, mtp_hidden_states(model, modules, h0, after)[0][:, -1]).softmax(-1)
    # the bug the residual guards against: resampling a rejected draft from p instead of norm(p - q)+
    overlap = torch.minimum(p2, q2)  # (6, 6): accepted mass per token
    from_p = overlap + (1 - overlap.sum(-1, keepdim=True)) * p2
    drafted = 0

    def first_two(seed: int) -> torch.Tensor:
        nonlocal drafted
        ids, stats = mtp_generate(
            model, modules, prompt, GenerationConfig(max_new_tokens=3, temperature=1.0, seed=seed)
        )
        drafted += stats.proposed_by_position[0]
        return ids[0, :2]

    runs = 1000
    samples_follow(first_two, runs, target=p1[:, None] * p2, wrong=p1[:, None] * from_p)
    assert drafted >= runs  # the second token always went through a draft
