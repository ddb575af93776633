"""POST /v1/chat/completions: OpenAI's chat completions, answered whole or streamed as server-sent events.

    curl localhost:8000/v1/chat/completions -H 'Content-Type: application/json' \\
      -d '{"messages": [{"role": "user", "content": "Where is order B11688?"}], "max_tokens": 64}'
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from functools import partial

from fastapi import APIRouter, Depends
from fastapi.responses import Response, StreamingResponse

from ...monitor.accounting import RequestOutcome
from ..deps import EngineDep, LoadedDep, OutcomeDep, SettingsDep, require_api_key
from ..engine import (
    Completion,
    Engine,
    EngineBusy,
    GenerationFailed,
    GenerationParams,
    Job,
    PromptError,
    ServerStopping,
)
from ..errors import APIError, documented_errors, error_body
from ..loader import LoadedModel
from ..schemas import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    Delta,
    Usage,
)
from ..settings import Settings

router = APIRouter(prefix="/v1", tags=["chat"], dependencies=[Depends(require_api_key)])


# Each event's `data` is a ChatCompletionChunk as JSON, an error object (a failure after the 200 went out), or
# the final `[DONE]`. In OpenAPI 3.1 a text/event-stream schema describes one event.
SSE_EVENT_SCHEMA = {
    "type": "object",
    "required": ["data"],
    "properties": {
        "data": {"type": "string", "description": "A ChatCompletionChunk or an ErrorResponse as JSON, or [DONE]"},
        "event": {"type": "string"},
    },
}
# Answers of every chat request: JSON, or server-sent events with `stream: true`; and each error it can get.
CHAT_RESPONSES: dict[int | str, dict] = {
    200: {
        "model": ChatCompletion,
        "description": "The answer; with `stream: true`, server-sent events ending with `data: [DONE]`",
        "content": {"text/event-stream": {"schema": SSE_EVENT_SCHEMA}},
    },
    **documented_errors(400, 404, 408, 413, 422, 429, 500, 503, 504),
}


@router.post("/chat/completions", response_model=None, responses=CHAT_RESPONSES)
async def chat_completions(
    body: ChatCompletionRequest, engine: EngineDep, loaded: LoadedDep, settings: SettingsDep, outcome: OutcomeDep
) -> Response:
    """Generate the assistant's reply to `messages`; `stream: true` sends it piece by piece."""
    outcome.stream = body.stream
    prompt_ids, params = await _prepare(body, engine=engine, loaded=loaded, settings=settings, outcome=outcome)
    try:
        job = engine.submit(prompt_ids, params, stream=body.stream)
    except EngineBusy as err:
        raise APIError(
            429, f"server busy: {err}; retry shortly", code="queue_full", headers={"Retry-After": "1"}
        ) from None
    deadline = outcome.started + settings.generation_timeout_s
    if body.stream:
        usage = bool(body.stream_options and body.stream_options.include_usage)
        events = _sse(job, outcome=outcome, model=loaded.name, deadline=deadline, settings=settings, usage=usage)
        # no-cache / no buffering: proxies (nginx) must pass each event on at once.
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(events, media_type="text/event-stream", headers=headers)
    completion = await _result(job, deadline=deadline, settings=settings)
    _record(outcome, completion)
    answer = ChatCompletion(
        id=outcome.request_id,
        created=int(time.time()),
        model=loaded.name,
        choices=[Choice(message=AssistantMessage(content=completion.text), finish_reason=completion.finish_reason)],
        usage=_usage(outcome),
    )
    # Serialized by pydantic in one call: FastAPI's jsonable_encoder walk + json.dumps costs ~1 ms a request.
    return Response(answer.model_dump_json(), media_type="application/json")


async def _prepare(
    body: ChatCompletionRequest, *, engine: Engine, loaded: LoadedModel, settings: Settings, outcome: RequestOutcome
) -> tuple[list[int], GenerationParams]:
    """The prompt's token ids and the generation parameters; 400/404 for what this server cannot serve."""
    if body.model is not None and body.model != loaded.name:
        message = f"model {body.model!r} is not served here; use {loaded.name!r} (see GET /v1/models)"
        raise APIError(404, message, param="model", code="model_not_found")
    prompt_ids = await _encode(
        body, engine=engine, settings=settings, system_prompt=loaded.system_prompt, outcome=outcome
    )
    max_tokens = body.max_completion_tokens or body.max_tokens or settings.max_tokens
    if max_tokens > settings.max_tokens:
        message = f"max_tokens={max_tokens} is over this server's limit of {settings.max_tokens}"
        raise APIError(400, message, param="max_tokens", code="max_tokens_exceeded")
    params = GenerationParams(
        max_tokens=max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        stop=body.stop_sequences(),
        seed=body.seed,
    )
    return prompt_ids, params


async def _encode(
    body: ChatCompletionRequest,
    *,
    engine: Engine,
    settings: Settings,
    system_prompt: str | None,
    outcome: RequestOutcome,
) -> list[int]:
    """Token ids of the prompt (with the default system prompt when the request has none), within the cap."""
    messages = [message.for_template() for message in body.messages]
    if system_prompt and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system_prompt})
    outcome.prompt = next((m["content"] for m in reversed(messages) if m["role"] == "user"), None)
    try:
        prompt_ids = await engine.encode(messages)
    except PromptError as err:
        raise APIError(400, str(err), param="messages", code="invalid_messages") from None
    outcome.prompt_tokens = len(prompt_ids)
    if len(prompt_ids) > settings.max_prompt_tokens:
        message = f"the prompt is {len(prompt_ids)} tokens; this server accepts at most {settings.max_prompt_tokens}"
        raise APIError(400, message, param="messages", code="context_length_exceeded")
    return prompt_ids


async def _result(job: Job, *, deadline: float, settings: Settings) -> Completion:
    """The whole answer, or 504 at the deadline (the job is then dropped from its batch) / 500 on failure."""
    try:
        async with asyncio.timeout(max(0.0, deadline - time.perf_counter())):
            return await job.result()
    except TimeoutError:
        raise _timeout(settings) from None
    except GenerationFailed as err:
        raise _failed(err) from None
    finally:
        job.cancel()  # no-op when done; frees the row when the client timed out or went away


async def _sse(
    job: Job, *, outcome: RequestOutcome, model: str, deadline: float, settings: Settings, usage: bool
) -> AsyncIterator[str]:
    """Server-sent events: a role chunk, text chunks, a finish chunk (+ usage), then `data: [DONE]`.
    An error after the 200 went out becomes an `error` event (which OpenAI clients raise), then `[DONE]`."""
    chunk = partial(ChatCompletionChunk, id=outcome.request_id, created=int(time.time()), model=model)
    yield _event(chunk(choices=[ChunkChoice(delta=Delta(role="assistant", content=""))]))
    try:
        while True:
            # The timeout wraps only the wait, never a `yield`: it must not fire inside the consumer's code.
            async with asyncio.timeout(max(0.0, deadline - time.perf_counter())):
                event = await job.next_event()
            if isinstance(event, Completion):
                break
            if outcome.first_token_s is None:
                outcome.first_token_s = outcome.elapsed()
            yield _event(chunk(choices=[ChunkChoice(delta=Delta(content=event))]))
    except (TimeoutError, GenerationFailed) as err:
        error = _timeout(settings) if isinstance(err, TimeoutError) else _failed(err)
        outcome.status = error.status
        yield f"data: {json.dumps(error_body(error.status, error.message, code=error.code))}\n\n"
        yield "data: [DONE]\n\n"
        return
    finally:
        job.cancel()
    _record(outcome, event)
    yield _event(chunk(choices=[ChunkChoice(delta=Delta(), finish_reason=event.finish_reason)]))
    if usage:
        yield _event(chunk(choices=[], usage=_usage(outcome)))
    yield "data: [DONE]\n\n"


def _event(chunk: ChatCompletionChunk) -> str:
    return f"data: {chunk.model_dump_json(exclude_none=True)}\n\n"


def _record(outcome: RequestOutcome, completion: Completion) -> None:
    outcome.completion_tokens = completion.completion_tokens
    outcome.finish_reason = completion.finish_reason
    outcome.response = completion.text


def _usage(outcome: RequestOutcome) -> Usage:
    prompt, completion = outcome.prompt_tokens or 0, outcome.completion_tokens or 0
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


def _timeout(settings: Settings) -> APIError:
    return APIError(
        504, f"no complete answer within {settings.generation_timeout_s:g} s (LLM_GENERATION_TIMEOUT_S)", code="timeout"
    )


def _failed(err: GenerationFailed) -> APIError:
    if isinstance(err, ServerStopping):
        return APIError(503, str(err), code="server_shutting_down", headers={"Retry-After": "5"})
    return APIError(500, str(err), code="generation_failed")
