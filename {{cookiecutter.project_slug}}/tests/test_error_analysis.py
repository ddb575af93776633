"""Error analysis of the extraction task (error_analysis.py) on hand-made answers with known counts."""

import json

from {{ cookiecutter.package_name }}.evaluate.error_analysis import (
    MISSING,
    OTHER,
    analyse,
    categorical_fields,
    confusion,
    error_kinds,
    markdown,
)

EXPECTED = [
    {"intent": "track", "order": "A1", "qty": 2},
    {"intent": "cancel", "order": "A2", "qty": 1},
    {"intent": "track", "order": None, "qty": None},
]


def test_categorical_fields_are_found_in_the_training_answers_not_named():
    answers = [json.dumps(e) for e in EXPECTED] + [json.dumps({"intent": "track", "order": f"B{i}"}) for i in range(13)]
    # order: 15 distinct ids (free text); qty: numbers; intent: 2 labels, most common first.
    assert categorical_fields(answers) == {"intent": ["track", "cancel"]}


def test_confusion_counts_expected_against_answered_with_other_and_missing():
    predicted = [{"intent": "track"}, {"intent": "refund"}, None]
    table = confusion(predicted, EXPECTED, field="intent", labels=["track", "cancel"])
    assert table == {
        "expected": ["track", "cancel"],
        "answered": ["track", "cancel", OTHER, MISSING],
        "counts": [[1, 0, 0, 1], [0, 0, 1, 0]],
    }


def test_error_kinds_classify_every_wrong_field_and_extra_key():
    predicted = [
        {"intent": "track", "order": "A1", "qty": "2", "note": "x"},  # wrong type, extra key
        {"intent": "track", "qty": 1},  # wrong value, missing key
        None,  # invalid JSON
    ]
    kinds = error_kinds(predicted, EXPECTED)
    assert kinds["counts"] == {"invalid_json": 1, "missing_key": 1, "extra_key": 1, "wrong_type": 1, "wrong_value": 1}
    assert kinds["errors"] == 5 and kinds["shares"]["wrong_type"] == 0.2


def test_analysis_lists_the_worst_rows_with_every_columns_answer_and_renders_markdown():
    rows = [
        [{"role": "user", "content": f"message {i}"}, {"role": "assistant", "content": json.dumps(e)}]
        for i, e in enumerate(EXPECTED)
    ]
    tuned = [json.dumps(EXPECTED[0]), '{"intent": "cancel"}', "oops"]
    analysis = analyse(
        rows,
        train_answers=[json.dumps(e) for e in EXPECTED],
        scores={"field_accuracy": [1.0, 1 / 3, 0.0]},
        answers={"base": ["", "", ""], "finetuned": tuned},
    )
    assert [entry["row"] for entry in analysis["worst_rows"]] == [2, 1, 0]
    assert analysis["worst_rows"][0] == {
        "row": 2,
        "field_accuracy": 0.0,
        "input": "message 2",
        "expected": json.dumps(EXPECTED[2]),
        "base": "",
        "finetuned": "oops",
    }
    assert analysis["error_kinds"]["counts"]["invalid_json"] == 1
    text = "\n".join(markdown(analysis))
    assert "| invalid_json | 1 | 33.3% |" in text
    assert "### Confusion: `intent` (rows: expected, columns: answered)" in text
    assert "| cancel | 0 | 1 | 0 | 0 |" in text
