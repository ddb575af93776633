"""The server's shared state, and the FastAPI dependencies that hand its parts to the routes.

    async def route(engine: EngineDep, settings: SettingsDep): ...

Tests swap a part with `app.dependency_overrides[get_engine] = ...`.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ..monitor.accounting import RequestOutcome, RequestRecorder
from ..monitor.metrics import ServeMetrics
from .engine import Engine
from .errors import APIError
from .loader import LoadedModel
from .settings import Settings


@dataclass
class ServerState:
    """Everything the app holds: settings, metrics and request accounting from the start; model and engine
    once loaded. The request log is opened by the app's lifespan (`recorder.request_log`)."""

    settings: Settings
    metrics: ServeMetrics
    loaded: LoadedModel | None = None
    engine: Engine | None = None
    load_error: str | None = None
    loaded_at: int = 0
    """Unix time the model became ready (the `created` of /v1/models)."""
    recorder: RequestRecorder = field(init=False)
    """Records each finished chat request (metrics + request log), naming the model loaded at that time."""

    def __post_init__(self) -> None:
        self.recorder = RequestRecorder(metrics=self.metrics, request_log=None, served_model=self.served_model)

    def served_model(self) -> tuple[str, str] | None:
        """(name, version) of the model being served; None until it has loaded."""
        return (self.loaded.name, self.loaded.version) if self.loaded else None


def get_state(request: Request) -> ServerState:
    return request.app.state.server


StateDep = Annotated[ServerState, Depends(get_state)]


def get_settings(state: StateDep) -> Settings:
    return state.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


def get_metrics(state: StateDep) -> ServeMetrics:
    return state.metrics


MetricsDep = Annotated[ServeMetrics, Depends(get_metrics)]


def get_loaded(state: StateDep) -> LoadedModel:
    """The served model's description; 503 while it is loading (or if loading failed)."""
    if state.loaded is None:
        reason = f"the model failed to load: {state.load_error}" if state.load_error else "the model is loading"
        raise APIError(
            503, f"{reason}; retry when /ready answers 200", code="model_not_ready", headers={"Retry-After": "5"}
        )
    return state.loaded


LoadedDep = Annotated[LoadedModel, Depends(get_loaded)]


def get_engine(state: StateDep, loaded: LoadedDep) -> Engine:
    assert state.engine is not None  # set together with `loaded`
    return state.engine


EngineDep = Annotated[Engine, Depends(get_engine)]


def get_outcome(request: Request) -> RequestOutcome:
    """The record RequestAccounting opened for this chat request."""
    return request.state.outcome


OutcomeDep = Annotated[RequestOutcome, Depends(get_outcome)]

_bearer = HTTPBearer(auto_error=False)  # a missing header is our 401 in OpenAI's shape, not FastAPI's 403


def require_api_key(
    settings: SettingsDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    """401 unless LLM_API_KEY is unset or the request carries `Authorization: Bearer <key>`."""
    if settings.api_key is None:
        return
    expected = settings.api_key.get_secret_value().encode()
    given = credentials.credentials.encode() if credentials else b""
    if not secrets.compare_digest(given, expected):  # constant time: no timing hints about the key
        raise APIError(
            401,
            "missing or wrong API key: send Authorization: Bearer <key>",
            code="invalid_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )
