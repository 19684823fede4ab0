"""The Llama 3 chat format: ids equal transformers' apply_chat_template, the assistant mask, bad input."""

import pytest

from papernotes.errors import DataError
from papernotes.llm.data.chat_format import (
    CHAT_TOKENS,
    add_chat_tokens,
    encode_chat,
    render_chat,
    write_chat_template,
)
from papernotes.llm.model.tokenizer import save_tokenizer, train_tokenizer

TEXTS = [
    "What is 12 plus 30?",
    "12 + 30 = 42.",
    "Sort these numbers: 5, 3, 9.",
    "Be brief.",
    "def f(x):\n\n    return x",
]
CONVERSATION = [
    {"role": "system", "content": "You are a careful assistant."},
    {"role": "user", "content": "What is 12 plus 30?"},
    {"role": "assistant", "content": "42"},
    {"role": "user", "content": "  Sort these numbers: 5, 3, 9.\n"},
    {"role": "assistant", "content": "3, 5, 9"},
]


@pytest.fixture(scope="module")
def tokenizer():
    tok = train_tokenizer(TEXTS * 20, vocab_size=300)
    assert add_chat_tokens(tok) == list(CHAT_TOKENS) and add_chat_tokens(tok) == []
    return tok


@pytest.fixture(scope="module")
def hf_tokenizer(tokenizer, tmp_path_factory):
    from transformers import AutoTokenizer

    directory = tmp_path_factory.mktemp("tok")
    save_tokenizer(tokenizer, directory)
    write_chat_template(directory)
    return AutoTokenizer.from_pretrained(directory)


def _hf_ids(hf_tokenizer, messages, **kwargs):
    out = hf_tokenizer.apply_chat_template(messages, tokenize=True, **kwargs)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


@pytest.mark.parametrize("turns", [2, 3, 5])
def test_ids_equal_transformers_apply_chat_template(tokenizer, hf_tokenizer, turns):
    messages = CONVERSATION[:turns]
    assert encode_chat(tokenizer, messages).ids == _hf_ids(hf_tokenizer, messages)
    rendered = hf_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == render_chat(messages, add_generation_prompt=True)


def test_the_generation_prompt_is_a_prefix_of_the_answered_conversation(tokenizer, hf_tokenizer):
    prompt = encode_chat(tokenizer, CONVERSATION[:4], add_generation_prompt=True).ids
    full = encode_chat(tokenizer, CONVERSATION).ids
    assert full[: len(prompt)] == prompt
    # HF's prompt ends with the lone "\n\n" token, which training never shows before an answer
    hf_prompt = _hf_ids(hf_tokenizer, CONVERSATION[:4], add_generation_prompt=True)
    assert hf_prompt[:-1] == prompt[:-2] and tokenizer.decode(hf_prompt[-1:]) == "\n\n"


def test_the_mask_covers_assistant_content_and_its_end_of_turn(tokenizer):
    encoded = encode_chat(tokenizer, CONVERSATION)
    masked = [i for i, m in zip(encoded.ids, encoded.assistant_mask) if m]
    eot = tokenizer.token_to_id("<|eot_id|>")
    assert tokenizer.decode(masked, skip_special_tokens=False) == "42<|eot_id|>3, 5, 9<|eot_id|>"
    assert masked.count(eot) == 2 and len(encoded.ids) == len(encoded.assistant_mask)


@pytest.mark.parametrize(
    ("messages", "match"),
    [
        ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "message 1 is 'user'"),
        ([{"role": "assistant", "content": "a"}], "message 0 is 'assistant'"),
        ([{"role": "robot", "content": "a"}], "role must be one of"),
        ([], "empty conversation"),
    ],
)
def test_malformed_conversations_are_clear_errors(tokenizer, messages, match):
    with pytest.raises(DataError, match=match):
        encode_chat(tokenizer, messages)


def test_a_tokenizer_without_chat_tokens_is_refused():
    with pytest.raises(DataError, match="add_chat_tokens"):
        encode_chat(train_tokenizer(TEXTS, vocab_size=280), CONVERSATION[:2])
