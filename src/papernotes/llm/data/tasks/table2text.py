"""A procedurally generated restaurant table-to-text task in the style of E2E NLG.

The E2E NLG Challenge (Novikova et al. 2017, arXiv:1706.09254) maps a meaning representation
(MR) of up to eight slots, ``name[The Eagle], eatType[pub], food[French]``, to a short restaurant
description. This imitates it without a download: records draw slots and values from E2E-like
vocabularies (invented names); references are composed from per-slot phrase lists (adjectives,
prepositional and ``with``-phrases, predicates) placed into one of eight sentence openings, with
an optional "It/They ..." second sentence. The slot matcher knows every surface form used, so
references are exactly faithful.

Metrics: BLEU (Papineni et al. 2002) via ``sacrebleu.corpus_bleu`` with multiple references,
and the slot error rate of Dušek et al. 2020 ("Evaluating the state-of-the-art of End-to-End
Natural Language Generation", arXiv:1901.07931), pooled over a corpus::

    SER = (missing + added + wrong) / number of slots in the input MR

Each slot counts at most one error: *missing* when no value of it is expressed, *wrong* when
only other values are, *added* when a slot outside the MR is expressed or an extra value
appears beside the right one. Tests hold every generated reference to zero slot errors, and check
that ``bleu`` hands sacrebleu each hypothesis's references as transposed, padded reference streams.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import astuple, dataclass

import sacrebleu

from papernotes.errors import ConfigError, DataError

SLOTS: tuple[str, ...] = (
    "name", "eatType", "food", "priceRange", "area", "customer rating", "familyFriendly", "near",
)  # fmt: skip

NAMES = (
    "The Copper Kettle", "Blue Heron", "The Silver Fern", "Juniper House", "The Lantern Room",
    "Saffron Gate", "The Old Mill", "Maple Street Kitchen", "The Wandering Goat", "Olive Grove",
    "The Brass Anchor", "Little Fig", "The Crooked Spoon", "Amber Leaf", "The Red Lion Inn",
    "Cobalt Bay", "The Velvet Plum", "Harbour Lights", "The Gilded Pear", "Willow Tree",
    "The Salt Cellar", "Ember & Oak", "The Painted Door", "Moonstone", "The Green Parrot",
    "Thistle Lane", "The Tin Drum", "Marigold", "The Quiet Owl", "Cinnamon Club",
)  # fmt: skip
# Landmarks for ``near``: disjoint from NAMES so a name's role is never ambiguous.
NEAR_NAMES = (
    "Burger Barn", "Kingsway Cinema", "The Rose Theatre", "Café Lumière", "Noodle Express",
    "Pizza Corner", "Granary Square", "The Clock Tower", "Sunrise Bakery", "Hollow Oak Park",
    "Market Hall", "Westgate Bridge", "Orchard Mall", "Taco Town", "The Corn Exchange",
)  # fmt: skip

VALUES: dict[str, tuple[str, ...]] = {
    "name": NAMES,
    "eatType": ("coffee shop", "pub", "restaurant"),
    "food": ("English", "French", "Italian", "Japanese", "Chinese", "Indian", "Fast food"),
    "priceRange": ("cheap", "moderate", "high", "less than £20", "£20-25", "more than £30"),
    "area": ("city centre", "riverside"),
    "customer rating": ("low", "average", "high", "1 out of 5", "3 out of 5", "5 out of 5"),
    "familyFriendly": ("yes", "no"),
    "near": NEAR_NAMES,
}

# Detection patterns (regexes, case-insensitive, matched as whole words): the surface forms
# the realiser below uses, reduced to the part that names the value. Overlaps are resolved
# by longest match, so "not family friendly" beats "family friendly" and "inexpensive"
# beats "expensive". Price "high" and rating "high" are told apart by their nouns.
SURFACE_FORMS: dict[str, dict[str, tuple[str, ...]]] = {
    "eatType": {"coffee shop": ("coffee shop",), "pub": ("pub",), "restaurant": ("restaurant",)},
    "food": {v: (re.escape(v),) for v in VALUES["food"]},
    "priceRange": {
        "cheap": ("cheap", "inexpensive", "low-priced", "low prices?", "low price range"),
        "moderate": ("moderate(?:ly)?", "mid-priced"),
        "high": ("expensive", "high-priced", "high prices?", "high price range"),
        "less than £20": ("less than £20", "under £20"),
        "£20-25": ("£20-25",),
        "more than £30": ("more than £30", "over £30"),
    },
    "area": {"city centre": ("city centre", "centre of the city"),
             "riverside": ("riverside", "by the river")},
    "customer rating": {
        "low": ("low (?:customer )?ratings?", "poorly rated", "low-rated"),
        "average": ("average (?:customer )?ratings?", "averagely rated"),
        "high": ("high (?:customer )?ratings?", "highly rated", "top-rated"),
        **{v: (v,) for v in ("1 out of 5", "3 out of 5", "5 out of 5")},
    },
    "familyFriendly": {
        "yes": ("(?:family|kid|child)[ -]friendly", "welcomes? children", "suitable for families",
                "children are welcome"),
        "no": ("not (?:family|kid|child)[ -]friendly", "non-family-friendly", "adults-only",
               "not welcome children", "not suitable for families", "children are not welcome"),
    },
}  # fmt: skip
# A name right after one of these is the ``near`` slot; anywhere else it is the ``name``.
NEAR_CONTEXT = ("near", "close to", "next to", "not far from")

# --- realisation phrases. {be}/{have}/{s}/{es} mark subject agreement (It is / They are).
_GENERIC_HEADS = ("venue", "place", "eatery", "spot")  # used when eatType is absent
_AREA_PP = {
    "city centre": ("in the city centre", "in the centre of the city", "in the city centre area"),
    "riverside": ("by the riverside", "in the riverside area", "on the riverside", "by the river"),
}
_PRICE_ADJ = {"cheap": ("cheap", "low-priced", "inexpensive"), "high": ("expensive", "high-priced"),
              "moderate": ("moderately priced", "mid-priced")}  # fmt: skip
_PRICE_NP = {
    "cheap": ("low prices", "a cheap price range", "a low price range"),
    "moderate": ("moderate prices", "a moderate price range"),
    "high": ("high prices", "a high price range"),
    "less than £20": ("prices of less than £20", "prices under £20", "a price range of less than £20"),
    "£20-25": ("prices of £20-25", "a price range of £20-25", "a £20-25 price range"),
    "more than £30": ("prices of more than £30", "prices over £30", "a price range of more than £30"),
}
_RATING_ADJ = {"high": ("highly rated", "top-rated"), "average": ("averagely rated",),
               "low": ("poorly rated", "low-rated")}  # fmt: skip
_FAMILY_ADJ = {"yes": ("family friendly", "kid friendly", "family-friendly", "child friendly"),
               "no": ("non-family-friendly", "adults-only")}  # fmt: skip
_FAMILY_PP = {"yes": ("where children are welcome", "suitable for families"),
              "no": ("where children are not welcome",)}  # fmt: skip
_FAMILY_TRAITS = ("family friendly", "kid friendly", "child friendly", "suitable for families")
_FAMILY_PRED = {
    "yes": tuple(f"{{be}} {trait}" for trait in _FAMILY_TRAITS) + ("welcome{s} children",),
    "no": tuple(f"{{be}} not {trait}" for trait in _FAMILY_TRAITS) + ("do{es} not welcome children",),
}


@dataclass(frozen=True)
class Record:
    """One MR: ``(slot, value)`` pairs in :data:`SLOTS` order, always with ``name``."""

    slots: tuple[tuple[str, str], ...]

    def __post_init__(self) -> None:
        names = [slot for slot, _ in self.slots]
        known = all(slot in SLOTS for slot in names)
        if not known or names[:1] != ["name"] or names != sorted(set(names), key=SLOTS.index):
            raise DataError(f"record slots must start with 'name' and follow SLOTS order, got {names}")

    def get(self, slot: str) -> str | None:
        """The slot's value, or None when the record omits it."""
        return dict(self.slots).get(slot)


@dataclass(frozen=True)
class Example:
    """A record, its MR string, the training target and all references (target first)."""

    record: Record
    source: str
    target: str
    references: tuple[str, ...]


@dataclass
class Table2TextConfig:
    """Split sizes and record shape; a seed fixes every split."""

    train_size: int = 4000  # examples (distinct MRs) in train
    validation_size: int = 200  # examples in validation
    test_size: int = 200  # examples in test
    references_per_example: int = 3  # distinct realisations per MR; the first is the target
    min_slots: int = 3  # slots per record, name included
    max_slots: int = 8  # at most len(SLOTS)
    seed: int = 0  # seeds one random.Random per split


PRESETS: dict[str, Table2TextConfig] = {
    "default": Table2TextConfig(),
    "tiny": Table2TextConfig(train_size=64, validation_size=16, test_size=16),
}


def format_source(record: Record) -> str:
    """The MR as E2E writes it: ``name[The Eagle], eatType[pub], food[French]``."""
    return ", ".join(f"{slot}[{value}]" for slot, value in record.slots)


# --- generation --------------------------------------------------------------------------


def _sample_record(config: Table2TextConfig, rng: random.Random) -> Record:
    count = rng.randint(config.min_slots, config.max_slots)
    chosen = {"name", *rng.sample(SLOTS[1:], count - 1)}
    return Record(tuple((slot, rng.choice(VALUES[slot])) for slot in SLOTS if slot in chosen))


def _article(phrase: str) -> str:
    return ("an " if phrase[0].lower() in "aeiou" else "a ") + phrase


def _join(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _agree(predicate: str, plural: bool) -> str:
    if plural:
        return predicate.format(be="are", have="have", s="", es="")
    return predicate.format(be="is", have="has", s="s", es="es")


def _food_np(value: str, rng: random.Random) -> str:
    if value == "Fast food":
        return "fast food"
    return f"{value} {rng.choice(('food', 'cuisine', 'dishes'))}"


def _adjective(slot: str, value: str, rng: random.Random) -> str | None:
    """A pre-noun modifier for the value, or None when the value has none (numeric prices...)."""
    if slot == "food":
        return "fast food" if value == "Fast food" else value
    table = {"priceRange": _PRICE_ADJ, "customer rating": _RATING_ADJ, "familyFriendly": _FAMILY_ADJ}
    options = table.get(slot, {}).get(value)
    return rng.choice(options) if options else None


def _with_np(slot: str, value: str, rng: random.Random) -> str | None:
    """The object of a ``with``/``has`` phrase: prices and ratings only."""
    if slot == "priceRange":
        return rng.choice(_PRICE_NP[value])
    if slot != "customer rating":
        return None
    if value[0].isdigit():
        return rng.choice(
            (f"a customer rating of {value}", f"a rating of {value}", f"a {value} customer rating")
        )
    noun = rng.choice(("customer rating", "rating", "customer ratings"))
    return f"{value} {noun}" if noun.endswith("s") else _article(f"{value} {noun}")


def _prep_phrase(slot: str, value: str, rng: random.Random) -> str | None:
    """A post-noun phrase without agreement: location, nearby landmark, food, children."""
    if slot == "near":
        return f"{rng.choice(NEAR_CONTEXT)} {value}"
    if slot == "area":
        return rng.choice(_AREA_PP[value])
    if slot == "food":
        return f"{rng.choice(('serving', 'offering'))} {_food_np(value, rng)}"
    if slot == "familyFriendly":
        return rng.choice(_FAMILY_PP[value])
    return None


def _predicate(slot: str, value: str, rng: random.Random) -> str:
    """A verb phrase with agreement markers; every non-name slot has one."""
    if slot in ("near", "area"):
        return f"{rng.choice(_LOCATION_VERBS)} {_prep_phrase(slot, value, rng)}"
    if slot == "food":
        verb = rng.choice(("serve{s}", "offer{s}", "provide{s}", "specialise{s} in"))
        return f"{verb} {_food_np(value, rng)}"
    if slot == "familyFriendly":
        return rng.choice(_FAMILY_PRED[value])
    if slot == "eatType":
        return "{be} " + _article(value)
    options = ["{have} " + _with_np(slot, value, rng)]
    adjective = _adjective(slot, value, rng)
    if adjective:
        options.append("{be} " + adjective)
    if slot == "priceRange":
        options.append(f"{{be}} in the {value} price range")
    elif value[0].isdigit():
        options += [f"{{be}} rated {value}", f"{{be}} rated {value} by customers"]
    return rng.choice(options)


_FRAMES = ("is_a", "there_is", "appositive", "predicates", "fronted", "looking", "name_of", "leading_np")
_ADJECTIVE_ORDER = ("priceRange", "customer rating", "familyFriendly", "food")  # English modifier order
_LOCATION_VERBS = ("{be} located", "{be} situated", "{be}", "can be found")


def _realise(record: Record, rng: random.Random) -> str:
    """One random realisation: an opening frame, then an optional "It/They ..." sentence."""
    values = dict(record.slots)
    name = values.pop("name")
    eat_type = values.pop("eatType", None)
    head = eat_type or rng.choice(_GENERIC_HEADS)
    slots = list(values)
    rng.shuffle(slots)
    frame = rng.choice(_FRAMES)
    if frame == "fronted" and not {"area", "near"} & values.keys():
        frame = "is_a"
    # "Located by the river, X is a place." says little: without an eatType, front verbs instead.
    verbs_only = frame == "predicates" or (frame == "fronted" and not eat_type)

    # Each slot goes to one place: adjective, post-noun phrase, with-phrase or predicate.
    adjectives: dict[str, str] = {}
    preps: list[str] = []
    withs: list[str] = []
    predicates: dict[str, str] = {}
    fronted: list[str] = []
    if verbs_only and eat_type:
        predicates["eatType"] = _predicate("eatType", eat_type, rng)
    for slot in slots:
        value = values[slot]
        if frame == "fronted" and slot in ("area", "near"):
            fronted.append(_prep_phrase(slot, value, rng))
            continue
        roll = 1.0 if verbs_only else rng.random()
        adjective, prep, with_np = (f(slot, value, rng) for f in (_adjective, _prep_phrase, _with_np))
        if roll < 0.3 and adjective and len(adjectives) < 2:
            adjectives[slot] = adjective
        elif roll < 0.55 and prep and len(preps) < 2:
            preps.append(prep)
        elif roll < 0.75 and with_np and len(withs) < 2:
            withs.append(with_np)
        else:
            predicates[slot] = _predicate(slot, value, rng)
    if "area" in predicates and "near" in predicates and rng.random() < 0.7:
        # One verb for both: "is located in the city centre near X".
        area, near = (_prep_phrase(slot, values[slot], rng) for slot in ("area", "near"))
        predicates["area"] = f"{rng.choice(_LOCATION_VERBS)} {area} {near}"
        del predicates["near"]
    fronted.sort(key=lambda phrase: phrase.split()[0] in NEAR_CONTEXT)  # "in the X near Y"

    # Noun phrase: "a cheap, family friendly French pub" + tail "near X with high prices".
    ordered = [adjectives[s] for s in _ADJECTIVE_ORDER if s in adjectives and s != "food"]
    core = _article(" ".join(m for m in (", ".join(ordered), adjectives.get("food", ""), head) if m))
    # "where children ..." clauses go last: "a pub near X with high prices where children ..."
    wheres = [p for p in preps if p.startswith("where")]
    tail = "".join(" " + p for p in preps if p not in wheres) + (" with " + _join(withs) if withs else "")
    tail += "".join(" " + p for p in wheres)

    # Predicates in the first sentence (main verbs or a relative clause), the rest in a second.
    verbs_list = list(predicates.values())
    needs_main_verb = verbs_only or frame in ("appositive", "leading_np")
    if not verbs_list or frame == "looking" or (frame == "fronted" and not verbs_only):
        first = 0
    elif needs_main_verb:
        first = rng.randint(1, min(3, len(verbs_list)))
    else:  # a relative clause after "where ..." reads badly
        first = 0 if "where" in tail else rng.randint(0, min(2, len(verbs_list)))
    main, rest = verbs_list[:first], verbs_list[first:]
    verbs = _agree(_join(main), plural=False) if main else ""
    if needs_main_verb and not main:
        frame, verbs_only = "fronted" if fronted else "is_a", False
    if frame in ("appositive", "leading_np") and not adjectives and not tail:
        frame = "is_a"  # "A pub, X serves ..." needs a richer noun phrase
    relative = f" that {verbs}" if verbs else ""

    if frame == "is_a":
        sentence = f"{name} is {core}{tail}{relative}."
    elif frame == "there_is":
        sentence = f"There is {core} {rng.choice(('called', 'named'))} {name}{tail}{relative}."
    elif frame == "name_of":
        sentence = f"{name} is the name of {core}{tail}{relative}."
    elif frame == "appositive":
        sentence = f"{name}, {core}{tail}, {verbs}."
    elif frame == "predicates":
        sentence = f"{name} {verbs}."
    elif frame == "leading_np":
        sentence = f"{core[0].upper()}{core[1:]}{tail}, {name} {verbs}."
    elif frame == "fronted":
        sentence = f"Located {' '.join(fronted)}, {name} {verbs if verbs_only else f'is {core}{tail}'}."
    else:  # looking
        verdict = rng.choice((f"try {name}", f"{name} is a good choice", f"visit {name}", f"consider {name}"))
        sentence = f"If you are looking for {core}{tail}, {verdict}."
    if not rest:
        return sentence
    subject = rng.choice(("It", "It", "They", name, f"The {head}"))
    return f"{sentence} {subject} {_agree(_join(rest), plural=subject == 'They')}."


def _realise_distinct(record: Record, count: int, rng: random.Random) -> tuple[str, ...]:
    texts: list[str] = []
    for _ in range(50 * count):  # a two-slot record has few realisations: then allow repeats
        if len(texts) == count:
            break
        if (text := _realise(record, rng)) not in texts:
            texts.append(text)
    while len(texts) < count:
        texts.append(_realise(record, rng))
    return tuple(texts)


def sample_example(rng: random.Random, min_slots: int = 2, max_slots: int = 3) -> Example:
    """One random record with its MR and a single reference (for mixtures of tasks)."""
    record = _sample_record(Table2TextConfig(min_slots=min_slots, max_slots=max_slots), rng)
    target = _realise(record, rng)
    return Example(record, format_source(record), target, (target,))


def make_table2text(config: Table2TextConfig = Table2TextConfig()) -> dict[str, list[Example]]:  # noqa: B008
    """Generate the ``train``/``validation``/``test`` splits; no MR appears twice anywhere.

    Each split has its own RNG seeded from ``config.seed`` and the split name, and test
    and validation are drawn first, so they do not change with ``train_size``.
    """
    sizes = {"test": config.test_size, "validation": config.validation_size, "train": config.train_size}
    if not 1 <= config.min_slots <= config.max_slots <= len(SLOTS) or config.references_per_example < 1:
        raise ConfigError(f"need 1 <= min_slots <= max_slots <= {len(SLOTS)} and references >= 1: {config}")
    if min(sizes.values()) < 0:
        raise ConfigError(f"split sizes must be >= 0, got {sizes}")
    seen: set[str] = set()
    splits: dict[str, list[Example]] = {}
    for split, size in sizes.items():
        rng = random.Random(f"table2text/{config.seed}/{split}")
        examples: list[Example] = []
        for _ in range(100 * size + 1000):
            if len(examples) == size:
                break
            record = _sample_record(config, rng)
            source = format_source(record)
            if source in seen:
                continue
            seen.add(source)
            references = _realise_distinct(record, config.references_per_example, rng)
            examples.append(Example(record, source, references[0], references))
        if len(examples) < size:
            raise ConfigError(f"could not draw {size} distinct MRs for {split}; allow more slots per record")
        splits[split] = examples
    return {split: splits[split] for split in ("train", "validation", "test")}


# --- metrics -----------------------------------------------------------------------------


def bleu(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus BLEU (0..100, sacrebleu defaults); ``references[i]`` are hypothesis i's references.

    Hypotheses may have different numbers of references: sacrebleu takes one stream per
    reference position, and a ``None`` entry in a stream marks a missing reference.
    """
    if len(hypotheses) != len(references):
        raise DataError(f"{len(hypotheses)} hypotheses but {len(references)} reference lists")
    if any(len(refs) == 0 for refs in references):
        raise DataError("every hypothesis needs at least one reference")
    width = max((len(refs) for refs in references), default=0)
    streams = [[refs[j] if j < len(refs) else None for refs in references] for j in range(width)]
    return sacrebleu.corpus_bleu(list(hypotheses), streams).score


@dataclass
class SlotErrors:
    """Counts of slot errors for one or more texts; ``total`` counts the MR slots."""

    missing: int = 0
    added: int = 0
    wrong: int = 0
    total: int = 0

    @property
    def rate(self) -> float:
        """Slot error rate, (missing + added + wrong) / total; 0 for no slots."""
        return (self.missing + self.added + self.wrong) / self.total if self.total else 0.0

    def __add__(self, other: SlotErrors) -> SlotErrors:
        return SlotErrors(*(a + b for a, b in zip(astuple(self), astuple(other))))


def _bounded(pattern: str) -> str:
    # Whole-word match; "£" and "-" count as word characters so "£20" is not part of "£20-25".
    return rf"(?<![\w£-])(?:{pattern})(?![\w-])"


_VALUE_PATTERNS = [
    (slot, value, re.compile(_bounded(pattern), re.IGNORECASE))
    for slot, forms in SURFACE_FORMS.items() for value, patterns in forms.items() for pattern in patterns
]  # fmt: skip
_CANONICAL_NAME = {name.lower(): name for name in NAMES + NEAR_NAMES}
_NAME_ALTERNATIVES = "|".join(re.escape(n) for n in sorted(_CANONICAL_NAME.values(), key=len, reverse=True))
_NAME_PATTERN = re.compile(
    _bounded(rf"(?P<near>(?:{'|'.join(NEAR_CONTEXT)})\s+)?(?P<name>{_NAME_ALTERNATIVES})"), re.IGNORECASE
)


def _mentions(text: str) -> list[tuple[int, int, str, str]]:
    """Non-overlapping ``(start, end, slot, value)`` mentions, longest match winning."""
    found = [(m.start(), m.end(), slot, value)
             for slot, value, pattern in _VALUE_PATTERNS for m in pattern.finditer(text)]  # fmt: skip
    for m in _NAME_PATTERN.finditer(text):
        slot = "near" if m.group("near") else "name"
        found.append((m.start(), m.end(), slot, _CANONICAL_NAME[m.group("name").lower()]))
    kept: list[tuple[int, int, str, str]] = []
    for mention in sorted(found, key=lambda f: (f[0] - f[1], f[0])):
        if all(mention[1] <= other[0] or other[1] <= mention[0] for other in kept):
            kept.append(mention)
    return sorted(kept)


def slot_errors(record: Record, text: str) -> SlotErrors:
    """Compare the slots that ``text`` expresses with the record (Dušek et al. 2020 SER counts)."""
    expressed: dict[str, set[str]] = {}
    for _, _, slot, value in _mentions(text):
        expressed.setdefault(slot, set()).add(value)
    errors = SlotErrors(total=len(record.slots))
    wanted = dict(record.slots)
    for slot in SLOTS:
        said = expressed.get(slot, set())
        if slot not in wanted:
            errors.added += bool(said)
        elif not said:
            errors.missing += 1
        elif wanted[slot] not in said:
            errors.wrong += 1
        elif len(said) > 1:  # the right value plus an invented one
            errors.added += 1
    return errors


def slot_error_rate(records: Sequence[Record], texts: Sequence[str]) -> float:
    """Corpus SER: all errors over all MR slots (not a mean of per-text rates)."""
    if len(records) != len(texts):
        raise DataError(f"{len(records)} records but {len(texts)} texts")
    return sum((slot_errors(r, t) for r, t in zip(records, texts)), SlotErrors()).rate
