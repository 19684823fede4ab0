"""SFT: assistant-only loss, packing equals padding, vocabulary growth, full and LoRA training."""

import dataclasses

import pytest
import torch

from papernotes.errors import DataError
from papernotes.llm.data.chat_format import add_chat_tokens
from papernotes.llm.data.supervised import pad_batch, target_loss
from papernotes.llm.data.tasks.instructions import PRESETS as TASK_PRESETS
from papernotes.llm.data.tasks.instructions import conversation, make_instructions
from papernotes.llm.model.tokenizer import train_tokenizer
from papernotes.llm.training import sft

SPLITS = make_instructions(TASK_PRESETS["tiny"])
CONVERSATIONS = [conversation(e) for e in SPLITS["train"]]


@pytest.fixture(scope="module")
def tokenizer():
    tok = train_tokenizer((m["content"] for c in CONVERSATIONS for m in c), vocab_size=400)
    add_chat_tokens(tok)
    return tok


def test_a_user_token_is_context_not_a_target(tokenizer, tiny_llama):
    """Changing a user token leaves every label as it was (no loss is taken on it); it still conditions
    the assistant's tokens, so the loss value moves, while changing an assistant token changes a label."""
    model = tiny_llama(tokenizer)
    base = [{"role": "user", "content": "What is 3 plus 4?"}, {"role": "assistant", "content": "7"}]
    (a,) = sft.encode_conversations(tokenizer, [base])
    (b,) = sft.encode_conversations(tokenizer, [base])
    # swap one user token for another id of the same length: the targets and their positions are unchanged
    user = next(i for i, m in enumerate(a.loss_mask) if not m and i > 4)
    b.ids[user] = (a.ids[user] + 1) % tokenizer.get_vocab_size()
    with torch.no_grad():
        loss_a = target_loss(model, pad_batch([a], 0))[0]
        # the changed token only feeds later positions as context; its own label is IGNORE_INDEX
        assert pad_batch([b], 0)["labels"].eq(pad_batch([a], 0)["labels"]).all()
    # but the loss (which conditions on the user token) still changes: it is a real input
    with torch.no_grad():
        loss_b = target_loss(model, pad_batch([b], 0))[0]
    assert loss_a != loss_b
    # while changing an assistant token changes the labels themselves
    c = sft.encode_conversations(tokenizer, [base])[0]
    target = next(i for i, m in enumerate(c.loss_mask) if m)
    c.ids[target] = (c.ids[target] + 1) % tokenizer.get_vocab_size()
    assert not pad_batch([c], 0)["labels"].eq(pad_batch([a], 0)["labels"]).all()


def test_packed_batches_give_the_same_loss_as_padded_ones(tokenizer, tiny_llama):
    model = tiny_llama(tokenizer)
    encoded = sft.encode_conversations(tokenizer, CONVERSATIONS[:9])
    packed = sft.pack_batch(encoded, max_length=160, pad_token_id=0)
    padded = pad_batch(encoded, 0)
    assert packed["input_ids"].shape[0] < padded["input_ids"].shape[0]  # fewer rows
    with torch.no_grad():
        loss_packed, n_packed = target_loss(model, packed)
        loss_padded, n_padded = target_loss(model, padded)
    assert n_packed == n_padded == sum(sum(e.loss_mask) for e in encoded)
    torch.testing.assert_close(loss_packed, loss_padded, atol=1e-5, rtol=1e-5)


def test_the_loss_masks_user_tokens(tokenizer):
    """Mutating only user-turn tokens leaves the label tensor identical (no loss on them)."""
    encoded = sft.encode_conversations(tokenizer, CONVERSATIONS[:3])
    mutated = [dataclasses.replace(e, ids=list(e.ids)) for e in encoded]
    for e in mutated:
        for i, trained in enumerate(e.loss_mask):
            if not trained and i > 0:
                e.ids[i] = 5
    assert torch.equal(sft.pack_batch(encoded, 512, 0)["labels"], sft.pack_batch(mutated, 512, 0)["labels"])


def test_a_conversation_without_an_assistant_turn_is_refused(tokenizer):
    with pytest.raises(DataError, match="conversation 1: the conversation has no assistant turn"):
        sft.encode_conversations(tokenizer, [CONVERSATIONS[0], [{"role": "user", "content": "hi"}]])


def test_growing_the_vocabulary_keeps_old_logits_and_ties(tiny_llama):
    tok = train_tokenizer(["some text for a tokenizer"] * 10, vocab_size=270)
    model = tiny_llama(tok)
    ids = torch.tensor([[1, 5, 9]])
    with torch.no_grad():
        before = model(ids)
    added = sft.prepare_model(model, tok)
    assert len(added) == 3 and model.config.vocab_size == tok.get_vocab_size()
    with torch.no_grad():
        after = model(ids)
    torch.testing.assert_close(after[..., : before.shape[-1]], before)
    new_row = model.model.embed_tokens.weight[-1]
    torch.testing.assert_close(new_row, model.model.embed_tokens.weight[:-3].mean(0))


@pytest.mark.parametrize("method", ["full", "lora"])
def test_sft_lowers_the_assistant_loss(tokenizer, method, tiny_llama):
    model = tiny_llama(tokenizer)
    lr = {"full": 3e-3, "lora": 3e-2}[method]
    config = sft.SFTConfig(method=method, steps=60, batch_size=4, max_length=256, lr=lr, precision="fp32")
    result = sft.sft(model, tokenizer, CONVERSATIONS, config, progress=False)
    # LoRA on a random tiny base moves slowly: it only has to move in the right direction
    bound = {"full": 0.7, "lora": 0.97}[method]
    assert sum(result.train_losses[-5:]) / 5 < result.train_losses[0] * bound
    if method == "lora":
        assert result.trainable_parameters < model.num_parameters() / 5
