"""Task metrics, row by row: every aggregate in reports/eval.json is the mean of one of these per-row lists.

Per-row values (not just the means) are what the paired bootstrap resamples and what the error analysis and
the promotion gate's significance check compare, so every column (fine-tuned, base, baselines) is scored by
this one code path.

- extraction task: json_valid_rate (the answer holds a JSON object), field_accuracy_<field> (the answer has
  the key with the expected value), field_accuracy (mean over the fields), exact_match (every field right);
- generic task: exact_match (after trimming whitespace) and rouge_l (ROUGE-L F1, `rouge-score`).
"""

from __future__ import annotations

from typing import Any

from .answers import parse_prediction

RowScores = dict[str, list[float]]  # metric name -> one value per scored row, in row order


def extraction_row_scores(answers: list[str], expected: list[str]) -> RowScores:
    """Per row: valid JSON (0/1), each field right (0/1), the share of fields right, all fields right (0/1)."""
    predicted = [parse_prediction(answer) for answer in answers]
    targets = [parse_prediction(text) or {} for text in expected]
    fields = answer_fields(targets)
    scores: RowScores = {"json_valid_rate": [float(p is not None) for p in predicted]}
    right = {field: [float(_right(p, t, field)) for p, t in zip(predicted, targets, strict=True)] for field in fields}
    scores |= {f"field_accuracy_{field}": values for field, values in right.items()}
    scores["field_accuracy"] = [
        sum(right[field][i] for field in fields) / max(len(fields), 1) for i in range(len(answers))
    ]
    scores["exact_match"] = [float(all(right[field][i] for field in fields)) for i in range(len(answers))]
    return scores


def answer_fields(targets: list[dict[str, Any]]) -> list[str]:
    """The fields scored: the keys of the expected answers, in first-seen order."""
    return list(dict.fromkeys(key for target in targets for key in target))


def _right(predicted: dict | None, target: dict, field: str) -> bool:
    """A field is right when the answer has the key with the expected value (a missing key is wrong, even
    where null is expected: the schema asks for every key)."""
    return predicted is not None and field in predicted and predicted[field] == target.get(field)


def generic_row_scores(answers: list[str], expected: list[str]) -> RowScores:
    """Per row: exact match after trimming whitespace (0/1) and ROUGE-L F1 (longest common word subsequence)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"])
    pairs = list(zip(answers, expected, strict=True))
    return {
        "exact_match": [float(a.strip() == e.strip()) for a, e in pairs],
        "rouge_l": [scorer.score(e, a)["rougeL"].fmeasure for a, e in pairs],
    }


def means(scores: RowScores) -> dict[str, float]:
    """The aggregate metrics: the mean of each per-row list (0.0 for no rows)."""
    return {name: sum(values) / max(len(values), 1) for name, values in scores.items()}
