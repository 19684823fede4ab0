"""Chat templates: a model's own Jinja template rendered as transformers renders it, and encoding with
the mask of the assistant's tokens, for any template.

A model directory stores its template as Jinja in ``tokenizer_config.json`` (``chat_template``); a GGUF
file stores it as ``tokenizer.chat_template`` and its cached export carries it over. :class:`ChatFormat`
renders it with the environment transformers' ``apply_chat_template`` uses (a sandboxed Jinja with
``trim_blocks``/``lstrip_blocks``, ``raise_exception``, a ``tojson`` filter, the special tokens as
variables), so the text and the ids equal transformers' (the tests compare them). SmolLM2 uses ChatML::

    <|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n

**The assistant mask for any template.** The rendered conversation is tokenized once with offsets. Each
assistant turn is found by rendering the conversation before it with the generation prompt, which must be
a prefix of the whole (it is for ChatML and Llama 3; a template for which it is not is refused): the turn is
what follows, its content is located in it, and the turn ends with the template's end-of-turn token
(``<|im_end|>``, ``<|eot_id|>``). A token is an assistant token when it overlaps the content or that end
token, so the model learns to stop.

**The generation prompt** is cut from the training encoding of the conversation answered with a one-word
reply, so it is an exact prefix of what training saw. For our byte-level BPE and Llama 3's template this
matters: "\\n\\n" before a word is two pieces, a lone trailing "\\n\\n" one different token, and HF's
``add_generation_prompt`` ids end with the lone form, which the model never saw in training.

**Llama 3** (Grattafiori et al. 2024, §4.1.1) is the format of our own tokenizer (``<|begin_of_text|>``
once, ``<|start_header_id|>{role}<|end_header_id|>\\n\\n{content}<|eot_id|>`` per message, contents
trimmed); :data:`LLAMA3` holds it, and :func:`add_chat_tokens` / :func:`write_chat_template` give a
tokenizer and a model directory its special tokens and template.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

from papernotes.core.files import write_text_atomic
from papernotes.errors import CheckpointError, DataError
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
    assistant_mask: list[bool]  # True on assistant content tokens and the end-of-turn token closing each
    content_mask: list[bool] = field(default_factory=list)  # assistant content only, no formatting token
    reply_mask: list[bool] = field(default_factory=list)  # the final assistant message's content only


END_OF_TURN_TOKENS = ("<|eot_id|>", "<|im_end|>", "<end_of_turn>", "</s>")  # Llama 3, ChatML, Gemma, Llama 2
SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "pad_token", "unk_token")


@functools.cache
def _compiled(template: str) -> jinja2.Template:
    """The template in transformers' rendering environment (``utils/chat_template_utils.py``)."""

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(
        x: Any,
        ensure_ascii: bool = False,
        indent: Any = None,
        separators: Any = None,
        sort_keys: bool = False,
    ) -> str:
        # transformers overrides Jinja's tojson, which escapes HTML characters
        return json.dumps(
            x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
        )

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(template)
    except jinja2.exceptions.TemplateError as exc:
        raise DataError(f"the chat template is not valid Jinja: {exc}") from exc


@dataclass(frozen=True)
class ChatFormat:
    """A chat template and the special tokens it renders; :meth:`encode` gives ids and assistant masks."""

    template: str  # Jinja source, as in tokenizer_config.json
    special_tokens: tuple[
        tuple[str, str], ...
    ] = ()  # (name, text) pairs the template may read: bos_token, ...
    end_of_turn: str = "<|eot_id|>"  # the token that closes an assistant turn (decoding stops there)

    def render(self, messages: Sequence[Message], add_generation_prompt: bool = False) -> str:
        """The conversation as text, exactly as transformers' ``apply_chat_template`` renders it."""
        check_conversation(messages)
        try:
            return _compiled(self.template).render(
                messages=[dict(m) for m in messages],
                add_generation_prompt=add_generation_prompt,
                **dict(self.special_tokens),
            )
        except jinja2.exceptions.TemplateError as exc:
            raise DataError(f"the chat template refused the conversation: {exc}") from exc

    def end_of_turn_id(self, tokenizer: Tokenizer) -> int:
        token = tokenizer.token_to_id(self.end_of_turn)
        if token is None:
            raise DataError(
                f"the tokenizer has no {self.end_of_turn!r} token, which ends this template's turns"
            )
        return token

    def encode(
        self, tokenizer: Tokenizer, messages: Sequence[Message], add_generation_prompt: bool = False
    ) -> EncodedChat:
        """Ids of the rendered conversation with its assistant, content and final-reply masks."""
        if add_generation_prompt:
            return self._prompt(tokenizer, messages)
        text = self.render(messages)
        spans = self._assistant_spans(messages, text)
        encoding = tokenizer.encode(text, add_special_tokens=False)
        assistant, content, reply = [], [], []
        for a, b in encoding.offsets:
            assistant.append(any(a < end and b > start for start, _, end in spans))
            content.append(any(a < stop and b > start for start, stop, _ in spans))
            reply.append(bool(spans) and a < spans[-1][1] and b > spans[-1][0])
        return EncodedChat(list(encoding.ids), assistant, content, reply)

    def _assistant_spans(self, messages: Sequence[Message], text: str) -> list[tuple[int, int, int]]:
        """(content start, content end, turn end) character offsets of each assistant message in ``text``."""
        spans = []
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            before = self.render(messages[:i], add_generation_prompt=True)
            if not text.startswith(before):
                raise DataError(
                    f"the chat template renders message {i} differently with the messages after it, so its "
                    "assistant tokens cannot be located"
                )
            body = message["content"].strip()
            start = text.find(body, len(before)) if body else len(before)
            end_token = text.find(self.end_of_turn, start + len(body)) if start >= 0 else -1
            if end_token < 0:
                raise DataError(
                    f"message {i}: the rendered turn has no {self.end_of_turn!r} after its content"
                )
            spans.append((start, start + len(body), end_token + len(self.end_of_turn)))
        return spans

    def _prompt(self, tokenizer: Tokenizer, messages: Sequence[Message]) -> EncodedChat:
        """The prompt ids that training saw before an answer: a prefix of the answered conversation's ids."""
        prompt = self.render(messages, add_generation_prompt=True)
        answered = [*messages, {"role": "assistant", "content": "x"}]
        encoding = tokenizer.encode(self.render(answered), add_special_tokens=False)
        keep = 0
        while keep < len(encoding.ids) and encoding.offsets[keep][1] <= len(prompt):
            keep += 1
        return EncodedChat(list(encoding.ids[:keep]), [False] * keep, [False] * keep, [False] * keep)


def add_chat_tokens(tokenizer: Tokenizer) -> list[str]:
    """Add the chat special tokens the tokenizer lacks (in place); returns the ones added."""
    missing = [t for t in CHAT_TOKENS if tokenizer.token_to_id(t) is None]
    if missing:
        tokenizer.add_special_tokens(missing)
    return missing


def write_chat_template(directory: str | Path) -> None:
    """Put Llama 3's ``chat_template`` (and its special tokens) into a directory's tokenizer_config.json."""
    path = Path(directory) / "tokenizer_config.json"
    if not path.is_file():
        raise DataError(f"{path} does not exist; save the tokenizer first")
    config = json.loads(path.read_text())
    config["chat_template"] = CHAT_TEMPLATE
    config["additional_special_tokens"] = list(CHAT_TOKENS)
    write_text_atomic(path, json.dumps(config, indent=2))


def load_chat_format(path: str | Path) -> ChatFormat:
    """The chat format stored with a model: its directory's tokenizer_config.json, or a GGUF file's.

    A directory without a template (our own pre-trained models) gets Llama 3's, which needs the chat
    tokens (:func:`add_chat_tokens`); encoding says so if they are missing.
    """
    path = Path(path)
    if path.is_file():  # a GGUF file: its cached HF export carries the template over
        from papernotes.llm.model.gguf import cached_directory

        path = cached_directory(path)
    config_path = path / "tokenizer_config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    template = config.get("chat_template")
    if isinstance(template, list):  # several named templates: the default one
        template = next((t["template"] for t in template if t.get("name") == "default"), None)
    if not template:
        return LLAMA3
    if not isinstance(template, str):
        raise CheckpointError(
            f"{config_path}: chat_template must be a Jinja string, got {type(template).__name__}"
        )
    special = {}
    for key in SPECIAL_TOKEN_KEYS:
        value = config.get(key)
        value = value.get("content") if isinstance(value, dict) else value
        if isinstance(value, str):
            special[key] = value
    end = next((t for t in END_OF_TURN_TOKENS if t in template), special.get("eos_token"))
    if end is None:
        raise CheckpointError(f"{config_path}: cannot tell which token ends a turn of its chat template")
    return ChatFormat(template, tuple(sorted(special.items())), end)


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
    tokenizer: Tokenizer,
    messages: Sequence[Message],
    add_generation_prompt: bool = False,
    chat: ChatFormat | None = None,
) -> EncodedChat:
    """Token ids of a conversation in ``chat``'s format (Llama 3's by default) with its assistant masks.

    The assistant mask covers each assistant message's content and the token that ends its turn (the model
    must learn to stop); headers, system and user tokens are context. Raises DataError on a malformed
    conversation or a tokenizer that lacks the template's special tokens.
    """
    chat = chat or LLAMA3
    if chat is LLAMA3:
        missing = [t for t in (BOS, *CHAT_TOKENS) if tokenizer.token_to_id(t) is None]
        if missing:
            raise DataError(f"the tokenizer lacks the chat tokens {missing}; call add_chat_tokens first")
    return chat.encode(tokenizer, messages, add_generation_prompt)


def render_chat(
    messages: Sequence[Message], add_generation_prompt: bool = False, chat: ChatFormat | None = None
) -> str:
    """The conversation as text (what the Jinja template renders)."""
    return (chat or LLAMA3).render(messages, add_generation_prompt)


LLAMA3 = ChatFormat(CHAT_TEMPLATE, (("bos_token", BOS),), EOT)  # our own tokenizer's format
