"""The task kinds: what differs between a structured task (`extraction`: the answer is a JSON object) and a
free-text one (`generic`). Each kind is one object; the stages ask it instead of branching on `task.kind`.

    kind = task_kind(config.task)          # config.task.kind: extraction | generic
    kind.row_scores(answers, references)   # per-row metrics (tasks/metrics.py)
    kind.majority_answer(train_answers)    # the model-free baseline
    kind.json_answers                      # answers are JSON objects (checked; generation stops after one)
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .answers import parse_prediction
from .metrics import RowScores, answer_fields, extraction_row_scores, generic_row_scores

if TYPE_CHECKING:
    from ..config import TaskConfig


@dataclass(frozen=True)
class Extraction:
    """The answer is one JSON object; scored field by field (valid JSON, each field, the share right, all right)."""

    name: str = "extraction"
    # Answers are JSON objects: data validate checks them against task.fields, and generation may end once a
    # whole object is written (scoring reads the first object and nothing after it).
    json_answers: bool = True
    headline: str = "field_accuracy"

    def row_scores(self, answers: list[str], references: list[str]) -> RowScores:
        return extraction_row_scores(answers, references)

    def majority_answer(self, answers: list[str]) -> str:
        """Per field the most common training value; ties go to the value seen first."""
        targets = [parsed for parsed in map(parse_prediction, answers) if parsed is not None]
        fields = answer_fields(targets)
        majority = {}
        for field in fields:
            # Values go through JSON text so that lists and objects count too (they are not hashable).
            counts = Counter(json.dumps(target.get(field), sort_keys=True) for target in targets)
            majority[field] = json.loads(counts.most_common(1)[0][0])
        return json.dumps(majority, ensure_ascii=False)

    def same_answer(self, answer: str, reference: str) -> bool:
        """Equal as JSON objects: spacing or key order alone is no mistake."""
        parsed = parse_prediction(answer, strict=True)
        return parsed is not None and parsed == parse_prediction(reference, strict=True)

    def scoring_text(self, fields: list[str]) -> str:
        shown = ", ".join(f"`{name}`" for name in fields) or "every key of the reference answers"
        return (
            "Scored against the reference answers of held-out rows: valid JSON rate, accuracy of each JSON field "
            f"({shown}) and exact match."
        )


@dataclass(frozen=True)
class Generic:
    """Free text; scored by exact match and ROUGE-L (and, when configured, an LLM judge)."""

    name: str = "generic"
    json_answers: bool = False
    headline: str = "rouge_l"

    def row_scores(self, answers: list[str], references: list[str]) -> RowScores:
        return generic_row_scores(answers, references)

    def majority_answer(self, answers: list[str]) -> str:
        """The most common training answer; ties go to the one seen first."""
        return Counter(answers).most_common(1)[0][0] if answers else ""

    def same_answer(self, answer: str, reference: str) -> bool:
        return answer.strip() == reference.strip()

    def scoring_text(self, fields: list[str]) -> str:
        return "Scored against the reference answers of held-out rows: exact match and ROUGE-L of the free-text answer."


TaskKind = Extraction | Generic
KINDS: dict[str, TaskKind] = {"extraction": Extraction(), "generic": Generic()}


def task_kind(task: TaskConfig | str) -> TaskKind:
    """The kind object of a task section (or of its `kind` name)."""
    return KINDS[task if isinstance(task, str) else task.kind]
