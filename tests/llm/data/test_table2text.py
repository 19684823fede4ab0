import re

import pytest
import sacrebleu

from papernotes.errors import ConfigError, DataError
from papernotes.llm.data.tasks.table2text import (
    PRESETS,
    SLOTS,
    VALUES,
    Record,
    SlotErrors,
    Table2TextConfig,
    _mentions,
    bleu,
    format_source,
    make_table2text,
    slot_error_rate,
    slot_errors,
)


@pytest.fixture(scope="module")
def default_splits():
    return make_table2text(PRESETS["default"])


@pytest.fixture(scope="module")
def tiny_splits():
    return make_table2text(PRESETS["tiny"])


def _record(**slots: str) -> Record:
    # keyword names cannot hold spaces: customer_rating -> "customer rating"
    named = {key.replace("_", " "): value for key, value in slots.items()}
    return Record(tuple((slot, named[slot]) for slot in SLOTS if slot in named))


def _shape(text: str) -> str:
    """The text with every recognised slot mention replaced by ``<slot>``."""
    for start, end, slot, _ in reversed(_mentions(text)):
        text = f"{text[:start]}<{slot}>{text[end:]}"
    return text


KETTLE = _record(name="The Copper Kettle", eatType="pub", food="French", area="riverside")
KETTLE_TEXT = "The Copper Kettle is a French pub by the riverside."


# --- generation ---------------------------------------------------------------------------


def test_same_config_gives_identical_splits_and_a_new_seed_differs(tiny_splits):
    assert make_table2text(PRESETS["tiny"]) == tiny_splits
    other = make_table2text(Table2TextConfig(train_size=64, validation_size=16, test_size=16, seed=1))
    assert [e.source for e in other["train"]] != [e.source for e in tiny_splits["train"]]


def test_test_split_does_not_depend_on_train_size(tiny_splits):
    bigger = make_table2text(Table2TextConfig(train_size=300, validation_size=16, test_size=16))
    assert bigger["test"] == tiny_splits["test"]
    assert bigger["validation"] == tiny_splits["validation"]


def test_split_sizes_match_the_config(default_splits, tiny_splits):
    assert {k: len(v) for k, v in default_splits.items()} == {"train": 4000, "validation": 200, "test": 200}
    assert {k: len(v) for k, v in tiny_splits.items()} == {"train": 64, "validation": 16, "test": 16}


def test_no_meaning_representation_appears_twice_within_or_across_splits(default_splits):
    sources = [e.source for split in default_splits.values() for e in split]
    assert len(set(sources)) == len(sources)


def test_examples_are_well_formed(default_splits):
    config = PRESETS["default"]
    for split in default_splits.values():
        for example in split:
            assert example.source == format_source(example.record)
            assert example.record.get("name") in VALUES["name"]
            assert config.min_slots <= len(example.record.slots) <= config.max_slots
            assert len(example.references) == config.references_per_example
            assert example.target == example.references[0]
            assert len(set(example.references)) == len(example.references)


def test_every_slot_value_occurs_in_train(default_splits):
    seen = {(slot, value) for e in default_splits["train"] for slot, value in e.record.slots}
    assert seen == {(slot, value) for slot in SLOTS for value in VALUES[slot]}


def test_format_source_writes_e2e_meaning_representations():
    record = _record(name="Blue Heron", eatType="coffee shop", customer_rating="5 out of 5", near="Taco Town")
    expected = "name[Blue Heron], eatType[coffee shop], customer rating[5 out of 5], near[Taco Town]"
    assert format_source(record) == expected
    assert record.get("near") == "Taco Town" and record.get("food") is None


def test_record_requires_name_first_and_known_slots_in_order():
    with pytest.raises(DataError):
        Record((("food", "French"),))
    with pytest.raises(DataError):
        Record((("name", "Blue Heron"), ("food", "French"), ("eatType", "pub")))
    with pytest.raises(DataError):
        Record((("name", "Blue Heron"), ("cuisine", "French")))


def test_bad_config_is_rejected():
    with pytest.raises(ConfigError):
        make_table2text(Table2TextConfig(min_slots=5, max_slots=4))
    with pytest.raises(ConfigError):
        make_table2text(Table2TextConfig(references_per_example=0))


def test_templates_are_varied(default_splits):
    targets = [e.target for e in default_splits["train"]]
    shapes = {_shape(t) for t in targets}
    openings = {" ".join(_shape(t).split()[:2]) for t in targets}
    assert len(shapes) >= 1000  # about 3950 of 4000 on the default config
    assert len(openings) >= 10
    two_sentences = sum(". " in t for t in targets) / len(targets)
    assert 0.2 < two_sentences < 0.9
    assert any(" It " in t for t in targets) and any(" They " in t for t in targets)


def test_subject_and_verb_agree(default_splits):
    texts = " ".join(r for e in default_splits["train"] for r in e.references)
    assert not re.search(r"\b(It (are|have|serve|welcome)|They (is|has|serves|welcomes|does))\b", texts)


# --- slot error rate ----------------------------------------------------------------------


def test_every_reference_expresses_its_record_exactly(default_splits, tiny_splits):
    splits = [default_splits["validation"], default_splits["test"], tiny_splits["train"]]
    for example in (e for split in splits for e in split):
        for reference in example.references:
            assert slot_errors(example.record, reference) == SlotErrors(0, 0, 0, len(example.record.slots)), (
                example.source,
                reference,
            )


def test_faithful_text_has_no_slot_errors():
    assert slot_errors(KETTLE, KETTLE_TEXT) == SlotErrors(missing=0, added=0, wrong=0, total=4)
    assert slot_errors(KETTLE, KETTLE_TEXT.upper()).rate == 0.0


def test_removed_phrase_is_missing():
    errors = slot_errors(KETTLE, "The Copper Kettle is a French pub.")
    assert errors == SlotErrors(missing=1, added=0, wrong=0, total=4)
    assert errors.rate == pytest.approx(0.25)


def test_swapped_value_is_wrong():
    assert slot_errors(KETTLE, KETTLE_TEXT.replace("French", "Italian")) == SlotErrors(0, 0, 1, 4)
    assert slot_errors(KETTLE, KETTLE_TEXT.replace("The Copper Kettle", "Blue Heron")).wrong == 1


def test_extra_slot_phrase_is_added():
    assert slot_errors(KETTLE, KETTLE_TEXT + " It is cheap.") == SlotErrors(0, 1, 0, 4)
    # the right value plus an invented one counts once, as added
    assert slot_errors(KETTLE, KETTLE_TEXT + " It also serves Indian food.") == SlotErrors(0, 1, 0, 4)


def test_negated_family_friendly_is_not_family_friendly():
    record = _record(name="Marigold", familyFriendly="no")
    assert slot_errors(record, "Marigold is not family friendly.").rate == 0
    assert slot_errors(record, "Marigold is a non-family-friendly place.").rate == 0
    assert slot_errors(record, "Marigold does not welcome children.").rate == 0
    assert slot_errors(record, "Marigold is family friendly.").wrong == 1
    welcoming = _record(name="Marigold", familyFriendly="yes")
    assert slot_errors(welcoming, "Marigold welcomes children.").rate == 0


def test_high_price_and_high_rating_are_told_apart():
    record = _record(name="Moonstone", priceRange="high")
    assert slot_errors(record, "Moonstone is an expensive place.").rate == 0
    assert slot_errors(record, "Moonstone has a high customer rating.") == SlotErrors(1, 1, 0, 2)
    rated = _record(name="Moonstone", customer_rating="high")
    assert slot_errors(rated, "Moonstone has a high customer rating.").rate == 0
    assert slot_errors(rated, "Moonstone is in the high price range.") == SlotErrors(1, 1, 0, 2)


def test_prices_do_not_overlap():
    record = _record(name="Moonstone", priceRange="less than £20")
    assert slot_errors(record, "Moonstone has prices of less than £20.").rate == 0
    assert slot_errors(record, "Moonstone has prices of £20-25.").wrong == 1
    assert slot_errors(_record(name="Moonstone", priceRange="high"), "Moonstone is inexpensive.").wrong == 1


def test_near_needs_a_near_context():
    record = _record(name="Moonstone", near="Taco Town")
    assert slot_errors(record, "Moonstone is not far from Taco Town.").rate == 0
    assert slot_errors(record, "Moonstone is near Burger Barn.").wrong == 1
    # a landmark without "near" is read as a second name: near missing, name added
    assert slot_errors(record, "Moonstone and Taco Town are places.") == SlotErrors(1, 1, 0, 2)


def test_slot_errors_sum_and_corpus_rate_pools_counts():
    first, second = SlotErrors(1, 0, 0, 4), SlotErrors(0, 1, 1, 2)
    assert first + second == SlotErrors(1, 1, 1, 6)
    assert SlotErrors().rate == 0.0
    short = _record(name="Moonstone", eatType="pub")
    rate = slot_error_rate([KETTLE, short], [KETTLE_TEXT, "Moonstone is a place."])
    assert rate == pytest.approx(1 / 6)  # pooled, not the mean of 0 and 1/2
    with pytest.raises(DataError):
        slot_error_rate([KETTLE], [])


# --- BLEU ---------------------------------------------------------------------------------


def test_identical_hypothesis_scores_100_and_disjoint_scores_0():
    text = "The Copper Kettle is a French pub by the riverside ."
    assert bleu([text], [[text]]) == pytest.approx(100.0)
    assert bleu(["dogs bark loudly tonight"], [[text]]) == pytest.approx(0.0, abs=1e-6)


def test_bleu_hands_sacrebleu_the_ragged_references_transposed_into_streams(monkeypatch):
    """bleu takes each hypothesis's references; sacrebleu takes one stream per reference position, with
    None where a hypothesis has fewer references than the widest."""
    hypotheses = ["the cat sat on a mat", "a dog ran", "it is a pub near the river"]
    references = [
        ["the cat sat on the mat", "a cat sat on the mat"],
        ["a dog ran away", "the dog ran", "one dog ran off"],
        ["it is a pub by the river"],
    ]
    streams = [
        ["the cat sat on the mat", "a dog ran away", "it is a pub by the river"],
        ["a cat sat on the mat", "the dog ran", None],
        [None, "one dog ran off", None],
    ]
    calls = []
    corpus_bleu = sacrebleu.corpus_bleu

    def spy(hyps, refs, *args, **kwargs):
        calls.append((hyps, refs, args, kwargs))
        return corpus_bleu(hyps, refs, *args, **kwargs)

    monkeypatch.setattr(sacrebleu, "corpus_bleu", spy)
    score = bleu(hypotheses, references)
    assert calls == [(hypotheses, streams, (), {})]  # sacrebleu's defaults, the references transposed
    assert score == corpus_bleu(hypotheses, streams).score
    # each hypothesis is scored against its own references: one of them equal to it, at any position,
    # makes a perfect score; the same references given to the wrong hypotheses do not
    own = [
        [*refs, hyp] if i % 2 else [hyp, *refs] for i, (hyp, refs) in enumerate(zip(hypotheses, references))
    ]
    assert bleu(hypotheses, own) == pytest.approx(100.0)
    assert bleu(hypotheses, own[1:] + own[:1]) < 50


def test_bleu_rejects_mismatched_inputs():
    with pytest.raises(DataError):
        bleu(["a"], [])
    with pytest.raises(DataError):
        bleu(["a"], [[]])
