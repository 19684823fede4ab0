"""Embedded chat prompts of three kinds, and held-out English text, all built from CPython's own sources.

Decoding speed depends on what is asked: a reply that restates its input (an input-grounded request) is
what prompt lookup and drafting exploit, an open request is not. So every decoding number is reported per
kind (issue 17):

- **input-grounded**: add a docstring to a given function (short functions of CPython's standard library,
  their own docstrings removed), or restate a given paragraph of Python's help topics;
- **open**: write a function, explain a concept (fixed lists);
- **short Q&A**: one-line questions (a fixed list).

**Held-out English** (:func:`english_texts`): the help topics that ``pydoc`` ships as text
(``pydoc_data.topics``, about 460 K characters on Python 3.11), split by ``crc32(topic) % 20`` as the code
corpus is, so every machine with Python has the same text and the same split. It measures the perplexity
of a base model before and after fine-tuning (forgetting).
"""

from __future__ import annotations

import ast
import random
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

from papernotes.errors import ConfigError
from papernotes.llm.data.corpus import stdlib_root

KINDS = ("input-grounded", "open", "short-qa")
# modules whose small, self-contained functions make good "add a docstring" prompts
FUNCTION_MODULES = ("textwrap", "shlex", "fnmatch", "colorsys", "bisect", "heapq", "calendar", "statistics")
OPEN_REQUESTS = (
    "Write a Python function that checks whether a string is a palindrome.",
    "Write a Python function that returns the n-th Fibonacci number.",
    "Explain what a hash table is and when to use one.",
    "Explain the difference between a list and a tuple in Python.",
    "Write a short story about a robot who learns to paint.",
    "Explain how a binary search works.",
    "Write a Python function that counts the words in a text file.",
    "Explain what recursion is, with an example.",
)
SHORT_QUESTIONS = (
    "What is the capital of France?",
    "How many days are there in a leap year?",
    "What is the boiling point of water in Celsius?",
    "Who wrote Romeo and Juliet?",
    "What is the largest planet in the solar system?",
    "How many legs does a spider have?",
    "What colour do you get by mixing blue and yellow?",
    "What is the square root of 81?",
)
VALIDATION_BUCKETS = 20  # 1 topic in 20 is held out, as 1 file in 20 of the code corpus


@dataclass(frozen=True)
class Prompt:
    kind: str  # one of KINDS
    text: str  # the user message


def _functions(limit_lines: tuple[int, int] = (4, 16)) -> list[str]:
    """Source of short top-level functions of FUNCTION_MODULES, docstrings removed, in a fixed order."""
    out = []
    for module in FUNCTION_MODULES:
        path = stdlib_root() / f"{module}.py"
        if not path.is_file():
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            if not isinstance(node, ast.FunctionDef) or node.name.startswith("_"):
                continue
            body = node.body
            if ast.get_docstring(node) is not None:
                body = body[1:]  # drop the docstring: the prompt asks for one
            if not body:
                continue
            node.body = body
            source = ast.unparse(node)
            if limit_lines[0] <= source.count("\n") + 1 <= limit_lines[1]:
                out.append(source)
    return out


def english_texts(split: str = "validation") -> list[str]:
    """Python's help topics (``pydoc_data.topics``) in the ``split`` ("train" or "validation")."""
    if split not in ("train", "validation"):
        raise ConfigError(f"split must be 'train' or 'validation', got {split!r}")
    from pydoc_data.topics import topics

    held_out = split == "validation"
    return [
        topics[name].strip()
        for name in sorted(topics)
        if (zlib.crc32(name.encode()) % VALIDATION_BUCKETS == 0) == held_out
    ]


def _paragraphs(min_chars: int = 200, max_chars: int = 600) -> list[str]:
    """Prose paragraphs of the training help topics (no code blocks), for restate-this-text prompts."""
    out = []
    for text in english_texts("train"):
        for block in text.split("\n\n"):
            block = " ".join(line.strip() for line in block.splitlines())
            prose = not block.startswith((">>>", "*", "-")) and "::" not in block
            if prose and min_chars <= len(block) <= max_chars:
                out.append(block)
    return out


def chat_prompts(kind: str, count: int, seed: int = 0) -> list[Prompt]:
    """``count`` prompts of ``kind``, the same for a seed on every machine with the same Python."""
    if kind not in KINDS:
        raise ConfigError(f"prompt kind must be one of {', '.join(KINDS)}, got {kind!r}")
    rng = random.Random(f"{kind}-{seed}")
    if kind == "input-grounded":  # alternate the two tasks, each in a seeded order
        functions = [f"Add a docstring to this Python function:\n\n```python\n{f}\n```" for f in _functions()]
        paragraphs = [
            f"Rewrite this paragraph in plain words, keeping its meaning:\n\n{p}" for p in _paragraphs()
        ]
        rng.shuffle(functions)
        rng.shuffle(paragraphs)
        pool = [p for pair in zip(functions, paragraphs) for p in pair]
    else:
        pool = list(OPEN_REQUESTS if kind == "open" else SHORT_QUESTIONS)
        rng.shuffle(pool)
    if count > len(pool):
        raise ConfigError(f"only {len(pool)} {kind} prompts are embedded; asked for {count}")
    return [Prompt(kind, text) for text in pool[:count]]


def distillation_prompts(count: int, exclude: Sequence[str] = (), seed: int = 0) -> list[str]:
    """``count`` user messages to collect the target's own replies on, none of them in ``exclude``.

    Half are input-grounded requests (the kind drafters gain most on), half the embedded instruction
    tasks' prompts (short, varied requests), interleaved; the benchmark's prompts are excluded so that
    no drafter is timed on a prompt it was trained on.
    """
    from papernotes.llm.data.tasks.instructions import InstructionConfig, make_instructions

    skip = set(exclude)
    grounded = [p.text for p in chat_prompts("input-grounded", len(_functions()) * 2, seed=seed + 1)]
    tasks = make_instructions(InstructionConfig(train_size=count, validation_size=0, test_size=0, seed=seed))
    asked = [e.prompt for e in tasks["train"]]
    pool = [p for pair in zip(grounded, asked) for p in pair if p not in skip]
    pool += [p for p in asked[len(grounded) :] if p not in skip]
    if count > len(pool):
        raise ConfigError(f"only {len(pool)} distillation prompts are embedded; asked for {count}")
    return pool[:count]
