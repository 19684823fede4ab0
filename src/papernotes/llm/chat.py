"""A chat session: the conversation kept in the Llama 3 template, replies streamed as they decode.

``ChatSession.reply(text)`` appends the user turn, fits the conversation into the model's context
(dropping the oldest turns first, then the start of an over-long message, and saying so in
``notices``), decodes the assistant turn until ``<|eot_id|>``, and yields the text as it grows.

With a lossless accelerator (a draft model, Medusa heads or MTP modules;
:mod:`papernotes.llm.generation.decoders`) the reply is decoded in chunks of ``chunk`` tokens by that
method, each chunk continuing from the whole context, so greedy replies are token for token those of plain
decoding and sampled ones follow the same distribution; plain decoding streams token by token.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from tokenizers import Tokenizer

from papernotes.llm.data.chat_format import LLAMA3, ChatFormat, Message, encode_chat
from papernotes.llm.generation.generate import DecodeStats, GenerationConfig, stream
from papernotes.llm.model.llama import Llama

Decoder = Callable[[torch.Tensor, GenerationConfig], tuple[torch.Tensor, DecodeStats]]


@dataclass
class ChatStats:
    turns: int = 0
    tokens: int = 0  # assistant tokens decoded
    seconds: float = 0.0  # decoding wall time
    target_calls: int = 0
    truncations: int = 0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


@dataclass
class ChatSession:
    model: Llama
    tokenizer: Tokenizer
    config: GenerationConfig  # max_new_tokens, temperature, ...; eos is set to the template's end of turn
    system: str | None = None
    decoder: Decoder | None = None  # a lossless accelerated decoder; None = plain streaming
    method: str = "plain"
    chunk: int = 16  # tokens per accelerated call
    messages: list[Message] = field(default_factory=list)
    stats: ChatStats = field(default_factory=ChatStats)
    notices: list[str] = field(default_factory=list)  # what the last reply had to cut, for the user
    chat: ChatFormat = LLAMA3  # the model's chat template (its tokenizer_config.json's, or Llama 3's)

    def __post_init__(self) -> None:
        self.config.eos_token_id = self.chat.end_of_turn_id(self.tokenizer)
        self.reset()

    def _encode(self) -> list[int]:
        return encode_chat(self.tokenizer, self.messages, add_generation_prompt=True, chat=self.chat).ids

    def reset(self) -> None:
        self.messages = [{"role": "system", "content": self.system}] if self.system else []

    @property
    def context(self) -> int:
        return self.model.config.max_position_embeddings

    def _prompt(self) -> tuple[list[int], int]:
        """Prompt ids that leave room for the reply, and the reply budget; cuts old turns as needed."""
        self.notices = []
        budget = min(self.config.max_new_tokens, self.context // 2)
        ids = self._encode()
        first = 1 if self.messages and self.messages[0]["role"] == "system" else 0
        while len(ids) + budget > self.context and len(self.messages) - first > 1:
            del self.messages[first : first + 2]  # the oldest user turn and its answer
            self.notices.append("dropped the oldest turn to fit the context")
            ids = self._encode()
        if len(ids) + budget > self.context:  # one message alone is too long: keep its end
            last = self.messages[-1]
            content = self.tokenizer.encode(last["content"]).ids
            excess = len(ids) + budget - self.context
            last["content"] = self.tokenizer.decode(content[excess:])
            self.notices.append(f"cut the first {excess} tokens of the message to fit the context")
            ids = self._encode()[-(self.context - budget) :]
        if self.notices:
            self.stats.truncations += 1
        return ids, budget

    def reply(self, text: str) -> Iterator[str]:
        """Stream the assistant's answer to ``text`` (the pieces concatenate to the full reply)."""
        self.messages.append({"role": "user", "content": text})
        ids, budget = self._prompt()
        eot = self.config.eos_token_id
        new: list[int] = []
        shown = ""
        start = time.perf_counter()
        for token in self._tokens(ids, budget):
            if token == eot:
                break
            new.append(token)
            decoded = self.tokenizer.decode(new)
            if not decoded.endswith("\ufffd"):  # wait for the rest of a multi-byte character
                yield decoded[len(shown) :]
                shown = decoded
        self.stats.seconds += time.perf_counter() - start
        self.stats.tokens += len(new)
        self.stats.turns += 1
        answer = self.tokenizer.decode(new)
        if answer != shown:
            yield answer[len(shown) :]
        self.messages.append({"role": "assistant", "content": answer.strip()})

    def _tokens(self, ids: list[int], budget: int) -> Iterator[int]:
        config = GenerationConfig(**{**self.config.__dict__, "max_new_tokens": budget})
        if self.decoder is None:
            stats = DecodeStats()
            try:
                yield from stream(self.model, torch.tensor([ids]), config, stats)
            finally:  # the reply stops reading at the end of turn, before the stream is exhausted
                self.stats.target_calls += stats.target_calls
            return
        produced = 0
        while produced < budget:
            step = GenerationConfig(
                **{**config.__dict__, "max_new_tokens": min(self.chunk, budget - produced)}
            )
            step.seed = config.seed + produced
            out, stats = self.decoder(torch.tensor([ids]), step)
            self.stats.target_calls += stats.target_calls
            chunk = out[0].tolist()
            yield from chunk
            if not chunk or chunk[-1] == config.eos_token_id:
                return
            ids, produced = ids + chunk, produced + len(chunk)
