"""The FastAPI application: wiring only. Each part lives in its own module (see the package docstring).

    <project> serve --model outputs/<run>/adapter           # settings from LLM_* variables and CLI options
    uvicorn --factory <package>.serve.app:create_app       # the app alone, without serve/server.py's limits

The model loads in a background thread started by the lifespan, so /health answers at once (a big model
can take minutes to load; a liveness probe must not kill the server meanwhile) and /ready turns 200 when
the model can answer. A failed load turns both to 503 with the error.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial

from fastapi import FastAPI

from ..monitor.metrics import ServeMetrics
from ..monitor.request_log import RequestLog
from .deps import ServerState
from .engine import Engine
from .errors import install_error_handlers
from .loader import LoadedModel, load_for_serving
from .middleware import BodySizeLimit, RequestAccounting
from .openapi import install_openapi
from .routes import chat, demo, health, metrics, models
from .settings import Settings

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, *, loaded: LoadedModel | None = None) -> FastAPI:
    """The API for `settings` (default: read from the environment). Nothing loads until the app starts.

    `loaded`: a model already loaded by `load_for_serving`, served instead of loading `settings.model` (its
    name and system prompt are those it was loaded with). Tests build many apps around one loaded model;
    each app still makes, starts and stops its own engine."""
    settings = settings or Settings()
    state = ServerState(settings=settings, metrics=ServeMetrics())
    app = FastAPI(
        title="LLM API",
        summary="OpenAI-compatible chat completions of a LoRA fine-tuned model",
        lifespan=partial(_lifespan, preloaded=loaded),
    )
    app.state.server = state
    install_error_handlers(app)
    install_openapi(app, settings=settings)
    for module in (health, models, chat, metrics, demo):
        app.include_router(module.router)
    # >>> aws
    from .routes import sagemaker  # SageMaker's /ping and /invocations, for the aws deployment

    app.include_router(sagemaker.router)
    # <<< aws
    # Added last = outermost: accounting sees the 413s of the size limit, and every other outcome.
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes, timeout_s=settings.body_timeout_s)
    app.add_middleware(RequestAccounting, recorder=state.recorder, refusal_delay_s=settings.refusal_delay_s)
    return app


@asynccontextmanager
async def _lifespan(app: FastAPI, *, preloaded: LoadedModel | None) -> AsyncIterator[None]:
    state: ServerState = app.state.server
    recorder = state.recorder
    if state.settings.request_log is not None:
        recorder.request_log = RequestLog(state.settings.request_log, log_texts=state.settings.log_texts)
    loading = asyncio.create_task(_load(state, preloaded=preloaded))
    try:
        yield
    finally:
        await asyncio.shield(loading)  # a load cannot be interrupted mid-way; let it end before cleanup
        if state.engine is not None:
            await asyncio.to_thread(state.engine.stop)  # a batch may need a moment: the loop stays free
        if recorder.request_log is not None:
            recorder.request_log.close()


async def _load(state: ServerState, *, preloaded: LoadedModel | None) -> None:
    """Load the model off the event loop (unless `preloaded`); on failure keep serving and report the error
    on /health (liveness fails: the container gets restarted) and /ready."""
    settings = state.settings
    load, engine_class = backend(settings)
    try:
        loaded = preloaded or await asyncio.to_thread(load, settings)
    except Exception as err:  # any failure must reach /ready and the log, not kill the loop silently
        log.exception("loading the model failed")
        state.load_error = f"{type(err).__name__}: {err}"
        return
    engine = engine_class(
        loaded.model,
        loaded.tokenizer,
        max_batch_size=settings.max_batch_size,
        batch_wait_s=settings.batch_wait_ms / 1000,
        max_queue=settings.max_queue,
        on_batch=state.metrics.batch_size.observe,
    )
    engine.start()
    state.metrics.set_model(name=loaded.name, version=loaded.version, base_model=loaded.base_model)
    state.engine, state.loaded, state.loaded_at = engine, loaded, int(time.time())
    log.info("ready: %s (version %s) on %s", loaded.name, loaded.version, loaded.device)


def backend(settings: Settings) -> tuple[Callable[[Settings], LoadedModel], type[Engine]]:
    """The loader and engine of the configured backend."""
    # >>> llama_cpp
    if settings.backend == "llama.cpp":
        from .llama_cpp import LlamaCppEngine, load_gguf_for_serving

        return load_gguf_for_serving, LlamaCppEngine
    # <<< llama_cpp
    return load_for_serving, Engine
