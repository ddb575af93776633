"""Every error the API answers has OpenAI's shape, so OpenAI clients raise their usual exceptions:

{"error": {"message": "...", "type": "invalid_request_error", "param": "max_tokens", "code": "..."}}
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)

# OpenAI's error types by status; a client library picks its exception class by the status.
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    408: "timeout_error",  # the request body did not arrive within LLM_BODY_TIMEOUT_S
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_error",
    504: "timeout_error",
}

# What each status means here, for the OpenAPI schema; every one of them has the ErrorResponse body.
ERROR_DESCRIPTIONS = {
    400: "Malformed request: invalid JSON, not JSON, a prompt over LLM_MAX_PROMPT_TOKENS or max_tokens over "
    "LLM_MAX_TOKENS",
    401: "Missing or wrong API key (only when the server has LLM_API_KEY set)",
    404: "Unknown model name",
    408: "The request body did not arrive within LLM_BODY_TIMEOUT_S",
    413: "Request body over LLM_MAX_BODY_BYTES",
    422: "A field of the wrong type or out of its range; `param` names the first such field",
    429: "Queue full; retry after the Retry-After seconds",
    500: "Generation failed (only this request's; the others of its batch are answered)",
    503: "The model is loading or failed to load; retry after the Retry-After seconds",
    504: "No complete answer within LLM_GENERATION_TIMEOUT_S",
}
RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before retrying", "schema": {"type": "integer"}}}


class ErrorDetail(BaseModel):
    model_config = ConfigDict(use_attribute_docstrings=True)

    message: str
    type: str
    """OpenAI's error type for the status: invalid_request_error, authentication_error, rate_limit_error, ..."""
    param: str | None
    """The request field at fault, when there is one (`messages.0.content`)."""
    code: str | None
    """A stable, machine-readable reason (`max_tokens_exceeded`, `queue_full`, ...)."""


class ErrorResponse(BaseModel):
    """OpenAI's error body, the one shape of every error this API answers."""

    error: ErrorDetail


def documented_errors(*statuses: int) -> dict[int | str, dict]:
    """The `responses` of a route that can answer `statuses`, each with OpenAI's error body."""
    responses: dict[int | str, dict] = {}
    for status in statuses:
        responses[status] = {"model": ErrorResponse, "description": ERROR_DESCRIPTIONS[status]}
        if status in (429, 503):
            responses[status]["headers"] = RETRY_AFTER
    return responses


class APIError(Exception):
    """An error answered to the client with `status` and OpenAI's error body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers


def error_body(status: int, message: str, *, param: str | None = None, code: str | None = None) -> dict:
    error_type = ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def error_response(error: APIError) -> JSONResponse:
    body = error_body(error.status, error.message, param=error.param, code=error.code)
    return JSONResponse(body, status_code=error.status, headers=error.headers)


def install_error_handlers(app: FastAPI) -> None:
    """Answer API errors, invalid requests, unknown routes and unexpected failures in the one shape."""
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)


async def _api_error(request: Request, error: APIError) -> JSONResponse:
    return error_response(error)


async def _invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
    """Malformed JSON is 400; JSON of the wrong shape or types is 422, naming each field (at most 3)."""
    problems = error.errors()
    if any(problem["type"] == "json_invalid" for problem in problems):
        reason = problems[0].get("ctx", {}).get("error", "JSON decode error")
        return error_response(APIError(400, f"the body is not valid JSON: {reason}", code="invalid_json"))
    if "json" not in request.headers.get("content-type", ""):
        # FastAPI parses only bodies declared as JSON (a guard against cross-site form posts).
        return error_response(
            APIError(400, "send the body as JSON with Content-Type: application/json", code="invalid_json")
        )
    by_field: dict[str, str] = {}  # a union type reports once per member: keep the first message per field
    for problem in problems:
        by_field.setdefault(_field(problem["loc"]), problem["msg"])
    described = [f"{field}: {message}" for field, message in list(by_field.items())[:3]]
    more = f" (and {len(by_field) - 3} more)" if len(by_field) > 3 else ""
    param = next(iter(by_field), None)
    return error_response(APIError(422, "; ".join(described) + more, param=param, code="invalid_value"))


def _field(loc: tuple) -> str:
    """`messages.0.content` from FastAPI's ('body', 'messages', 0, 'content', 'str'): without the body
    prefix and the union member tags pydantic adds (`str`, `list[TextPart]`, `constrained-str`, ...)."""
    parts = [str(part) for part in loc if part != "body" and not _is_union_tag(part)]
    return ".".join(parts) or "body"


def _is_union_tag(part: object) -> bool:
    plain = ("str", "int", "float", "bool", "none")
    return isinstance(part, str) and (part in plain or "[" in part or part.startswith("constrained-"))


async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
    # Routing errors (404 unknown path, 405 wrong method) and FastAPI's own 400s.
    return error_response(APIError(error.status_code, str(error.detail), headers=getattr(error, "headers", None)))


async def _unexpected(request: Request, error: Exception) -> JSONResponse:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return error_response(APIError(500, "internal server error; the server log has the details", code="internal"))
