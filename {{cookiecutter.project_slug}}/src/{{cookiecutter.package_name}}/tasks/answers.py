"""Reading a model's answer as the JSON object a structured (extraction) task asks for: the one place that
training data checks, scoring, the stop rule of generation and preference pairs all read JSON answers with.

    parse_prediction('Sure! {"intent": "track"} Anything else?')   # {"intent": "track"}
    parse_prediction('{"intent": "track"}', strict=True)            # the whole text must be the object
"""

from __future__ import annotations

import json
import re
from typing import Any


def parse_prediction(text: str, *, strict: bool = False) -> dict[str, Any] | None:
    """The first JSON object in a model answer, or None when there is none.

    Tolerant of what small models add around the object: code fences, "Here is the JSON:" and trailing chatter.
    The object itself must be valid JSON; it is not repaired. `strict`: the text (trimmed) must be exactly one
    object, as training answers must be: training teaches the model to write exactly that.
    """
    if strict:
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            return None
        return value if isinstance(value, dict) else None
    decoder = json.JSONDecoder()
    for match in re.finditer(r"\{", text):
        try:
            value, _ = decoder.raw_decode(text, match.start())
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value
    return None


def holds_complete_object(text: str) -> bool:
    """Whether the JSON object that starts at the text's first `{` is complete: generation's stop rule. An object
    nested in an unfinished one does not count, so an answer is never cut inside its own object."""
    start = text.find("{")
    if start < 0 or "}" not in text[start:]:
        return False
    try:
        json.JSONDecoder().raw_decode(text, start)
    except json.JSONDecodeError:
        return False
    return True
