"""Where the fine-tuned model goes wrong (extraction task): a confusion table per categorical field, the share
of each kind of error, and the worst rows.

Categorical fields are found in the training answers, not named here: fields whose values are all text (or
null) and take at most MAX_LABELS distinct values. Error kinds, one per wrong (row, field), plus one per key
the answer adds:
- invalid_json: the answer holds no JSON object (every field of that row is lost);
- missing_key: the object lacks the field;
- wrong_type: the value has another JSON type than expected (text "2" for the number 2, null for a value);
- wrong_value: same type, other value;
- extra_key: a key that the expected answers do not have.
"""

from __future__ import annotations

from typing import Any

from ..tasks.metrics import RowScores, answer_fields

MAX_LABELS = 12  # more distinct values than this reads as free text (ids, product names), not as classes
ERROR_KINDS = ("invalid_json", "missing_key", "extra_key", "wrong_type", "wrong_value")
MISSING, OTHER = "(missing)", "(other)"  # confusion columns: no usable value, a value outside the labels
WORST_ROWS = 5


def categorical_fields(train_answers: list[str]) -> dict[str, list[str]]:
    """{field: its labels, most common first} for each field whose training values are text or null and take
    2 to MAX_LABELS distinct text values."""
    from collections import Counter

    from ..tasks.answers import parse_prediction

    targets = [parsed for parsed in map(parse_prediction, train_answers) if parsed is not None]
    found = {}
    for field in answer_fields(targets):
        values = [target.get(field) for target in targets]
        if not all(value is None or isinstance(value, str) for value in values):
            continue
        counts = Counter(value for value in values if value is not None)
        if 2 <= len(counts) <= MAX_LABELS:
            found[field] = [label for label, _ in counts.most_common()]
    return found


def confusion(predicted: list[dict | None], targets: list[dict], *, field: str, labels: list[str]) -> dict[str, Any]:
    """Counts of (expected label, answered label) for one field: rows are the training labels (then any other
    expected value, "null" included), columns the same plus OTHER (a value outside them) and MISSING (no key,
    or no JSON at all)."""
    seen = [_label(target.get(field)) for target in targets]
    expected_labels = [*labels, *dict.fromkeys(label for label in seen if label not in labels)]
    columns = [*expected_labels, OTHER, MISSING]
    matrix = [[0] * len(columns) for _ in expected_labels]
    for answer, label in zip(predicted, seen, strict=True):
        if answer is None or field not in answer:
            column = MISSING
        else:
            column = _label(answer[field]) if _label(answer[field]) in expected_labels else OTHER
        matrix[expected_labels.index(label)][columns.index(column)] += 1
    return {"expected": expected_labels, "answered": columns, "counts": matrix}


def _label(value: Any) -> str:
    return "null" if value is None else str(value)


def error_kinds(predicted: list[dict | None], targets: list[dict]) -> dict[str, Any]:
    """{"counts": {kind: n}, "shares": {kind: n / all errors}, "errors": all errors} over every row and field."""
    fields = answer_fields(targets)
    counts = dict.fromkeys(ERROR_KINDS, 0)
    for answer, target in zip(predicted, targets, strict=True):
        if answer is None:
            counts["invalid_json"] += 1
            continue
        counts["extra_key"] += sum(key not in fields for key in answer)
        for field in fields:
            kind = _field_error(answer, target, field)
            if kind:
                counts[kind] += 1
    total = sum(counts.values())
    shares = {kind: (n / total if total else 0.0) for kind, n in counts.items()}
    return {"counts": counts, "shares": shares, "errors": total}


def _field_error(answer: dict, target: dict, field: str) -> str | None:
    if field not in answer:
        return "missing_key"
    got, want = answer[field], target.get(field)
    if got == want and type(got) is type(want):
        return None
    return "wrong_value" if _json_type(got) == _json_type(want) else "wrong_type"


def _json_type(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return repr(value) if value is None else "boolean"
    return "number" if isinstance(value, int | float) else type(value).__name__


def worst_rows(
    rows: list[list[dict[str, str]]], *, scores: RowScores, metric: str, answers: dict[str, list[str]]
) -> list[dict[str, Any]]:
    """The WORST_ROWS rows of lowest `metric` (ties: in row order) with input, expected and every column's answer."""
    order = sorted(range(len(rows)), key=lambda i: (scores[metric][i], i))[:WORST_ROWS]
    return [
        {
            "row": i,
            metric: scores[metric][i],
            "input": rows[i][-2]["content"],
            "expected": rows[i][-1]["content"],
            **{column: column_answers[i] for column, column_answers in answers.items()},
        }
        for i in order
    ]


def analyse(
    rows: list[list[dict[str, str]]],
    *,
    train_answers: list[str],
    scores: RowScores,
    answers: dict[str, list[str]],
) -> dict[str, Any]:
    """The error analysis of `answers["finetuned"]` (extraction task): confusion per categorical field, error
    kinds and the worst rows (with every column's answer)."""
    from ..tasks.answers import parse_prediction

    predicted = [parse_prediction(answer) for answer in answers["finetuned"]]
    targets = [parse_prediction(row[-1]["content"]) or {} for row in rows]
    return {
        "model": "finetuned",
        "confusion": {
            field: confusion(predicted, targets, field=field, labels=labels)
            for field, labels in categorical_fields(train_answers).items()
        },
        "error_kinds": error_kinds(predicted, targets),
        "worst_rows": worst_rows(rows, scores=scores, metric="field_accuracy", answers=answers),
    }


def markdown(analysis: dict[str, Any]) -> list[str]:
    """reports/eval.md's error analysis: error kinds, one confusion table per categorical field, worst rows."""
    from .markdown import answer_cell, table

    lines: list[str] = []
    kinds = analysis.get("error_kinds")
    if kinds:
        lines += ["", "## Error analysis (fine-tuned)", "", f"{kinds['errors']} wrong fields or extra keys:", ""]
        rows = [(kind, kinds["counts"][kind], f"{kinds['shares'][kind]:.1%}") for kind in ERROR_KINDS]
        lines += table(("error kind", "count", "share"), rows, align="lrr")
    for field, counts in (analysis.get("confusion") or {}).items():
        lines += ["", f"### Confusion: `{field}` (rows: expected, columns: answered)", ""]
        body = [(label, *row) for label, row in zip(counts["expected"], counts["counts"], strict=True)]
        lines += table(("expected \\ answered", *counts["answered"]), body, align="l" + "r" * len(counts["answered"]))
    worst = analysis.get("worst_rows") or []
    if worst:
        # One table, a row per example (the examples above are one table each): input, expected, every answer.
        lines += ["", f"## The {len(worst)} worst rows (fine-tuned)", ""]
        keys = list(worst[0])
        body = [[answer_cell(str(entry[key])) if isinstance(entry[key], str) else entry[key] for key in keys]
                for entry in worst]  # fmt: skip
        lines += table([COLUMN_NAMES.get(key, key) for key in keys], body)
    return lines


COLUMN_NAMES = {"finetuned": "fine-tuned answer", "base": "base answer", "few_shot": "few-shot answer"}
