"""Answering chat prompts in batches, and scoring the answers on verifiable instruction tasks.

Every function takes the model's chat format (``chat``; None means Llama 3's, the format of our own
tokenizer): prompts are rendered with its template and decoding stops at its end-of-turn token
(``<|im_end|>`` for SmolLM2's ChatML, ``<|eot_id|>`` for Llama 3).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tokenizers import Tokenizer

from papernotes.llm.data.chat_format import LLAMA3, ChatFormat, Message, encode_chat
from papernotes.llm.data.tasks.instructions import Instruction, verify
from papernotes.llm.generation.generate import GenerationConfig, generate_batch
from papernotes.llm.model.llama import Llama
from papernotes.llm.model.tokenizer import EOS


@dataclass
class Response:
    text: str
    ids: list[int]  # the generated tokens, end-of-turn excluded
    finished: bool  # ended with the template's end-of-turn token (not cut by max_new_tokens)


def respond(
    model: Llama,
    tokenizer: Tokenizer,
    prompts: Sequence[Sequence[Message]],
    max_new_tokens: int = 48,
    temperature: float = 0.0,
    num_samples: int = 1,
    seed: int = 0,
    batch_size: int = 64,
    chat: ChatFormat | None = None,
) -> list[list[Response]]:
    """``num_samples`` assistant replies per conversation (each ending with a user turn).

    Greedy at temperature 0; otherwise sampled, with one generator per batch seeded from ``seed``.
    """
    chat = chat or LLAMA3
    eot, eos = chat.end_of_turn_id(tokenizer), tokenizer.token_to_id(EOS)
    encoded = [encode_chat(tokenizer, p, add_generation_prompt=True, chat=chat).ids for p in prompts]
    per_batch = max(1, batch_size // num_samples)  # prompts per batch: about batch_size rows
    out: list[Response] = []
    for start in range(0, len(encoded), per_batch):
        config = GenerationConfig(  # seeded by the batch's first row, as when every row was a prompt
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            seed=seed + start * num_samples,
            eos_token_id=eot,
        )
        batch = encoded[start : start + per_batch]
        for ids in generate_batch(model, batch, config, pad_token_id=eot, num_samples=num_samples):
            finished = bool(ids) and ids[-1] == eot
            kept = [t for t in ids if t not in (eot, eos)]
            out.append(Response(tokenizer.decode(kept).strip(), kept, finished))
    return [out[i : i + num_samples] for i in range(0, len(out), num_samples)]


@dataclass
class InstructionScores:
    accuracy: float  # exact match by the task's verifier, over all examples
    unseen_accuracy: float  # over examples whose phrasing training never saw
    seen_accuracy: float  # over the other examples (phrasings training saw)
    per_task: dict[str, float]
    mean_length: float  # response tokens
    samples: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def score_instructions(
    model: Llama,
    tokenizer: Tokenizer,
    examples: Sequence[Instruction],
    max_new_tokens: int = 48,
    samples: int = 3,
    chat: ChatFormat | None = None,
    batch_size: int = 64,
) -> InstructionScores:
    """Greedy answers to every example, checked by the task verifiers."""
    prompts = [[{"role": "user", "content": e.prompt}] for e in examples]
    answers = [
        r[0] for r in respond(model, tokenizer, prompts, max_new_tokens, batch_size=batch_size, chat=chat)
    ]
    correct = [verify(e, a.text) for e, a in zip(examples, answers)]
    by_task: dict[str, list[bool]] = defaultdict(list)
    for e, ok in zip(examples, correct):
        by_task[e.task].append(ok)
    unseen = [ok for e, ok in zip(examples, correct) if e.unseen]
    seen = [ok for e, ok in zip(examples, correct) if not e.unseen]
    shown = []
    for task in by_task:  # a few conversations, one per task first
        i = next(i for i, e in enumerate(examples) if e.task == task)
        shown.append(
            {"task": task, "prompt": examples[i].prompt, "response": answers[i].text, "correct": correct[i]}
        )
    return InstructionScores(
        accuracy=sum(correct) / max(1, len(correct)),
        unseen_accuracy=sum(unseen) / len(unseen) if unseen else float("nan"),
        seen_accuracy=sum(seen) / len(seen) if seen else float("nan"),
        per_task={t: sum(v) / len(v) for t, v in by_task.items()},
        mean_length=sum(len(a.ids) for a in answers) / max(1, len(answers)),
        samples=shown[:samples],
    )
