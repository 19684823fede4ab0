"""The Llama 3 chat format: special tokens, the Jinja template, and encoding with an assistant mask.

Llama 3 (Grattafiori et al. 2024, §4.1.1, "Chat dialog format") wraps every message as::

    <|begin_of_text|><|start_header_id|>{role}<|end_header_id|>\\n\\n{content}<|eot_id|>...

``<|begin_of_text|>`` once at the start, ``<|eot_id|>`` closing every turn, and an open
``<|start_header_id|>assistant<|end_header_id|>\\n\\n`` header when the model is to answer. The same
template is stored as Jinja in ``tokenizer_config.json`` (``chat_template``), so that
``transformers``' ``apply_chat_template`` renders and tokenizes conversations exactly as
:func:`encode_chat` does (the tests compare ids).

One deliberate difference, at the boundary where generation starts: our byte-level BPE pre-tokenizes
"\\n\\n" before a word as two pieces ("\\n", "\\n") but a lone trailing "\\n\\n" as one, which is a
different token. HF's ``add_generation_prompt`` ends the prompt with the lone form, which the model never
saw during training, so :func:`encode_chat` with ``add_generation_prompt`` ends it with the two pieces
instead: the prompt is then an exact prefix of the training encoding of the answered conversation.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer

from papernotes.errors import DataError
from papernotes.llm.model.tokenizer import BOS

START_HEADER = "<|start_header_id|>"
END_HEADER = "<|end_header_id|>"
EOT = "<|eot_id|>"
CHAT_TOKENS = (START_HEADER, END_HEADER, EOT)
ROLES = ("system", "user", "assistant")

# Jinja for transformers: the same layout as encode_chat (content trimmed, BOS once, optional open header)
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + (message['content'] | trim) "
    "+ '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)

Message = dict[str, str]  # {"role": ..., "content": ...}


@dataclass
class EncodedChat:
    ids: list[int]
    assistant_mask: list[bool]  # True on assistant content tokens and their closing <|eot_id|>


def add_chat_tokens(tokenizer: Tokenizer) -> list[str]:
    """Add the chat special tokens the tokenizer lacks (in place); returns the ones added."""
    missing = [t for t in CHAT_TOKENS if tokenizer.token_to_id(t) is None]
    if missing:
        tokenizer.add_special_tokens(missing)
    return missing


def write_chat_template(directory: str | Path) -> None:
    """Put ``chat_template`` (and the chat special tokens) into a model directory's tokenizer_config.json."""
    path = Path(directory) / "tokenizer_config.json"
    if not path.is_file():
        raise DataError(f"{path} does not exist; save the tokenizer first")
    config = json.loads(path.read_text())
    config["chat_template"] = CHAT_TEMPLATE
    config["additional_special_tokens"] = list(CHAT_TOKENS)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(config, indent=2))
    tmp.replace(path)


def check_conversation(messages: Sequence[Message], need_assistant: bool = False) -> None:
    """Roles must be known, an optional system message first, then user/assistant alternating from user."""
    if not messages:
        raise DataError("empty conversation")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise DataError(f"message {i} must be a dict with 'role' and 'content', got {message!r}")
        if message["role"] not in ROLES:
            raise DataError(f"message {i}: role must be one of {ROLES}, got {message['role']!r}")
    body = messages[1:] if messages[0]["role"] == "system" else messages
    for i, message in enumerate(body):
        expected = "user" if i % 2 == 0 else "assistant"
        if message["role"] != expected:
            offset = len(messages) - len(body)
            raise DataError(
                f"roles must alternate user/assistant after an optional system message; message "
                f"{i + offset} is {message['role']!r} where {expected!r} was expected"
            )
    if need_assistant and not any(m["role"] == "assistant" for m in messages):
        raise DataError("the conversation has no assistant turn to train on")


def encode_chat(
    tokenizer: Tokenizer, messages: Sequence[Message], add_generation_prompt: bool = False
) -> EncodedChat:
    """Token ids of a conversation in the Llama 3 format and the mask of the assistant's tokens.

    The mask covers each assistant message's content and its ``<|eot_id|>`` (the model must learn to
    stop); headers, system and user tokens are context. Raises DataError on a malformed conversation.
    """
    check_conversation(messages)
    missing = [t for t in (BOS, *CHAT_TOKENS) if tokenizer.token_to_id(t) is None]
    if missing:
        raise DataError(f"the tokenizer lacks the chat tokens {missing}; call add_chat_tokens first")
    special = {t: tokenizer.token_to_id(t) for t in (BOS, *CHAT_TOKENS)}
    ids, mask = [special[BOS]], [False]

    def extend(new: list[int], trained: bool) -> None:
        ids.extend(new)
        mask.extend([trained] * len(new))

    for message in messages:
        extend([special[START_HEADER], *tokenizer.encode(message["role"]).ids, special[END_HEADER]], False)
        is_assistant = message["role"] == "assistant"
        # "\n\n" and the content are one text segment between special tokens, as HF tokenizes it
        newlines, content = _split_segment(tokenizer, message["content"].strip())
        extend(newlines, False)
        extend([*content, special[EOT]], is_assistant)
    if add_generation_prompt:
        header = [special[START_HEADER], *tokenizer.encode("assistant").ids, special[END_HEADER]]
        extend([*header, *_split_segment(tokenizer, "x")[0]], False)  # the newlines in front of a word
    return EncodedChat(ids, mask)


def _split_segment(tokenizer: Tokenizer, content: str) -> tuple[list[int], list[int]]:
    """Ids of "\\n\\n" + content, split into the header's newline ids and the content's ids.

    Byte-level pre-tokenization cuts the segment between the newlines and the first (non-space)
    character, so the content's ids are those of the content alone; where a tokenizer merges across
    that cut, the whole segment counts as content.
    """
    body = tokenizer.encode("\n\n" + content).ids
    alone = tokenizer.encode(content).ids if content else []
    if alone and body[len(body) - len(alone) :] != alone:
        return [], body
    return body[: len(body) - len(alone)], body[len(body) - len(alone) :]


def render_chat(messages: Sequence[Message], add_generation_prompt: bool = False) -> str:
    """The conversation as text (what the Jinja template renders)."""
    check_conversation(messages)
    text = BOS + "".join(
        f"{START_HEADER}{m['role']}{END_HEADER}\n\n{m['content'].strip()}{EOT}" for m in messages
    )
    return text + (f"{START_HEADER}assistant{END_HEADER}\n\n" if add_generation_prompt else "")
