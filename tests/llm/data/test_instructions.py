"""Instruction tasks: deterministic splits, held-out phrasings, and verifiers that accept and reject."""

import pytest

from papernotes.errors import ConfigError
from papernotes.llm.data.tasks.instructions import (
    PHRASINGS,
    PRESETS,
    TASKS,
    InstructionConfig,
    conversation,
    make_instructions,
    verify,
)

SPLITS = make_instructions(PRESETS["default"])


def test_splits_are_deterministic_and_hold_phrasings_out_of_training():
    assert make_instructions(PRESETS["default"])["test"] == SPLITS["test"]
    assert make_instructions(InstructionConfig(seed=1))["test"] != SPLITS["test"]
    for task in TASKS:
        unseen = set(range(len(PHRASINGS[task]) - 2, len(PHRASINGS[task])))
        train = {e.phrasing for e in SPLITS["train"] + SPLITS["validation"] if e.task == task}
        test = {e.phrasing for e in SPLITS["test"] if e.task == task}
        assert not train & unseen and test & unseen and len(train) == len(PHRASINGS[task]) - 2
    assert all(e.unseen == (e.phrasing >= len(PHRASINGS[e.task]) - 2) for e in SPLITS["test"])
    assert {e.task for e in SPLITS["test"]} == set(TASKS)


def test_every_reference_answer_verifies():
    assert all(verify(e, e.answer) for split in SPLITS.values() for e in split)


@pytest.mark.parametrize("task", TASKS)
def test_verifiers_reject_wrong_answers(task):
    example = next(e for e in SPLITS["test"] if e.task == task)
    wrong = {
        "arithmetic": lambda a: str(int(a) + 1),
        "sort": lambda a: ", ".join(reversed(a.split(", "))),
        "reverse": lambda a: a[::-1],
        "convert": lambda a: a + "0",
        "extract": lambda a: "unknown",
        "to_json": lambda a: a.rstrip("}"),
        "table2text": lambda a: a.split(" is ")[0] + ".",
    }[task](example.answer)
    assert not verify(example, wrong) and not verify(example, "")
    # free-form but correct answers pass where the task allows it
    if task in ("arithmetic", "convert"):
        assert verify(example, f"The answer is {example.answer}.")


def test_conversation_and_config_errors():
    example = SPLITS["train"][0]
    assert conversation(example) == [
        {"role": "user", "content": example.prompt},
        {"role": "assistant", "content": example.answer},
    ]
    with pytest.raises(ConfigError, match="unknown tasks"):
        InstructionConfig(tasks=("poetry",))
