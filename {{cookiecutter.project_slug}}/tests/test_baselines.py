"""The majority (tasks/kinds.py) and few-shot (baselines.py) baselines: from the training split only, never a scored
row."""

import json

import pytest

from {{ cookiecutter.package_name }}.evaluate.baselines import (
    BaselineError,
    check_context,
    classical_answers,
    few_shot_rows,
    pick_examples,
    prompt_token_stats,
    row_digest,
)
from {{ cookiecutter.package_name }}.tasks.kinds import task_kind


def chat(user: str, answer: str, system: str | None = "Extract.") -> list[dict[str, str]]:
    head = [{"role": "system", "content": system}] if system else []
    return [*head, {"role": "user", "content": user}, {"role": "assistant", "content": answer}]


TRAIN = [
    chat("a", '{"intent": "track", "qty": 1, "tags": ["x"]}'),
    chat("b", '{"intent": "cancel", "qty": 1, "tags": ["x"]}'),
    chat("c", '{"intent": "track", "qty": 2, "tags": []}'),
    chat("d", '{"intent": "cancel", "qty": null, "tags": ["x"]}'),
    chat("e", '{"intent": "track", "qty": null, "tags": ["x"]}'),
]


def test_majority_answer_is_each_fields_most_common_training_value():
    answers = [row[-1]["content"] for row in TRAIN]
    assert json.loads(task_kind("extraction").majority_answer(answers)) == {"intent": "track", "qty": 1, "tags": ["x"]}
    assert task_kind("generic").majority_answer(["yes", "no", "no"]) == "no"


def test_few_shot_examples_come_from_training_never_a_scored_row_and_are_seeded():
    scored = [chat("c", '{"intent": "track", "qty": 2, "tags": []}', system="Other system prompt"), chat("z", "{}")]
    picks = [pick_examples(TRAIN, k=4, seed=seed, scored_rows=scored) for seed in (0, 0, 1)]
    assert picks[0] == picks[1] and {row_digest(r) for r in picks[0]} == {row_digest(r) for r in picks[2]}
    assert row_digest(scored[0]) not in {row_digest(row) for row in picks[0]}  # "c" is a scored row: skipped
    with pytest.raises(BaselineError, match=r"eval.few_shot=5 .* only 4 rows .* at most 4 \(0 turns"):
        pick_examples(TRAIN, k=5, seed=0, scored_rows=scored)


def test_few_shot_rows_put_the_examples_as_earlier_turns_after_the_system_prompt():
    examples = TRAIN[:2]
    (row,) = few_shot_rows([chat("new", "{}")], examples=examples)
    assert [m["role"] for m in row] == ["system", "user", "assistant", "user", "assistant", "user", "assistant"]
    assert [m["content"] for m in row[1:3]] == ["a", TRAIN[0][-1]["content"]]
    assert row[-2:] == chat("new", "{}")[-2:]
    (plain,) = few_shot_rows([chat("new", "{}", system=None)], examples=examples)
    assert [m["role"] for m in plain][:2] == ["user", "assistant"]


def test_a_prompt_too_long_for_the_context_is_refused_naming_the_key():
    check_context([100, 400], max_new_tokens=100, context=500, k=3)  # fits exactly
    with pytest.raises(BaselineError, match=r"eval.few_shot=3: the longest few-shot prompt has 401 tokens.*2048"):
        check_context([401], max_new_tokens=1648, context=2048, k=3)
    assert prompt_token_stats([10, 20, 33]) == {"mean": 21.0, "max": 33, "total": 63}


def shop_rows(n: int) -> list[list[dict[str, str]]]:
    """Messages whose intent follows from a word (as the example task's does), a unique order id each, one shop."""
    words = {"track": "where is my parcel", "cancel": "please cancel my order"}
    return [
        chat(
            f"{words[intent]} {i}",
            json.dumps({"intent": intent, "order_id": f"{intent[0].upper()}-{i}", "shop": "main"}),
        )
        for i in range(n)
        for intent in words
    ]


def test_classical_baseline_learns_fields_with_few_values_from_training_and_names_the_rest_na():
    scored = [chat("where is my parcel now?", "{}"), chat("cancel my order, please", "{}")]
    answers, fields = classical_answers(shop_rows(10), scored, seed=0)
    assert [json.loads(answer) for answer in answers] == [
        {"intent": "track", "order_id": "T-0", "shop": "main"},
        {"intent": "cancel", "order_id": "T-0", "shop": "main"},
    ]  # n/a fields answered with their most common training value (ties: first seen), as the majority baseline
    assert fields == {
        "intent": "fitted: 2 classes",
        "order_id": "n/a: 20 distinct values in 20 training rows, too many to learn as classes",
        "shop": 'n/a: one value in training ("main"), nothing to learn',
    }
    assert classical_answers(shop_rows(10), scored, seed=0) == (answers, fields)  # deterministic


def test_classical_baseline_without_any_field_to_fit_answers_majority_values_never_a_traceback():
    answers, fields = classical_answers([chat("only one", '{"shop": "main"}')], [chat("x", "{}")], seed=0)
    assert (answers, fields) == (
        ['{"shop": "main"}'],
        {"shop": 'n/a: one value in training ("main"), nothing to learn'},
    )
