"""Prometheus metrics of the API, on a registry of their own (one per app, so tests start from zero).

    curl -s localhost:8000/metrics | grep '^llm_'

Names and labels (the alert rules and the Grafana dashboard query these):

- `llm_requests_total{status, finish_reason}`: chat completion requests by outcome. `status` is the HTTP
  status as text ("200", "400", "429", "504", ...; "499" when the client went away mid-answer);
  `finish_reason` is "stop", "length" or "none" (no answer: any error).
- `llm_request_duration_seconds`: time from request received to last byte sent, every outcome.
- `llm_time_to_first_token_seconds`: streaming requests only, request received to first text sent.
- `llm_prompt_tokens`, `llm_completion_tokens`: token counts of answered requests.
- `llm_requests_in_flight`: chat requests being handled now (queued or generating).
- `llm_batch_size`: requests generated together in one `generate` call (the micro-batcher's work).
- `llm_model_info{name, version, base_model}`: always 1; tells a dashboard which model answered.
"""

from __future__ import annotations

from functools import partial

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

# Seconds: a tiny model answers in ~0.05 s, a 1B model on a CPU in tens of seconds.
LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
TOKEN_BUCKETS = (8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class ServeMetrics:
    """The API's metrics; `render()` gives the text Prometheus scrapes."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        # process_resident_memory_bytes, CPU seconds, open files (Linux /proc): what scripts/load_test.py and a
        # memory alert read; the default registry would hold them, but this one is the app's own.
        ProcessCollector(registry=self.registry)
        histogram = partial(Histogram, registry=self.registry)
        self.requests = Counter(
            "llm_requests", "Chat completion requests by outcome.", ["status", "finish_reason"], registry=self.registry
        )
        self.duration = histogram(
            "llm_request_duration_seconds", "Received to last byte sent.", buckets=LATENCY_BUCKETS
        )
        self.time_to_first_token = histogram(
            "llm_time_to_first_token_seconds", "Streaming: received to first text sent.", buckets=LATENCY_BUCKETS
        )
        self.prompt_tokens = histogram("llm_prompt_tokens", "Prompt tokens per answer.", buckets=TOKEN_BUCKETS)
        self.completion_tokens = histogram(
            "llm_completion_tokens", "Tokens generated per answer.", buckets=TOKEN_BUCKETS
        )
        self.batch_size = histogram("llm_batch_size", "Requests per generate call.", buckets=BATCH_BUCKETS)
        self.in_flight = Gauge("llm_requests_in_flight", "Chat requests being handled now.", registry=self.registry)
        self.model_info = Gauge(
            "llm_model_info",
            "The served model (value always 1).",
            ["name", "version", "base_model"],
            registry=self.registry,
        )

    def set_model(self, *, name: str, version: str, base_model: str) -> None:
        self.model_info.clear()  # one model at a time: a reload must not leave the old one reported
        self.model_info.labels(name=name, version=version, base_model=base_model).set(1)

    def observe_request(
        self,
        *,
        status: int,
        finish_reason: str | None,
        duration_s: float,
        prompt_tokens: int | None,
        completion_tokens: int | None,
    ) -> None:
        self.requests.labels(status=str(status), finish_reason=finish_reason or "none").inc()
        self.duration.observe(duration_s)
        if status == 200 and prompt_tokens is not None and completion_tokens is not None:
            self.prompt_tokens.observe(prompt_tokens)
            self.completion_tokens.observe(completion_tokens)

    def render(self) -> bytes:
        return generate_latest(self.registry)
