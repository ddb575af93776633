"""The baselines a fine-tune must beat, built from the TRAINING split only (never a scored row):

- majority: no model at all; for the extraction task, the JSON object of each field's most common training
  value (for a generic task, the most common training answer), given as the answer to every row;
- few-shot: the base model with k training examples as earlier user/assistant turns of its chat, so it sees
  the answer format that zero-shot `base` has to guess. The examples are drawn with a fixed seed, and any
  training row whose content equals a scored row is skipped (compared by content digest).

This module builds answers and prompts; `evaluate` generates and scores them with the same code as the
fine-tuned model.
"""

from __future__ import annotations

import hashlib
import json
import random
from typing import Any

from ..errors import ProjectError

Conversation = list[dict[str, str]]


class BaselineError(ProjectError, ValueError):
    """A baseline cannot be built as configured (eval.few_shot too large for the data or the context)."""


def row_digest(row: Conversation) -> str:
    """sha256 of a row's user and assistant turns as canonical JSON: equal content, equal digest."""
    turns = [message for message in row if message["role"] != "system"]
    text = json.dumps(turns, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ---- few-shot -------------------------------------------------------------------------------------------


def pick_examples(
    train_rows: list[Conversation], *, k: int, seed: int, scored_rows: list[Conversation]
) -> list[Conversation]:
    """k training rows drawn with `seed`, none equal in content to a scored row; refused (BaselineError)
    when the training split has fewer than k such rows."""
    scored = {row_digest(row) for row in scored_rows}
    candidates = [row for row in train_rows if row_digest(row) not in scored]
    if k > len(candidates):
        raise BaselineError(
            f"eval.few_shot={k} asks for {k} training examples in each prompt, but the training split has only "
            f"{len(candidates)} rows that are not also scored rows; set eval.few_shot to at most {len(candidates)} "
            "(0 turns the few-shot baseline off)"
        )
    return random.Random(seed).sample(candidates, k)


def few_shot_rows(rows: list[Conversation], *, examples: list[Conversation]) -> list[Conversation]:
    """Each scored row with the examples' user/assistant turns before its own user turn (after its system
    message, when it has one): the chat template renders them as earlier turns of the same chat."""
    shots = [message for example in examples for message in example if message["role"] != "system"]
    result = []
    for row in rows:
        system = [message for message in row[:1] if message["role"] == "system"]
        result.append([*system, *shots, *row[len(system) :]])
    return result


def check_context(prompt_tokens: list[int], *, max_new_tokens: int, context: int | None, k: int) -> None:
    """Refuse (BaselineError) before any generation when the longest few-shot prompt plus the answer does not
    fit the model's context."""
    longest = max(prompt_tokens, default=0)
    if context is not None and longest + max_new_tokens > context:
        raise BaselineError(
            f"eval.few_shot={k}: the longest few-shot prompt has {longest} tokens, and with eval.max_new_tokens="
            f"{max_new_tokens} it exceeds the model's context of {context} tokens; lower eval.few_shot "
            "(0 turns the few-shot baseline off) or eval.max_new_tokens"
        )


def prompt_token_stats(prompt_tokens: list[int]) -> dict[str, Any]:
    """What eval.json records of the few-shot prompts' length, in tokens."""
    if not prompt_tokens:
        return {"mean": 0.0, "max": 0, "total": 0}
    return {
        "mean": round(sum(prompt_tokens) / len(prompt_tokens), 1),
        "max": max(prompt_tokens),
        "total": sum(prompt_tokens),
    }
