"""Request accounting: what one chat request did, and recording it once it has ended.

    outcome = RequestOutcome()                         # opened when the request arrives
    ...                                                # the route fills in tokens, texts, finish reason
    recorder.record(outcome, status=200)               # -> /metrics counters + one request-log line

`serve/middleware.py` opens the outcome and calls `record` with the status the client saw; the chat route
fills in what only it knows. Both sides reach this module, never each other.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .metrics import ServeMetrics
from .request_log import RequestLog, utc_now_iso

ServedModel = Callable[[], tuple[str, str] | None]
"""Returns the served model's (name, version), or None while no model is loaded."""


@dataclass
class RequestOutcome:
    """What one chat request did; the route sets the fields it learns, the middleware records it."""

    request_id: str = field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex}")
    received_at: str = field(default_factory=utc_now_iso)
    started: float = field(default_factory=time.perf_counter)
    stream: bool = False
    status: int | None = None
    """Set by the route when a streamed answer fails after its 200 was sent (e.g. 504)."""
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    prompt: str | None = None
    """The last user message."""
    response: str | None = None
    finish_reason: str | None = None
    first_token_s: float | None = None

    def elapsed(self) -> float:
        return time.perf_counter() - self.started


class RequestRecorder:
    """Counts each finished chat request in `metrics` and writes its record to `request_log` (if any).

    `request_log` may be set after construction: the server opens the file when it starts, not when the
    app object is built."""

    def __init__(self, *, metrics: ServeMetrics, request_log: RequestLog | None, served_model: ServedModel) -> None:
        self.metrics = metrics
        self.request_log = request_log
        self.served_model = served_model

    def record(self, outcome: RequestOutcome, *, status: int) -> None:
        """Count and log one finished chat request; `status` is the HTTP status the client got."""
        answered = status == 200
        self.metrics.observe_request(
            status=status,
            finish_reason=outcome.finish_reason if answered else None,
            duration_s=outcome.elapsed(),
            prompt_tokens=outcome.prompt_tokens,
            completion_tokens=outcome.completion_tokens,
        )
        if outcome.first_token_s is not None:
            self.metrics.time_to_first_token.observe(outcome.first_token_s)
        if self.request_log is not None:
            self.request_log.write(
                self.log_record(outcome, status=status), prompt=outcome.prompt, response=outcome.response
            )

    def log_record(self, outcome: RequestOutcome, *, status: int) -> dict[str, Any]:
        """The request-log record of `outcome` (request_log.RECORD_KEYS; texts are added by the log)."""
        answered = status == 200
        name, version = self.served_model() or (None, None)
        return {
            "time": outcome.received_at,
            "request_id": outcome.request_id,
            "model": name,
            "model_version": version,
            "status": status,
            "stream": outcome.stream,
            "prompt_tokens": outcome.prompt_tokens,
            "completion_tokens": outcome.completion_tokens if answered else None,
            "prompt_chars": len(outcome.prompt) if outcome.prompt is not None else None,
            "latency_s": round(outcome.elapsed(), 4),
            "finish_reason": outcome.finish_reason if answered else None,
        }
