"""The drafters of issue 17 on a tiny Llama: self-distillation data equals a plain forward, a draft built
from every target layer is the target, losses on stored states equal the losses through the base, FR-Spec
heads keep greedy decoding exact, and chained MTP drafting stays lossless."""

import pytest
import torch

from papernotes.core.train import short_run, train
from papernotes.llm.data.chat_format import LLAMA3, add_chat_tokens
from papernotes.llm.generation import medusa, mtp
from papernotes.llm.generation.distill import DistillBatches, collect, predicts_reply, reply_tokens
from papernotes.llm.generation.draft import (
    DistillModel,
    DraftConfig,
    FrequentVocabDraft,
    distill_loss,
    distill_training_loss,
    draft_from_target,
)
from papernotes.llm.generation.frequent_vocab import VocabHead, frequent_tokens
from papernotes.llm.generation.generate import GenerationConfig, generate
from papernotes.llm.generation.medusa.train import medusa_head_losses, medusa_state_losses
from papernotes.llm.generation.speculative import speculative_generate
from papernotes.llm.model.tokenizer import train_tokenizer

TEXTS = ["The cat sat on the mat.", "def add(a, b):\n    return a + b", "Sort 3, 1, 2 please."] * 30


@pytest.fixture(scope="module")
def setup(tiny_llama):
    tokenizer = train_tokenizer(TEXTS, vocab_size=300)
    add_chat_tokens(tokenizer)
    model = tiny_llama(tokenizer, num_hidden_layers=3).eval()
    prompts = ["Hi there", "Sort 3, 1", "add two numbers"]
    data = collect(model, tokenizer, LLAMA3, prompts, max_new_tokens=10, batch_size=2, top_k=8)
    return tokenizer, model, data


def test_self_distillation_records_equal_a_plain_forward_of_the_sequences(setup):
    _, model, data = setup
    for ids, hidden, top_ids, top_probs in zip(data.ids, data.hidden, data.top_ids, data.top_probs):
        logits, states = model(ids[None], return_hidden=True)  # (1, n, V), (1, n, E)
        probs, top = torch.softmax(logits[0].float(), -1).topk(8, -1)
        assert len(ids) == len(hidden) == len(top_ids)
        torch.testing.assert_close(hidden, states[0], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(top_probs, probs, atol=1e-5, rtol=1e-4)
        assert torch.equal(top_ids[:, 0], top[:, 0])
    assert all(start < len(ids) for start, ids in zip(data.reply_starts, data.ids))


def test_drafters_are_trained_and_scored_on_the_reply_tokens_only(setup):
    """The prompts share a system line and formulaic requests; a drafter never drafts them, so batches mark
    the reply (positions from each sequence's reply start) and the guesses of reply tokens."""
    _, _, data = setup
    batch = DistillBatches(data, 3, 512, seed=0)(0)  # whole sequences
    for i in range(3):
        n = int(batch["mask"][i].sum())
        row = next(
            r
            for r, ids in enumerate(data.ids)
            if len(ids) == n and torch.equal(ids, batch["input_ids"][i, :n])
        )
        start = data.reply_starts[row]
        assert not batch["reply"][i, :start].any() and batch["reply"][i, start:n].all()
        assert not batch["reply"][i, n:].any()
        guesses = predicts_reply(batch)[i]
        assert not guesses[: start - 1].any() and guesses[start - 1 : n - 1].all()


def test_a_draft_of_every_target_layer_is_the_target(setup):
    _, model, _ = setup
    draft = draft_from_target(model, DraftConfig(layers=(0, 1, 2)))
    ids = torch.randint(0, model.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(draft(ids), model(ids))
    assert (
        torch.equal(draft.lm_head.weight, model.lm_head.weight)
        and draft.lm_head.weight is not model.lm_head.weight
    )


def test_distill_loss_is_cross_entropy_to_the_renormalised_teacher_and_training_lowers_it(setup):
    _, model, data = setup
    vocab = frequent_tokens(data.ids, model.config.vocab_size, 64)
    draft = draft_from_target(model, DraftConfig(layers=(0,)))
    head = VocabHead(draft.lm_head.weight, vocab)
    batch = DistillBatches(data, 2, 16, seed=0)(0)
    loss, count = distill_loss(draft, head, batch)
    # by hand: at each position, the teacher's mass on the head's tokens, renormalised, against log q
    log_q = torch.log_softmax(
        head.logits(draft(batch["input_ids"], attention_mask=batch["mask"], logits=False)), -1
    )
    total, positions = 0.0, 0
    for b, t in predicts_reply(batch).nonzero().tolist():  # the guesses of reply tokens only
        inside = torch.isin(batch["top_ids"][b, t], vocab)
        if not inside.any():
            continue
        rows = torch.searchsorted(vocab, batch["top_ids"][b, t][inside])
        p = batch["top_probs"][b, t][inside]
        total, positions = total - float((p / p.sum() * log_q[b, t, rows]).sum()), positions + 1
    assert abs(float(loss) - total / positions) < 1e-4 and count == positions
    before = float(loss)
    train(
        DistillModel(draft, head), distill_training_loss, DistillBatches(data, 2, 16), short_run(15, 2, 3e-3)
    )
    assert float(distill_loss(draft, head, batch)[0]) < before


def test_a_frequent_vocabulary_draft_keeps_greedy_speculative_decoding_exact(setup):
    tokenizer, model, data = setup
    vocab = frequent_tokens(data.ids, model.config.vocab_size, 32)
    assert len(vocab) == 32 and torch.equal(vocab, vocab.sort().values)
    draft = FrequentVocabDraft(
        draft_from_target(model, DraftConfig(layers=(0,))), VocabHead(model.lm_head.weight, vocab)
    )
    ids = data.ids[0][None, : data.reply_starts[0]]
    config = GenerationConfig(max_new_tokens=12)
    plain, _ = generate(model, ids, config)
    fast, stats = speculative_generate(model, draft, ids, config, num_draft_tokens=3)
    assert torch.equal(plain, fast) and stats.drafted > 0
    logits = draft(ids)[0, -1]
    assert torch.isinf(logits).sum() == model.config.vocab_size - 32  # it proposes only the 32 tokens


def test_medusa_losses_on_stored_states_equal_the_losses_through_the_base(setup):
    _, model, data = setup
    heads = medusa.add_medusa_heads(model, medusa.MedusaConfig(num_heads=2, share_lm_head=True))
    torch.manual_seed(0)
    for head in heads.heads:
        torch.nn.init.normal_(head.blocks[0].linear.weight, std=0.02)
    batch = DistillBatches(data, 2, 512, seed=1)(0)  # whole sequences: the same context as the base sees
    # next-token labels (B, T - 1), on the reply's tokens only
    labels = batch["input_ids"].masked_fill(~reply_tokens(batch), -100)[:, 1:]
    through_base = medusa_head_losses(model, heads, batch["input_ids"][:, :-1], labels)
    from_states = medusa_state_losses(heads, batch)
    for a, b in zip(through_base, from_states):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_shared_frequent_vocabulary_medusa_heads_are_exact_greedy_and_round_trip(setup, tmp_path):
    _, model, data = setup
    vocab = frequent_tokens(data.ids, model.config.vocab_size, 48)
    heads = medusa.add_medusa_heads(model, medusa.MedusaConfig(num_heads=2, share_lm_head=True), vocab=vocab)
    ids = data.ids[1][None, : data.reply_starts[1]]
    config = GenerationConfig(max_new_tokens=10)
    plain, _ = generate(model, ids, config)
    fast, _ = medusa.medusa_generate(model, heads, ids, config, tree=[(0,), (1,), (0, 0)])
    assert torch.equal(plain, fast)
    medusa.save_medusa_heads(heads, tmp_path)
    loaded = medusa.load_medusa_heads(model, tmp_path)
    assert torch.equal(loaded.vocab, vocab) and all(h.lm_head is None for h in loaded.heads)
    hidden = torch.randn(model.config.hidden_size)
    torch.testing.assert_close(loaded(hidden), heads(hidden))


def test_mtp_state_loss_equals_the_loss_through_the_base_and_a_chain_stays_exact(setup):
    _, model, data = setup
    modules = mtp.add_mtp_modules(model, mtp.MTPConfig(depth=1))
    batch = DistillBatches(data, 2, 512, seed=2)(0)
    ids = batch["input_ids"]
    labels = ids.masked_fill(~reply_tokens(batch), -100)[:, 1:]
    frozen = mtp.mtp_losses(model.requires_grad_(False), modules, ids[:, :-1], labels, train_base=False)
    state_loss, _ = mtp.mtp_state_loss(model, modules, batch, depths=1)
    torch.testing.assert_close(state_loss, frozen.depths[0], atol=1e-5, rtol=1e-4)
    prompt = data.ids[2][None, : data.reply_starts[2]]
    config = GenerationConfig(max_new_tokens=12)
    plain, _ = generate(model, prompt, config)
    head = VocabHead(model.lm_head.weight, frequent_tokens(data.ids, model.config.vocab_size, 40))
    chained, stats = mtp.mtp_generate(model, modules, prompt, config, num_drafts=3, head=head)
    assert torch.equal(plain, chained) and len(stats.proposed_by_position) == 3
