"""Instruction-following data with verifiable answers, generated procedurally (no download).

Llama 3's post-training (§4) relies on prompts whose answers can be checked: rejection sampling keeps
the best of K samples by a reward, and the paper's code/math data is filtered by execution and answer
checks. This module supplies such prompts at toy scale. Each task has a generator of inputs, a
reference answer, many phrasings of the instruction, and a verifier that scores a free-form response
as correct or not:

========== ===================================================== =======================================
task       example prompt                                        verifier
========== ===================================================== =======================================
arithmetic What is 17 plus 25?                                   the last integer equals a ± b / a × b
sort       Sort in ascending order: 7, 2, 9                      the integers, in order, equal sorted()
reverse    Reverse the word "lemon".                             the first word equals the reversal
convert    Convert 3 km to metres.                               the last integer equals the conversion
extract    name=Ada; city=Oslo; age=31. What is the city?        the first word equals the value
to_json    Turn name=Ada; age=31 into JSON.                      json.loads(...) equals the record
table2text name[The Eagle], eatType[pub] -> one sentence         slot error rate 0 (the PEFT task's SER)
========== ===================================================== =======================================

Splits are deterministic (a seed per split). For each task the last ``unseen_phrasings`` phrasings
are held out of train and validation: the test split draws from every phrasing and marks the held-out
ones, so the accuracy on unseen phrasings measures instruction following rather than memorised wording.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from papernotes.errors import ConfigError, DataError
from papernotes.llm.data.tasks import table2text

WORDS = (
    "apple", "lemon", "river", "garden", "planet", "window", "silver", "forest", "candle", "market",
    "pencil", "rocket", "yellow", "harbor", "violet", "dragon", "button", "mirror", "summer", "castle",
)  # fmt: skip
PEOPLE = ("Ada", "Ben", "Cleo", "Dan", "Eva", "Finn", "Gia", "Hugo", "Iris", "Jon", "Kim", "Leo")
CITIES = ("Oslo", "Lima", "Rome", "Cairo", "Delhi", "Quito", "Paris", "Seoul", "Accra", "Perth")
UNITS = {  # (from, to, factor, nouns for phrasing)
    "km-m": ("km", "metres", 1000),
    "m-cm": ("m", "centimetres", 100),
    "kg-g": ("kg", "grams", 1000),
    "h-min": ("hours", "minutes", 60),
    "min-s": ("minutes", "seconds", 60),
}

PHRASINGS: dict[str, tuple[str, ...]] = {
    "arithmetic": (
        "What is {a} {op} {b}?",
        "Compute {a} {op} {b}.",
        "Calculate {a} {op} {b}.",
        "Tell me the result of {a} {op} {b}.",
        "Work out {a} {op} {b}.",
        "{a} {op} {b} equals what?",
        "Find the value of {a} {op} {b}.",
        "Please evaluate {a} {op} {b}.",
    ),
    "sort": (
        "Sort in ascending order: {items}",
        "Put these numbers in increasing order: {items}",
        "Order from smallest to largest: {items}",
        "Arrange ascending: {items}",
        "Sort the list {items} from low to high.",
        "Give these in ascending order: {items}",
        "List {items} sorted from smallest to largest.",
        "Rearrange into increasing order: {items}",
    ),
    "reverse": (
        'Reverse the word "{word}".',
        'Spell "{word}" backwards.',
        'Write "{word}" in reverse.',
        'What is "{word}" reversed?',
        'Give the letters of "{word}" in reverse order.',
        'Flip the word "{word}" back to front.',
        'Read "{word}" from right to left.',
        'Turn "{word}" around letter by letter.',
    ),
    "convert": (
        "Convert {x} {unit} to {target}.",
        "How many {target} are in {x} {unit}?",
        "Express {x} {unit} in {target}.",
        "{x} {unit} is how many {target}?",
        "Change {x} {unit} into {target}.",
        "Give {x} {unit} as {target}.",
        "What is {x} {unit} in {target}?",
        "Turn {x} {unit} into {target}.",
    ),
    "extract": (
        "{record}. What is the {field}?",
        "Record: {record}. Give the {field}.",
        "From {record}, extract the {field}.",
        "{record}. Which {field} is listed?",
        "Read {record} and report the {field}.",
        "Here is a record: {record}. Its {field}?",
        "In {record}, what value does {field} have?",
        "Look up the {field} in {record}.",
    ),
    "to_json": (
        "Turn {record} into JSON.",
        "Convert the record {record} to a JSON object.",
        "Write {record} as JSON.",
        "Express {record} in JSON.",
        "Give the JSON for {record}.",
        "Format {record} as a JSON object.",
        "Encode {record} as JSON.",
        "Rewrite {record} in JSON format.",
    ),
    "table2text": (
        "Describe this restaurant in one sentence: {mr}",
        "Write a sentence about {mr}",
        "Turn this record into a description: {mr}",
        "Describe {mr}",
        "Write one sentence for the restaurant {mr}",
        "Say in words: {mr}",
        "Verbalise the record {mr}",
        "Give a short description of {mr}",
    ),
}
TASKS = tuple(PHRASINGS)
OPERATORS = {"plus": lambda a, b: a + b, "minus": lambda a, b: a - b, "times": lambda a, b: a * b}


@dataclass(frozen=True)
class Instruction:
    task: str
    prompt: str
    answer: str  # a reference response (the SFT target)
    phrasing: int  # index into PHRASINGS[task]
    unseen: bool = False  # the phrasing is held out of train and validation
    data: Any = field(default=None, compare=False)  # what the verifier checks against


@dataclass
class InstructionConfig:
    train_size: int = 4000
    validation_size: int = 200
    test_size: int = 350  # 50 per task
    unseen_phrasings: int = 2  # per task, held out of train and validation
    tasks: tuple[str, ...] = TASKS
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = [t for t in self.tasks if t not in PHRASINGS]
        if unknown:
            raise ConfigError(f"unknown tasks {unknown}; expected some of {TASKS}")
        if not 0 <= self.unseen_phrasings < min(len(PHRASINGS[t]) for t in self.tasks):
            raise ConfigError(
                f"unseen_phrasings must leave at least one phrasing, got {self.unseen_phrasings}"
            )


PRESETS: dict[str, InstructionConfig] = {
    "default": InstructionConfig(),
    "tiny": InstructionConfig(train_size=70, validation_size=14, test_size=28),
}


def _record_text(pairs: Sequence[tuple[str, Any]]) -> str:
    return "; ".join(f"{k}={v}" for k, v in pairs)


def _make(task: str, rng: random.Random) -> tuple[dict[str, Any], str, Any]:
    """Template fields, the reference answer and the verifier's data for one example of ``task``."""
    if task == "arithmetic":
        op = rng.choice(tuple(OPERATORS))
        a, b = (
            (rng.randint(2, 12), rng.randint(2, 12))
            if op == "times"
            else (rng.randint(0, 99), rng.randint(0, 99))
        )
        value = OPERATORS[op](a, b)
        return {"a": a, "b": b, "op": op}, str(value), value
    if task == "sort":
        items = rng.sample(range(100), rng.randint(3, 6))
        return {"items": ", ".join(map(str, items))}, ", ".join(map(str, sorted(items))), sorted(items)
    if task == "reverse":
        word = rng.choice(WORDS)
        return {"word": word}, word[::-1], word[::-1]
    if task == "convert":
        unit, target, factor = UNITS[rng.choice(tuple(UNITS))]
        x = rng.randint(1, 20)
        return {"x": x, "unit": unit, "target": target}, str(x * factor), x * factor
    if task in ("extract", "to_json"):
        pairs = [("name", rng.choice(PEOPLE)), ("city", rng.choice(CITIES)), ("age", rng.randint(18, 90))]
        pairs = rng.sample(pairs, rng.randint(2, 3))
        if task == "extract":
            key, value = rng.choice(pairs)
            return {"record": _record_text(pairs), "field": key}, str(value), str(value)
        record = dict(pairs)
        return {"record": _record_text(pairs)}, json.dumps(record), record
    if task == "table2text":
        example = table2text.sample_example(rng)
        return {"mr": example.source}, example.target, example.record
    raise ConfigError(f"unknown task {task!r}")


def _split(config: InstructionConfig, size: int, seed: int, held_out: bool) -> list[Instruction]:
    rng = random.Random(seed)
    examples = []
    for i in range(size):
        task = config.tasks[i % len(config.tasks)]
        phrasings = PHRASINGS[task]
        seen = len(phrasings) - config.unseen_phrasings
        phrasing = rng.randrange(len(phrasings) if held_out else seen)
        fields, answer, data = _make(task, rng)
        prompt = phrasings[phrasing].format(**fields)
        examples.append(Instruction(task, prompt, answer, phrasing, phrasing >= seen, data))
    return examples


def make_instructions(config: InstructionConfig = InstructionConfig()) -> dict[str, list[Instruction]]:  # noqa: B008
    """{"train", "validation", "test"}; tasks interleave in each split, the test draws every phrasing."""
    return {
        "train": _split(config, config.train_size, config.seed * 3 + 1, held_out=False),
        "validation": _split(config, config.validation_size, config.seed * 3 + 2, held_out=False),
        "test": _split(config, config.test_size, config.seed * 3 + 3, held_out=True),
    }


def _integers(text: str) -> list[int]:
    return [int(v) for v in re.findall(r"-?\d+", text)]


def _first_word(text: str) -> str:
    words = re.findall(r"[A-Za-z]+", text)
    return words[0] if words else ""


VERIFIERS: dict[str, Callable[[Any, str], bool]] = {
    "arithmetic": lambda value, text: bool(_integers(text)) and _integers(text)[-1] == value,
    "sort": lambda items, text: _integers(text) == items,
    "reverse": lambda word, text: _first_word(text).lower() == word,
    "convert": lambda value, text: bool(_integers(text)) and _integers(text)[-1] == value,
    "extract": lambda value, text: text.strip().strip(".").strip().lower() == value.lower(),
    "to_json": lambda record, text: _json_equals(text, record),
    "table2text": lambda record, text: bool(text.strip()) and table2text.slot_errors(record, text).rate == 0,
}


def _json_equals(text: str, record: dict[str, Any]) -> bool:
    try:
        return json.loads(text.strip()) == record
    except (json.JSONDecodeError, ValueError):
        return False


def verify(example: Instruction, response: str) -> bool:
    """Whether ``response`` answers ``example`` correctly (the task's verifier; never raises)."""
    if example.task not in VERIFIERS:
        raise DataError(f"no verifier for task {example.task!r}")
    return bool(VERIFIERS[example.task](example.data, response))


def conversation(example: Instruction, response: str | None = None) -> list[dict[str, str]]:
    """The chat messages of an example: the user prompt, and the response (the reference by default)."""
    return [
        {"role": "user", "content": example.prompt},
        {"role": "assistant", "content": example.answer if response is None else response},
    ]
