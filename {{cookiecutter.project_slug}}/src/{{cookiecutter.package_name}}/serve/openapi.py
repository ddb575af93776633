"""The OpenAPI schema (GET /openapi.json, /docs) as this server really answers, so a client generated from it
works: FastAPI's generated schema, corrected where FastAPI cannot know better.

    curl -s localhost:8000/openapi.json | python -m json.tool
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

from .errors import documented_errors
from .schemas import ChatCompletionRequest
from .settings import Settings

# FastAPI's own 422 body (`{"detail": [...]}`); this server answers OpenAI's error shape instead.
FASTAPI_VALIDATION_SCHEMAS = ("HTTPValidationError", "ValidationError")
REF_TEMPLATE = "#/components/schemas/{model}"


def install_openapi(app: FastAPI, *, settings: Settings) -> None:
    """Make `app.openapi()` (built once, on first request) return the corrected schema for `settings`."""
    generate: Callable[[], dict[str, Any]] = app.openapi

    def corrected() -> dict[str, Any]:
        if app.openapi_schema is None:  # FastAPI's generator caches its result there too; correct it once
            app.openapi_schema = correct_schema(generate(), settings=settings)
        return app.openapi_schema

    app.openapi = corrected  # type: ignore[method-assign]  # FastAPI's documented way to customise it


def correct_schema(schema: dict[str, Any], *, settings: Settings) -> dict[str, Any]:
    """`schema` with FastAPI's validation-error responses removed, the bearer scheme and 401 only when a key
    is set, and the request body's schema exactly as pydantic states it, with this server's max_tokens."""
    api_key_set = settings.api_key is not None
    components = schema.get("components", {})
    for operation in _operations(schema):
        responses = operation["responses"]
        if _is_fastapi_validation_error(responses.get("422", {})):
            del responses["422"]  # routes that can answer 422 declare it, in OpenAI's shape
        if "security" not in operation:
            continue
        if api_key_set:
            responses.update({str(status): spec for status, spec in _error_responses(401).items()})
        else:
            del operation["security"]
    if not api_key_set:
        components.pop("securitySchemes", None)
    for name in FASTAPI_VALIDATION_SCHEMAS:
        components.get("schemas", {}).pop(name, None)
    _exact_request_schema(components.setdefault("schemas", {}), max_tokens=settings.max_tokens)
    return schema


def _operations(schema: dict[str, Any]) -> list[dict[str, Any]]:
    return [operation for path in schema.get("paths", {}).values() for operation in path.values()]


def _is_fastapi_validation_error(response: dict[str, Any]) -> bool:
    ref = response.get("content", {}).get("application/json", {}).get("schema", {}).get("$ref", "")
    return ref.endswith("/HTTPValidationError")


def _error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI form of `documented_errors` (a `$ref` to ErrorResponse, which routes already declare)."""
    responses = {}
    for status, spec in documented_errors(*statuses).items():
        content = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
        responses[status] = {"description": spec["description"], "content": content}
        if "headers" in spec:
            responses[status]["headers"] = spec["headers"]
    return responses


def _exact_request_schema(schemas: dict[str, Any], *, max_tokens: int) -> None:
    """FastAPI's schema models type every bound as a float, which turns seed's 2**63-1 into 2**63 (the next
    float up, which the server refuses); pydantic's own JSON schema keeps integers exact. The upper bound of
    max_tokens is a server setting (LLM_MAX_TOKENS), so it is added here."""
    exact = ChatCompletionRequest.model_json_schema(ref_template=REF_TEMPLATE)
    for name in ("max_tokens", "max_completion_tokens"):
        integer = next(member for member in exact["properties"][name]["anyOf"] if member["type"] == "integer")
        integer["maximum"] = max_tokens
    schemas.update(exact.pop("$defs", {}))
    schemas[ChatCompletionRequest.__name__] = exact
