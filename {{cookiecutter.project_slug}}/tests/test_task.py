"""The shipped extraction task: a deterministic, leak-free generator and a tolerant answer parser."""

import json

import pytest

from {{ cookiecutter.package_name }}.data.dataset import DATASET_INFO
from {{ cookiecutter.package_name }}.data.shop_example import (
    FIELDS,
    INTENTS,
    SENTIMENTS,
    SYSTEM_PROMPT,
    URGENCIES,
    synthesize,
)
from {{ cookiecutter.package_name }}.tasks.answers import parse_prediction

SPLIT_FILES = ("train.jsonl", "validation.jsonl", "test.jsonl")


def _rows(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_same_seed_gives_identical_bytes_and_another_seed_differs(synth_dir, tmp_path):
    assert synthesize(tmp_path / "again", n=1200, seed=0) == {"train": 960, "validation": 120, "test": 120}
    synthesize(tmp_path / "other", n=1200, seed=1)
    for name in (*SPLIT_FILES, DATASET_INFO):
        assert (tmp_path / "again" / name).read_bytes() == (synth_dir / name).read_bytes()
    assert (tmp_path / "other" / "train.jsonl").read_bytes() != (synth_dir / "train.jsonl").read_bytes()


def test_synth_records_its_generator_seed_and_rows(tmp_path):
    synthesize(tmp_path, n=50, seed=7)
    assert json.loads((tmp_path / DATASET_INFO).read_text(encoding="utf-8")) == {
        "generator": "{{ cookiecutter.package_name | replace('_', '-') }} data synth",
        "seed": 7,
        "rows": {"train": 40, "validation": 5, "test": 5},
    }
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted([*SPLIT_FILES, DATASET_INFO])


def test_split_sizes_and_no_user_message_in_two_splits(synth_dir):
    users = {name: [row["messages"][1]["content"] for row in _rows(synth_dir / name)] for name in SPLIT_FILES}
    assert [len(texts) for texts in users.values()] == [960, 120, 120]
    every = [text for texts in users.values() for text in texts]
    assert len(set(every)) == len(every) >= 1000


def test_every_answer_parses_with_exactly_the_schema(synth_dir):
    seen_intents, seen_nulls = set(), {field: 0 for field in FIELDS}
    for name in SPLIT_FILES:
        for row in _rows(synth_dir / name):
            system, user, assistant = row["messages"]
            assert (system["role"], user["role"], assistant["role"]) == ("system", "user", "assistant")
            assert system["content"] == SYSTEM_PROMPT
            answer = parse_prediction(assistant["content"])
            assert tuple(answer) == FIELDS  # keys present and in FIELDS order
            assert answer["intent"] in INTENTS
            assert answer["sentiment"] in SENTIMENTS and answer["urgency"] in URGENCIES
            assert answer["quantity"] is None or (isinstance(answer["quantity"], int) and answer["quantity"] > 0)
            if answer["order_id"] is not None:
                assert answer["order_id"][0].isupper() and answer["order_id"][1:].isdigit()
                assert answer["order_id"].lower() in user["content"].lower()  # extractable from the text
            if answer["product"] is not None:
                assert answer["product"][:-2] in user["content"].lower()  # [:-2]: "knife" -> "knives"
            seen_intents.add(answer["intent"])
            for field in FIELDS:
                seen_nulls[field] += answer[field] is None
    assert seen_intents == set(INTENTS)
    assert all(seen_nulls[field] > 50 for field in ("order_id", "product", "quantity"))  # missing fields occur


def test_messages_are_varied(synth_dir):
    texts = [row["messages"][1]["content"] for row in _rows(synth_dir / "train.jsonl")]
    joined = " ".join(texts)
    assert "$" in joined and "Ticket reference" in joined  # distractor numbers
    assert "My earlier order" in joined  # a second order id that must not be extracted
    assert sum(text.islower() for text in texts) > 20  # all-lower-case writers
    assert len({text.split("?")[0][:25] for text in texts}) > 300  # many openings, not a few templates


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"intent": "track", "quantity": 2}', {"intent": "track", "quantity": 2}),
        ('```json\n{"intent": "cancel"}\n```', {"intent": "cancel"}),
        ('Here is the JSON: {"intent": "praise"} Hope that helps!', {"intent": "praise"}),
        ('{"broken": } then {"intent": "return"}', {"intent": "return"}),
        ('{"intent": "track"', None),
        ("no json at all", None),
        ("[1, 2, 3]", None),
        ("", None),
    ],
)
def test_parse_prediction_is_tolerant_but_rejects_invalid_json(text, expected):
    assert parse_prediction(text) == expected


def test_system_prompt_is_short_and_names_every_field_and_intent():
    assert len(SYSTEM_PROMPT.split()) < 40  # a few dozen tokens: paid on every training example
    for word in (*FIELDS, *INTENTS, *SENTIMENTS, *URGENCIES):
        assert word in SYSTEM_PROMPT
