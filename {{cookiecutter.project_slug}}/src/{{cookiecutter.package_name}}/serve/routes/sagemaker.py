"""SageMaker's container contract, so the same image runs as a SageMaker real-time endpoint.

SageMaker starts the image as `docker run <image> serve` (the image's `serve` program), sends traffic to
port 8080 and uses two routes (https://docs.aws.amazon.com/sagemaker/latest/dg/your-algorithms-inference-code.html):

    GET  /ping           200 once the model can answer (SageMaker polls it until then, then keeps checking)
    POST /invocations    the request body of POST /v1/chat/completions; the same answer

The API key (LLM_API_KEY) applies as on /v1: leave it unset on SageMaker, where IAM signs every call.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, StreamingResponse

from ..deps import EngineDep, LoadedDep, OutcomeDep, SettingsDep, StateDep, require_api_key
from ..schemas import ChatCompletion, ChatCompletionRequest, ReadyStatus
from . import chat

router = APIRouter(tags=["sagemaker"])


@router.get(
    "/ping",
    response_model=None,
    responses={200: {"model": ReadyStatus}, 503: {"model": ReadyStatus, "description": "Loading, or loading failed"}},
)
def ping(state: StateDep) -> dict[str, str] | JSONResponse:
    """Health in SageMaker's sense: 200 when the model is loaded, 503 while it loads or after it failed."""
    if state.loaded is None:
        return JSONResponse({"status": "failed" if state.load_error else "loading"}, status_code=503)
    return {"status": "ready"}


@router.post(
    "/invocations", response_model=None, responses=chat.CHAT_RESPONSES, dependencies=[Depends(require_api_key)]
)
async def invocations(
    body: ChatCompletionRequest, engine: EngineDep, loaded: LoadedDep, settings: SettingsDep, outcome: OutcomeDep
) -> ChatCompletion | StreamingResponse:
    """A chat completion, exactly as POST /v1/chat/completions answers it (counted and logged the same way)."""
    return await chat.chat_completions(body, engine=engine, loaded=loaded, settings=settings, outcome=outcome)
