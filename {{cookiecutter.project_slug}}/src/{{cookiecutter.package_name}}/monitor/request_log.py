"""The request log: one JSON line per chat completion request, the input of `monitor drift`.

    tail -f logs/requests.jsonl

A record holds exactly RECORD_KEYS. `status` is the HTTP status the client got (200 = answered; 499 = it
went away mid-answer); `completion_tokens` and `finish_reason` are null unless it is 200; `prompt_tokens`
and `prompt_chars` (characters of the last user message) are null when the request was refused before its
prompt was read (401, 413, 422, ...). With `log_texts` on, `prompt` (that message) and `response` are
added, both through `redact`: the log must not become a store of customers' contact or card details.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..errors import BadInput

log = logging.getLogger(__name__)

RECORD_KEYS = (
    "time",
    "request_id",
    "model",
    "model_version",
    "status",
    "stream",
    "prompt_tokens",
    "completion_tokens",
    "prompt_chars",
    "latency_s",
    "finish_reason",
)
# Order matters: card numbers before phone numbers, which would otherwise claim their digits. Each pattern
# can start only at the beginning of a run and has bounded repeats, so a 64 KB prompt takes linear time.
_REDACTIONS = (
    (re.compile(r"(?<![\w.+-])[\w.+-]+@[\w-]+(?:\.[\w-]+)+"), "[EMAIL]"),
    # 13-19 digits, optionally grouped by spaces or dashes: the lengths of payment card numbers.
    (re.compile(r"\b(?:\d[ -]?){12,18}\d\b"), "[CARD]"),
    # An optional +country code, then at least 9 digits with the usual separators; shorter numbers
    # (order ids, zip codes, quantities) are what the task extracts and stay readable.
    (re.compile(r"(?<![\w+])\+?\(?\d[\d ().-]{7,20}\d(?!\w)"), "[PHONE]"),
)


def redact(text: str) -> str:
    """`text` with e-mail addresses, card-like numbers and phone numbers masked."""
    for pattern, mask in _REDACTIONS:
        text = pattern.sub(lambda match, mask=mask: mask if _enough_digits(match.group()) else match.group(), text)
    return text


def _enough_digits(candidate: str) -> bool:
    # The phone pattern also matches runs like "12-05 2024"; 9+ digits is where phone numbers start.
    return "@" in candidate or sum(ch.isdigit() for ch in candidate) >= 9


class RequestLogError(BadInput):
    """The request log cannot be written where LLM_REQUEST_LOG points."""


def check_request_log(path: str | Path) -> None:
    """Refuse a request log that cannot be created or appended to, before the server starts (the app opens it in
    its start-up, where an OSError would be a traceback). Creates nothing: it checks the file, or else the
    nearest folder above it that exists (the rest of the path is created when the log is opened)."""
    path = Path(path)
    existing = path if path.exists() else next((parent for parent in path.parents if parent.exists()), Path("."))
    if existing == path:
        problem = "it is a folder" if path.is_dir() else None if os.access(path, os.W_OK) else "the file is read-only"
    elif not existing.is_dir():
        problem = f"{existing} is a file, not a folder"
    else:
        problem = None if os.access(existing, os.W_OK | os.X_OK) else f"the folder {existing} is not writable"
    if problem:
        raise _unwritable(path, problem)


def _unwritable(path: Path, problem: str) -> RequestLogError:
    return RequestLogError(
        f"LLM_REQUEST_LOG={path}: cannot write the request log ({problem}); point it at a writable file, "
        "or set LLM_REQUEST_LOG= (empty) to switch the log off"
    )


class RequestLog:
    """Appends records to a JSONL file; safe to call from the event loop and worker threads at once."""

    def __init__(self, path: str | Path, *, log_texts: bool = False) -> None:
        self.path = Path(path)
        self.log_texts = log_texts
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Line-buffered append: each record reaches the file whole, even if the server is killed later.
            # backslashreplace: text UTF-8 cannot encode (a lone surrogate such as "\ud800", which JSON escapes
            # can carry) is written as its JSON escape, so the line is kept and every other line is unchanged.
            self._file = self.path.open("a", encoding="utf-8", errors="backslashreplace", buffering=1)
        except OSError as err:
            raise _unwritable(self.path, err.strerror or str(err)) from None

    def write(self, record: dict[str, Any], *, prompt: str | None = None, response: str | None = None) -> None:
        """Append `record` (RECORD_KEYS; `time` is filled in when missing) and, if enabled, the redacted texts.
        Never raises: a request must not fail because of its log line (a full disk is logged instead)."""
        line = {key: record.get(key) for key in RECORD_KEYS}
        line["time"] = line["time"] or utc_now_iso()
        if self.log_texts:
            line["prompt"] = redact(prompt) if prompt is not None else None
            line["response"] = redact(response) if response is not None else None
        text = json.dumps(line, ensure_ascii=False, default=str) + "\n"
        with self._lock:
            try:
                if not self._file.closed:
                    self._file.write(text)
            except (OSError, ValueError):
                log.exception("could not write request %s to %s", line["request_id"], self.path)

    def close(self) -> None:
        with self._lock:
            self._file.close()


def utc_now_iso() -> str:
    """The request log's time format: ISO 8601, UTC, milliseconds."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")
