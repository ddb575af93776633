"""The HTTP server: uvicorn, with the limits an open port needs and a shutdown that answers everyone.

    run(create_app(settings), host="127.0.0.1", port=8000)      # what `<project> serve` does

uvicorn alone reads a request head of any size, for any time, on any number of connections (a 100 MB header
took 19.5 s and 1 GB of memory; 8,000 silent connections stayed open), and at the end of its graceful
shutdown cancels what still runs (plain-text 500s, streams cut without a word or a log line). Here, from
the server settings:

- a request head (request line and headers) over LLM_MAX_HEADER_BYTES gets 431;
- a connection without a complete request head LLM_HEADER_TIMEOUT_S after it opened (or after its last
  answer) is closed, with 408 when part of a head had arrived (the body has LLM_BODY_TIMEOUT_S);
- a connection beyond LLM_MAX_CONNECTIONS open ones gets 503 at once and is closed;
- on SIGTERM the server stops accepting, lets requests in flight run LLM_SHUTDOWN_TIMEOUT_S, then ends
  those still waiting for the model with 503 (a stream: a last error event and [DONE]), each logged.

These answers come before the app: they are in uvicorn's log, not in /metrics or the request log.
"""

from __future__ import annotations

import asyncio
import json
import socket
from functools import partial
from http import HTTPStatus

import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .deps import ServerState
from .engine import ServerStopping
from .errors import error_body

LINGER_S = 1.0
"""After a refusal, input is read and dropped this long before closing: closing with unread input sends a
TCP reset, which can destroy the answer before the client reads it."""
SHUTDOWN_MARGIN_S = 1.0
"""uvicorn cancels what still runs this long after the grace period (requests not waiting for the model)."""


def run(app: FastAPI, *, host: str, port: int) -> None:
    """Serve `app` (from `create_app`) until SIGTERM / Ctrl-C, with the limits of its settings."""
    state: ServerState = app.state.server
    settings = state.settings
    http = partial(
        _GuardedHttp,
        max_head_bytes=settings.max_header_bytes,
        head_timeout_s=settings.header_timeout_s,
        max_connections=settings.max_connections,
    )
    grace = settings.shutdown_timeout_s
    config = uvicorn.Config(app, host=host, port=port, http=http, timeout_graceful_shutdown=grace + SHUTDOWN_MARGIN_S)
    _Server(config, state=state).run()


class _Server(uvicorn.Server):
    """uvicorn's server, whose shutdown ends the requests still waiting for the model after the grace period
    with an answer, before uvicorn would cancel them."""

    def __init__(self, config: uvicorn.Config, *, state: ServerState) -> None:
        super().__init__(config)
        self.state = state

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        ending = asyncio.get_running_loop().call_later(self.state.settings.shutdown_timeout_s, self._end_requests)
        try:
            await super().shutdown(sockets)
        finally:
            ending.cancel()

    def _end_requests(self) -> None:
        if self.state.engine is not None:
            message = "the server is shutting down; retry (another replica, or this one once restarted)"
            self.state.engine.end_all(ServerStopping(message))


class _GuardedHttp(HttpToolsProtocol):
    """uvicorn's httptools protocol (one per connection) with a size and a time limit on each request head,
    and a limit on open connections."""

    def __init__(self, *args, max_head_bytes: int, head_timeout_s: float, max_connections: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.max_head_bytes, self.head_timeout_s, self.max_connections = max_head_bytes, head_timeout_s, max_connections
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_bytes, self._head_tail = 0, b""
        self._refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            message = f"over {self.max_connections} open connections (LLM_MAX_CONNECTIONS); retry shortly"
            self._refuse(503, message, code="too_many_connections", headers="retry-after: 1\r\n")
        else:
            self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # dropped: see LINGER_S
        if self._head_timer is not None:  # within a request head: count its bytes, up to the blank line ending it
            joined = self._head_tail + data
            end = joined.find(b"\r\n\r\n")
            self._head_bytes += len(data) if end < 0 else end + 4 - len(self._head_tail)
            self._head_tail = joined[-3:]
            if self._head_bytes > self.max_head_bytes:
                message = f"request headers over the {self.max_head_bytes}-byte limit (LLM_MAX_HEADER_BYTES)"
                self._refuse(431, message, code="headers_too_large")
                return
        super().data_received(data)

    def on_headers_complete(self) -> None:
        self._stop_head_timer()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._await_head()  # the next request on this keep-alive connection

    def _await_head(self) -> None:
        self._head_bytes, self._head_tail = 0, b""
        self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_timed_out)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._head_bytes == 0:
            self.transport.close()  # a silent or idle connection: nobody to answer
            return
        message = f"request headers not received within {self.head_timeout_s:g} s (LLM_HEADER_TIMEOUT_S)"
        self._refuse(408, message, code="header_timeout")

    def _refuse(self, status: int, message: str, *, code: str, headers: str = "") -> None:
        """Answer `status` in OpenAI's error shape, then drop the rest of the input and close."""
        self.logger.warning("%s from %s: %s", status, self.client, message)
        self._stop_head_timer()
        self._refused = True
        body = json.dumps(error_body(status, message, code=code), separators=(",", ":")).encode()
        head = f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\ncontent-type: application/json\r\n"
        head += f"content-length: {len(body)}\r\nconnection: close\r\n{headers}\r\n"
        self.transport.write(head.encode() + body)
        self.loop.call_later(LINGER_S, self.transport.close)
