"""ASGI middleware: the request body limit, and the accounting of every chat request.

Accounting sits outside everything else, so each chat request (answered, refused with 4xx, failed, or
abandoned by its client) is counted in /metrics and logged once, with the status the client saw.
The route fills in what only it knows (tokens, finish reason, texts) on the request's `RequestOutcome`;
`monitor/accounting.py` turns the finished outcome into metrics and a request-log record.
"""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..monitor.accounting import RequestOutcome, RequestRecorder
from .errors import APIError, error_response

CHAT_PATH = "/v1/chat/completions"
# SageMaker's route for the same request (routes/sagemaker.py): counted and logged the same way.
CHAT_PATHS = frozenset({CHAT_PATH, "/invocations"})
CLIENT_CLOSED = 499  # nginx's code for "the client went away before the answer was complete"
# Refusals of the client's own making, which `refusal_delay_s` paces; 429 and 503 carry Retry-After instead.
PACED_STATUSES = frozenset({400, 401, 404, 413, 422})


class _ClientLeft(Exception):
    """The client disconnected before it finished sending its request body."""


class RequestAccounting:
    """Counts, times and logs each POST /v1/chat/completions; adds an X-Request-ID header to the answer.
    Refusals wait `refusal_delay_s` before their answer: a client flooding bad requests is slowed by its own
    waiting, not by the server's work (8 such clients took good requests' p50 from 65 ms to 1.5 s)."""

    def __init__(self, app: ASGIApp, *, recorder: RequestRecorder, refusal_delay_s: float = 0.0) -> None:
        self.app = app
        self.recorder = recorder
        self.refusal_delay_s = refusal_delay_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in CHAT_PATHS or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        outcome = RequestOutcome()
        scope.setdefault("state", {})["outcome"] = outcome
        sent: dict[str, int | bool] = {"status": 0, "complete": False}

        async def send_and_watch(message: Message) -> None:
            if message["type"] == "http.response.start":
                sent["status"] = message["status"]
                if message["status"] in PACED_STATUSES and self.refusal_delay_s:
                    await asyncio.sleep(self.refusal_delay_s)
                message["headers"] = [*message.get("headers", []), (b"x-request-id", outcome.request_id.encode())]
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                sent["complete"] = True
            await send(message)

        in_flight = self.recorder.metrics.in_flight
        in_flight.inc()
        try:
            await self.app(scope, receive, send_and_watch)
        finally:
            in_flight.dec()
            # No answer started: an exception (500). Started but unfinished: the client went away.
            status = sent["status"] if sent["complete"] else (CLIENT_CLOSED if sent["status"] else 500)
            self.recorder.record(outcome, status=outcome.status or int(status))


class BodySizeLimit:
    """Refuse request bodies over `max_bytes` with 413 before any parsing, whether or not the client sent
    Content-Length, and bodies not received within `timeout_s` with 408. The body is read here (it is small
    by definition) and replayed to the app. A client that leaves mid-body is counted as 499, not 413."""

    def __init__(self, app: ASGIApp, *, max_bytes: int, timeout_s: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._refuse(scope, receive, send, declared=declared)
            return
        try:
            body = await asyncio.wait_for(self._read(receive), self.timeout_s)
        except TimeoutError:
            await self._time_out(scope, receive, send)
            return
        except _ClientLeft:
            # Nobody is left to answer; the accounting counts what happened, not a refusal.
            if "outcome" in scope.get("state", {}):
                scope["state"]["outcome"].status = CLIENT_CLOSED
            return
        if body is None:
            await self._refuse(scope, receive, send, declared=None)
            return
        await self.app(scope, _replay(body, receive), send)

    async def _read(self, receive: Receive) -> bytes | None:
        """The whole body, or None when it grows past the limit; `_ClientLeft` when the client disconnects."""
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _ClientLeft
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return None
            chunks.append(chunk)
            more = message.get("more_body", False)
        return b"".join(chunks)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, *, declared: bytes | None) -> None:
        if declared is not None and not declared.isdigit():
            error = APIError(400, "invalid Content-Length header", code="invalid_content_length")
        else:
            error = APIError(413, f"request body over the {self.max_bytes}-byte limit", code="body_too_large")
        await error_response(error)(scope, receive, send)

    async def _time_out(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Connection: close, as the rest of the body may still arrive and must not be read as a next request.
        message = f"request body not received within {self.timeout_s:g} s"
        error = APIError(408, message, code="body_timeout", headers={"Connection": "close"})
        await error_response(error)(scope, receive, send)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that hands the app the body already read, then defers to the client's (disconnects)."""
    delivered = False

    async def replay() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
