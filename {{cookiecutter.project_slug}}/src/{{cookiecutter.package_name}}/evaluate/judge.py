"""LLM-as-judge for open-ended answers (`task.kind: generic`): any OpenAI-compatible chat endpoint scores each
answer against its reference with a stated rubric. Off unless `eval.judge.base_url` is set.

    <project> evaluate eval.judge.base_url=http://127.0.0.1:8000/v1 eval.judge.model=<served model id>
    JUDGE_API_KEY=... <project> evaluate eval.judge.base_url=https://api.openai.com/v1 eval.judge.model=gpt-4o-mini

What is recorded (eval.json `judge`): the judge's model and URL, the sha256 of the rubric text, and per row
the judge's raw answer with the score read from it. An answer without a score in range, an HTTP error or a
timeout is a failure (counted in `judge_failures`), never a score. An endpoint that does not answer at all
stops `evaluate` before any model is scored, naming the URL. The API key is read from the environment
variable `eval.judge.api_key_env` and sent as a bearer token only: it is never written anywhere.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import TYPE_CHECKING, Any

from ..errors import ProjectError

if TYPE_CHECKING:
    import httpx

    from ..config import JudgeConfig

Conversation = list[dict[str, str]]
SCORE_RANGE = (1, 5)


class JudgeError(ProjectError, ValueError):
    """The judge endpoint cannot be used (unreachable, or refused the key); nothing was scored."""


def rubric_digest(rubric: str) -> str:
    return hashlib.sha256(rubric.encode("utf-8")).hexdigest()


def _client(judge: JudgeConfig) -> httpx.Client:
    import httpx

    key = os.environ.get(judge.api_key_env) if judge.api_key_env else None
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=judge.base_url or "", headers=headers, timeout=judge.timeout_s)


def check_reachable(judge: JudgeConfig) -> None:
    """Fail fast (JudgeError, naming the URL) when the endpoint does not answer GET /models; called before any
    model is loaded, so a typo in the URL costs a second, not a whole evaluation."""
    import httpx

    with _client(judge) as http:
        try:
            response = http.get("/models")
        except httpx.HTTPError as err:
            raise JudgeError(
                f"eval.judge.base_url={judge.base_url}: the judge endpoint does not answer ({type(err).__name__}); "
                "start it or fix the URL (an OpenAI-compatible base URL ends in /v1), or set eval.judge.base_url=null "
                "to evaluate without a judge; nothing was scored"
            ) from None
    if response.status_code in (401, 403):
        raise JudgeError(
            f"eval.judge.base_url={judge.base_url} refused the request ({response.status_code}): set the API key in "
            f"the environment variable {judge.api_key_env} (eval.judge.api_key_env); nothing was scored"
        )


def judge_answers(judge: JudgeConfig, *, rows: list[Conversation], answers: list[str]) -> dict[str, Any]:
    """Each answer scored by the judge: {"scores": per row (None on failure), "mean_score", "judge_failures",
    "rows": [{"score", "raw", "error"}]}, with the judge's model, URL and rubric hash."""
    results = []
    with _client(judge) as http:
        for row, answer in zip(rows, answers, strict=True):
            results.append(
                _judge_one(http, judge, question=row[-2]["content"], reference=row[-1]["content"], answer=answer)
            )
    scores = [result["score"] for result in results]
    valid = [score for score in scores if score is not None]
    return {
        "model": judge.model,
        "base_url": judge.base_url,
        "rubric_sha256": rubric_digest(judge.rubric),
        "score_range": list(SCORE_RANGE),
        "mean_score": sum(valid) / len(valid) if valid else None,
        "judge_failures": len(scores) - len(valid),
        "scores": scores,
        "rows": results,
    }


def _judge_one(http: httpx.Client, judge: JudgeConfig, *, question: str, reference: str, answer: str) -> dict[str, Any]:
    import httpx

    prompt = f"QUESTION:\n{question}\n\nREFERENCE ANSWER:\n{reference}\n\nANSWER TO SCORE:\n{answer}"
    body = {
        "model": judge.model,
        "messages": [{"role": "system", "content": judge.rubric}, {"role": "user", "content": prompt}],
        "temperature": 0,
        "max_tokens": judge.max_tokens,
    }
    try:
        response = http.post("/chat/completions", json=body)
        response.raise_for_status()
        raw = response.json()["choices"][0]["message"]["content"] or ""
    except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as err:
        error = _redacted(str(err), key=os.environ.get(judge.api_key_env or "", ""))
        return {"score": None, "raw": None, "error": f"{type(err).__name__}: {error}"}
    score = parse_score(raw)
    error = None if score is not None else f"no score between {SCORE_RANGE[0]} and {SCORE_RANGE[1]} in the answer"
    return {"score": score, "raw": raw, "error": error}


def parse_score(raw: str) -> float | None:
    """The `score` of the first JSON object in the judge's answer, when it is a number within SCORE_RANGE."""
    from ..tasks.answers import parse_prediction

    parsed = parse_prediction(raw)
    value = parsed.get("score") if parsed else None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if SCORE_RANGE[0] <= value <= SCORE_RANGE[1] else None


def _redacted(text: str, *, key: str) -> str:
    """An error text with no trace of the key (httpx names the URL, never the headers; this is a second guard),
    on one line and short."""
    if key:
        text = text.replace(key, "***")
    return json.dumps(text)[1:-1][:300]
