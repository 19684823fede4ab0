"""Chat formats: ids equal transformers' apply_chat_template (Llama 3's and a model's own ChatML), the
assistant masks for any template, bad input."""

import json

import pytest

from papernotes.errors import DataError
from papernotes.llm.data.chat_format import (
    CHAT_TOKENS,
    ChatFormat,
    add_chat_tokens,
    encode_chat,
    load_chat_format,
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


# ChatML as SmolLM2 stores it (tokenizer.chat_template of its GGUF file): a default system line when the
# first message is not a system message, contents not trimmed.
CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face'"
    " + '<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@pytest.fixture(scope="module")
def chatml(tmp_path_factory):
    """A byte-level tokenizer with ChatML's special tokens, and its directory as transformers saves it."""
    from transformers import AutoTokenizer

    tok = train_tokenizer(TEXTS * 20, vocab_size=300)
    tok.add_special_tokens(["<|im_start|>", "<|im_end|>"])
    directory = tmp_path_factory.mktemp("chatml")
    save_tokenizer(tok, directory)
    config = json.loads((directory / "tokenizer_config.json").read_text())
    config.update(chat_template=CHATML, eos_token="<|im_end|>", bos_token="<|im_start|>")
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    return tok, load_chat_format(directory), AutoTokenizer.from_pretrained(directory)


@pytest.mark.parametrize("turns", [2, 3, 4, 5])
def test_a_models_own_template_renders_and_encodes_as_transformers_does(chatml, turns):
    tok, chat, hf = chatml
    messages = (
        CONVERSATION[1:turns] if turns % 2 else CONVERSATION[:turns]
    )  # with and without a system message
    for prompt in (False, True):
        rendered = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt)
        assert chat.render(messages, add_generation_prompt=prompt) == rendered
    assert encode_chat(tok, messages, chat=chat).ids == _hf_ids(hf, messages)
    asking = messages if messages[-1]["role"] == "user" else messages[:-1]
    # ChatML's generation prompt ends with "\n", a piece of its own: the prefix equals HF's ids exactly
    ours = encode_chat(tok, asking, add_generation_prompt=True, chat=chat).ids
    assert ours == _hf_ids(hf, asking, add_generation_prompt=True)


def test_the_assistant_mask_of_any_template_covers_content_and_end_of_turn(chatml):
    tok, chat, _ = chatml
    encoded = encode_chat(tok, CONVERSATION, chat=chat)
    assert chat.end_of_turn == "<|im_end|>"

    def text(mask):
        return tok.decode([i for i, m in zip(encoded.ids, mask) if m], skip_special_tokens=False)

    assert text(encoded.assistant_mask) == "42<|im_end|>3, 5, 9<|im_end|>"
    assert text(encoded.content_mask) == "423, 5, 9"
    assert text(encoded.reply_mask) == "3, 5, 9"
    prompt = encode_chat(tok, CONVERSATION[:4], add_generation_prompt=True, chat=chat).ids
    assert encoded.ids[: len(prompt)] == prompt


def test_a_template_that_is_not_prefix_stable_is_refused(chatml):
    tok, _, _ = chatml
    # renders every message in reverse order: a turn's text depends on the turns after it
    reverse = ChatFormat(
        "{% for m in messages | reverse %}{{ m['role'] + ':' + m['content'] + '<|im_end|>' }}{% endfor %}",
        end_of_turn="<|im_end|>",
    )
    with pytest.raises(DataError, match="cannot be located"):
        encode_chat(tok, CONVERSATION[1:3], chat=reverse)
