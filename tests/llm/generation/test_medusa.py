"""Medusa: heads, Medusa-1 loss and training, candidate tree, tree decoding, acceptance, I/O."""

import dataclasses
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from papernotes.core.config import preset
from papernotes.core.train import TrainConfig, train
from papernotes.errors import CheckpointError, ConfigError, DataError, ShapeMismatchError
from papernotes.llm.generation.generate import GenerationConfig, generate
from papernotes.llm.generation.medusa import (
    MedusaConfig,
    add_medusa_heads,
    evaluate_posterior,
    generate_candidates,
    load_medusa_heads,
    medusa_generate,
    save_medusa_heads,
    tree_decode,
    typical_acceptance,
)
from papernotes.llm.generation.medusa.train import (
    calibrate_tree,
    head_topk_accuracy,
    medusa_head_losses,
    medusa_loss,
    train_medusa,
)
from papernotes.llm.generation.medusa.tree import (
    build_tree,
    expected_accepted,
    greedy_tree,
    longest_accepted_path,
)
from papernotes.llm.model.config import PRESETS
from papernotes.llm.model.llama import Llama
from papernotes.nn.kv_cache import KVCache

PERIOD = 12  # the synthetic text repeats a cycle of 12 distinct tokens
CYCLE = torch.randperm(250, generator=torch.Generator().manual_seed(7))[:PERIOD] + 3  # avoids bos/eos
USER_TREE = [(0,), (1,), (0, 0), (0, 1), (1, 0), (0, 0, 0)]


def tiny_model(seed: int = 0, **changes) -> Llama:
    torch.manual_seed(seed)
    return Llama(dataclasses.replace(preset(PRESETS, "tiny"), **changes)).eval()


def tiny_heads(model: Llama, num_heads: int = 3, seed: int | None = None, **changes):
    heads = add_medusa_heads(model, MedusaConfig(num_heads=num_heads, **changes))
    if seed is not None:  # random residual blocks: garbage candidates, away from the base's guesses
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in heads.parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * 0.5)
    return heads


def cycle_batches(step: int, micro: int = 0, rows: int = 8, length: int = 33) -> dict[str, torch.Tensor]:
    """Windows of the repeating cycle at random offsets: a pure function of (step, micro)."""
    gen = torch.Generator().manual_seed(1000 * step + micro)
    offsets = torch.randint(0, PERIOD, (rows, 1), generator=gen)
    window = CYCLE[(offsets + torch.arange(length)) % PERIOD]  # (rows, length)
    return {"input_ids": window[:, :-1], "labels": window[:, 1:]}


def quick_config(steps: int) -> TrainConfig:
    return TrainConfig(
        steps=steps, batch_size=8, lr=1e-2, min_lr=1e-3, warmup_steps=3, eval_every=0, progress=False
    )


def lm_loss(model, batch):
    logits = model(batch["input_ids"])
    return F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten()), batch["labels"].numel()


@pytest.fixture(scope="module")
def trained():
    """A base trained on the cycle, then Medusa-1 heads trained on it; accuracy before and after."""
    model = tiny_model(seed=3)
    model.train()
    train(model, lm_loss, cycle_batches, quick_config(40))
    model.eval()
    heads = tiny_heads(model)
    val = [cycle_batches(10_000 + i) for i in range(2)]
    before = head_topk_accuracy(model, heads, val, k_max=4)
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    result = train_medusa(model, heads, cycle_batches, quick_config(40))
    after = head_topk_accuracy(model, heads, val, k_max=4)
    return model, heads, before, after, base_state, result


# --- heads and loss -----------------------------------------------------------------------------


def test_zero_initialised_heads_equal_the_base_lm_head():
    model = tiny_model()
    heads = tiny_heads(model, num_heads=4)
    _, hidden = model(torch.randint(3, 250, (2, 9)), return_hidden=True)
    logits = heads(hidden)  # (K, B, T, V)
    assert logits.shape == (4, 2, 9, model.config.vocab_size)
    for k in range(4):
        torch.testing.assert_close(logits[k], model.lm_head(hidden), atol=0, rtol=0)
        # a copy, not a tie: training a head must not move the base's head
        assert heads.heads[k].lm_head.weight.data_ptr() != model.lm_head.weight.data_ptr()


def test_medusa_loss_gives_heads_gradients_and_the_base_none():
    model = tiny_model()  # deliberately NOT frozen: medusa_loss itself keeps the base out of autograd
    heads = tiny_heads(model)
    loss, tokens = medusa_loss(model, heads, cycle_batches(0))
    loss.backward()
    assert tokens == 8 * 32
    assert all(p.grad is None for p in model.parameters())
    for head in heads.heads:
        assert head.blocks[0].linear.weight.grad.abs().sum() > 0  # SiLU'(0) = 1/2: zero init still learns
        assert head.lm_head.weight.grad.abs().sum() > 0


def test_loss_weights_are_point_eight_to_the_k_against_a_hand_computation():
    model = tiny_model()
    heads = tiny_heads(model, num_heads=3, seed=1)
    batch = {name: t.clone() for name, t in cycle_batches(2, rows=2, length=8).items()}  # no shared views
    batch["labels"][0, 5] = -100  # masked label: excluded from every head that would target it
    loss, _ = medusa_loss(model, heads, batch)
    ids, labels = batch["input_ids"], batch["labels"]
    with torch.no_grad():
        _, hidden = model(ids, return_hidden=True)
        logits = heads(hidden)
    total = 0.0
    for k in range(3):
        terms = []
        for b in range(2):
            for i in range(ids.shape[1]):
                j = i + k + 1  # head k at position i predicts t_{i+k+2} = labels[:, i+k+1]
                if j < ids.shape[1] and labels[b, j] != -100:
                    terms.append(-torch.log_softmax(logits[k, b, i], -1)[labels[b, j]])
        head_ce = torch.stack(terms).mean()
        torch.testing.assert_close(medusa_head_losses(model, heads, ids, labels)[k], head_ce)
        total = total + 0.8**k * head_ce
    torch.testing.assert_close(loss.detach(), total)


def test_train_medusa_freezes_the_base_and_improves_head_accuracy(trained):
    model, heads, before, after, base_state, result = trained
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in base_state.items())
    assert all(not p.requires_grad for p in model.parameters())
    assert result.train_losses[-1] < 0.5 * result.train_losses[0]
    # heads start as copies of the base head, which predicts t+1, not t+k+2: ~0 on a 12-cycle
    assert float(before[:, 0].max()) < 0.2
    assert float(after[:, 0].min()) > 0.9, after


def test_head_topk_accuracy_is_cumulative_and_complete_at_the_full_vocabulary():
    model = tiny_model()
    heads = tiny_heads(model, seed=2)
    acc = head_topk_accuracy(model, heads, [cycle_batches(0)], k_max=model.config.vocab_size)
    assert acc.shape == (3, model.config.vocab_size)
    assert bool((acc.diff(dim=-1) >= 0).all())
    torch.testing.assert_close(acc[:, -1], torch.ones(3))


# --- candidate tree -------------------------------------------------------------------------------


def test_greedy_tree_on_a_hand_made_accuracy_table():
    # cumulative top-k accuracy; per-rank: head 0 [.5, .2, .1], head 1 [.3, .2, .1], head 2 [.25, .1, .05]
    topk = torch.tensor([[0.5, 0.7, 0.8], [0.3, 0.5, 0.6], [0.25, 0.35, 0.4]])
    # products: (0,) .5  (1,) .2  (0,0) .15  (2,) .1  (0,1) .1  (1,0) .06  (0,2) .05  (1,1) .04
    # (0,0,0) .0375, then (2,0) .03: a deep node can beat a shallow one
    assert greedy_tree(topk, 5) == [(0,), (1,), (2,), (0, 0), (0, 1)]
    tree = greedy_tree(topk, 9)
    assert tree == [(0,), (1,), (2,), (0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (0, 0, 0)]
    assert expected_accepted(tree, topk) == pytest.approx(
        0.5 + 0.2 + 0.1 + 0.15 + 0.1 + 0.05 + 0.06 + 0.04 + 0.0375
    )
    assert greedy_tree(torch.tensor([[1.0, 1.0], [0.0, 0.0]]), 10) == [(0,)]  # zero-product nodes never added


def test_greedy_tree_is_optimal_among_all_prefix_closed_trees_of_its_size():
    topk = torch.tensor([[0.6, 0.9], [0.5, 0.7], [0.4, 0.8]])
    nodes = [p for d in range(1, 4) for p in itertools.product(range(2), repeat=d)]
    for size in range(1, 6):
        best = max(
            expected_accepted(subset, topk)
            for subset in itertools.combinations(nodes, size)
            if all(len(p) == 1 or p[:-1] in subset for p in subset)
        )
        assert expected_accepted(greedy_tree(topk, size), topk) == pytest.approx(best)


def test_build_tree_rejects_a_missing_parent_and_duplicates():
    with pytest.raises(ConfigError, match=r"\(0, 1\) has no parent: add \(0,\)"):
        build_tree([(1,), (0, 1)])
    with pytest.raises(ConfigError, match="duplicated"):
        build_tree([(0,), (0,)])
    tree = build_tree([(0, 0), (1,), (0,)])  # any order: sorted by (depth, ranks)
    assert tree.paths == ((0,), (1,), (0, 0)) and tree.parents.tolist() == [-1, 0, 0, 1]


def test_tree_mask_lets_each_node_see_only_its_ancestors_and_matches_running_each_path():
    model = tiny_model()
    tree = build_tree(USER_TREE)
    mask = tree.attention_mask(cache_length=5)[0, 0]  # (N, 5 + N)
    assert mask[:, :5].all()
    # node 6 = (0, 0, 0): root 0, (0,) = 1, (0, 0) = 3, itself 6
    assert mask[6, 5:].nonzero().flatten().tolist() == [0, 1, 3, 6]
    assert mask[5, 5:].nonzero().flatten().tolist() == [0, 2, 5]  # (1, 0) below (1,)
    prompt = torch.randint(3, 250, (1, 5))
    tokens = torch.randint(3, 250, (tree.num_nodes,))
    cache = model.setup_cache(1, 32)
    model(prompt, cache=cache)
    logits, _ = tree_decode(model, cache, tokens, tree)  # (N, V)
    for leaf in (4, 5, 6):
        path = tree.path_to(leaf)
        alone = model(torch.cat((prompt, tokens[path][None]), dim=1))[0, 5:]
        torch.testing.assert_close(logits[path], alone, atol=1e-4, rtol=0)


def test_tree_deeper_than_the_remaining_positions_is_a_data_error():
    model = tiny_model()  # max_position_embeddings = 128
    cfg = model.config
    cache = KVCache(cfg.num_hidden_layers, 1, cfg.num_key_value_heads, 200, cfg.head_dim)
    model(torch.randint(3, 250, (1, 125)), cache=cache)
    tree = build_tree(USER_TREE)  # depth 3: positions 125..128
    with pytest.raises(DataError, match="depth 3 after 125 tokens reaches position 128"):
        tree_decode(model, cache, torch.zeros(tree.num_nodes, dtype=torch.long), tree)
    shallow = tree.truncate(2)  # the explicit fix works
    tree_decode(model, cache, torch.zeros(shallow.num_nodes, dtype=torch.long), shallow)


def test_longest_accepted_path_stops_at_the_first_rejection_on_each_branch():
    tree = build_tree(USER_TREE)  # nodes: root, (0,), (1,), (0,0), (0,1), (1,0), (0,0,0)
    ok = torch.tensor([False, True, True, False, True, True, True])
    assert longest_accepted_path(tree, ok) == [0, 1, 4]  # (0,0,0) is below the rejected (0,0)
    assert longest_accepted_path(tree, torch.zeros(7, dtype=torch.bool)) == [0]


# --- acceptance -------------------------------------------------------------------------------------


def test_typical_acceptance_thresholds_by_hand():
    # confident p: H small, the ε = 0.09 bound binds
    confident = torch.tensor([0.95, 0.05])
    assert 0.3 * math.exp(-(-0.95 * math.log(0.95) - 0.05 * math.log(0.05))) > 0.09
    assert typical_acceptance(confident, torch.tensor(0)).item()
    assert not typical_acceptance(confident, torch.tensor(1)).item()  # 0.05 < 0.09
    # flat p: H = 8·0.1·ln 10 + 10·0.02·ln 50 = 2.6245, δ·e^{−H} = 0.0217 < ε binds instead
    flat = torch.tensor([0.1] * 8 + [0.02] * 10)
    threshold = 0.3 * math.exp(-(8 * 0.1 * math.log(10) + 10 * 0.02 * math.log(50)))
    assert 0.02 < threshold < 0.1
    result = typical_acceptance(flat.expand(18, 18), torch.arange(18))
    assert result.tolist() == [True] * 8 + [False] * 10
    # ε itself: 0.5 always passes with a larger delta, and a zero-probability token never does
    assert not typical_acceptance(torch.tensor([1.0, 0.0]), torch.tensor(1), delta=10.0).item()


def test_evaluate_posterior_greedy_accepts_exactly_the_parents_argmax():
    tree = build_tree([(0,), (1,), (0, 0)])
    logits = torch.full((4, 10), -5.0)
    logits[0, 7] = logits[1, 3] = logits[2, 4] = logits[3, 1] = 5.0  # argmax at each node
    greedy = GenerationConfig(temperature=0.0)
    assert evaluate_posterior(logits, torch.tensor([9, 7, 2, 3]), tree, greedy) == [0, 1, 3]
    assert evaluate_posterior(logits, torch.tensor([9, 2, 7, 3]), tree, greedy) == [0, 2]
    assert evaluate_posterior(logits, torch.tensor([9, 1, 2, 3]), tree, greedy) == [0]


def test_generate_candidates_places_each_heads_ranks_in_the_tree():
    tree = build_tree([(0,), (1,), (0, 0), (0, 1)])
    head_logits = torch.tensor([[0.0, 3.0, 2.0, 1.0], [5.0, 0.0, 4.0, 0.0]])  # head 0: 1, 2; head 1: 0, 2
    assert generate_candidates(9, head_logits, tree).tolist() == [9, 1, 2, 0, 2]


# --- decoding -------------------------------------------------------------------------------------


@pytest.mark.parametrize("tree", [None, USER_TREE, [], "greedy"])
@pytest.mark.parametrize("heads_seed", [None, 4], ids=["init-heads", "random-heads"])
def test_greedy_medusa_equals_greedy_generate_on_a_random_base(tree, heads_seed):
    model = tiny_model(seed=1)
    # init heads copy the base head: on a random base they still get accepted now and then, which
    # exercises compaction; random heads are almost never accepted
    heads = tiny_heads(model, seed=heads_seed)
    if tree == "greedy":
        tree = greedy_tree(torch.tensor([[0.4, 0.6, 0.7], [0.3, 0.5, 0.6], [0.2, 0.3, 0.4]]), 12)
    config = GenerationConfig(max_new_tokens=23)
    accepted = 0
    for seed in range(3):
        prompt = torch.randint(3, 250, (1, 4 + 3 * seed), generator=torch.Generator().manual_seed(seed))
        expected, _ = generate(model, prompt, config)
        ids, stats = medusa_generate(model, heads, prompt, config, tree=tree)
        assert torch.equal(ids, expected)
        assert stats.tokens == 23 == sum(stats.accepted_per_step)
        assert stats.target_calls == len(stats.accepted_per_step)
        accepted += stats.accepted
    if heads_seed is None and tree != []:
        assert accepted > 0


def test_trained_heads_accept_several_tokens_per_call_and_stay_exact(trained):
    model, heads, *_ = trained
    tree = calibrate_tree(model, heads, [cycle_batches(20_000)], num_nodes=8)
    assert heads.tree == tree and tree[0] == (0,)
    prompt = CYCLE[:5][None]
    config = GenerationConfig(max_new_tokens=30)
    expected, plain = generate(model, prompt, config)
    ids, stats = medusa_generate(model, heads, prompt, config)  # heads.tree by default
    assert torch.equal(ids, expected)
    assert stats.tokens_per_call > 2.5 and stats.target_calls < plain.target_calls / 2
    assert stats.accepted_by_position[0] / stats.proposed_by_position[0] > 0.8


def test_eos_and_max_new_tokens_cut_exactly(trained):
    model, heads, *_ = trained
    prompt = CYCLE[:5][None]
    full, _ = generate(model, prompt, GenerationConfig(max_new_tokens=30))
    eos = int(full[0, 9])
    config = GenerationConfig(max_new_tokens=30, eos_token_id=eos)
    expected, _ = generate(model, prompt, config)
    ids, stats = medusa_generate(model, heads, prompt, config, tree=USER_TREE)
    assert torch.equal(ids, expected) and ids[0, -1] == eos
    for n in (0, 1, 2, 7):
        ids, stats = medusa_generate(model, heads, prompt, GenerationConfig(max_new_tokens=n), tree=USER_TREE)
        assert ids.shape == (1, n) and torch.equal(ids, full[:, :n]) and stats.tokens == n


def test_tree_is_truncated_at_the_end_of_the_position_range():
    model = tiny_model(seed=1)
    heads = tiny_heads(model)
    prompt = torch.randint(3, 250, (1, 120))
    config = GenerationConfig(max_new_tokens=8)  # 120 + 8 = max_position_embeddings
    ids, _ = medusa_generate(model, heads, prompt, config, tree=USER_TREE)
    assert torch.equal(ids, generate(model, prompt, config)[0])
    with pytest.raises(ConfigError, match="depth 4, but there are only 3 heads"):
        medusa_generate(model, heads, prompt, config, tree=[(0,), (0, 0), (0, 0, 0), (0, 0, 0, 0)])


def test_sampled_medusa_repeats_for_a_seed_and_respects_the_budget(trained):
    model, heads, *_ = trained
    prompt = CYCLE[:5][None]
    config = GenerationConfig(max_new_tokens=20, temperature=0.8, top_k=50, seed=3)
    first, stats = medusa_generate(model, heads, prompt, config, tree=USER_TREE)
    second, _ = medusa_generate(model, heads, prompt, config, tree=USER_TREE)
    assert torch.equal(first, second) and first.shape == (1, 20)
    assert stats.tokens_per_call > 1.5  # a peaked base on the cycle: typical acceptance accepts most


def test_heads_keep_working_after_the_base_is_cast():
    model = tiny_model(seed=1)
    heads = tiny_heads(model)
    model.to(torch.float64)  # heads stay fp32; they cast the hidden state they read
    prompt = torch.randint(3, 250, (1, 6))
    config = GenerationConfig(max_new_tokens=12)
    ids, _ = medusa_generate(model, heads, prompt, config, tree=USER_TREE)
    assert torch.equal(ids, generate(model, prompt, config)[0])


# --- save / load --------------------------------------------------------------------------------------


def test_save_load_round_trip(tmp_path):
    model = tiny_model()
    heads = tiny_heads(model, seed=5, top_k=4)
    heads.tree = [(0,), (1,), (0, 0)]
    save_medusa_heads(heads, tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"medusa_heads.safetensors", "medusa_config.json"}
    loaded = load_medusa_heads(model, tmp_path)
    assert loaded.config == heads.config and loaded.tree == heads.tree
    for (name, a), (_, b) in zip(heads.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    prompt = torch.randint(3, 250, (1, 6))
    config = GenerationConfig(max_new_tokens=10)
    assert torch.equal(
        medusa_generate(model, heads, prompt, config)[0], medusa_generate(model, loaded, prompt, config)[0]
    )


def test_load_errors_name_the_file_and_the_tensor(tmp_path):
    model = tiny_model()
    with pytest.raises(CheckpointError, match="medusa_config.json does not exist"):
        load_medusa_heads(model, tmp_path)
    save_medusa_heads(tiny_heads(model), tmp_path)
    other = tiny_model(vocab_size=300)
    with pytest.raises(
        ShapeMismatchError, match=r"heads\.0\.lm_head\.weight has shape \(256, 64\).*\(300, 64\)"
    ):
        load_medusa_heads(other, tmp_path)
    (tmp_path / "medusa_heads.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="medusa_heads.safetensors"):
        load_medusa_heads(model, tmp_path)
