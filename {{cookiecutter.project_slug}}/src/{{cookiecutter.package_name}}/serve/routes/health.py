"""Liveness and readiness, for load balancers, Docker HEALTHCHECK and Kubernetes probes.

curl -i localhost:8000/health    # 200 while the process serves, even during model loading; 503 once loading failed
curl -i localhost:8000/ready     # 503 until the model is loaded (or when loading failed), then 200
"""

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from ..deps import StateDep
from ..errors import RETRY_AFTER
from ..schemas import HealthStatus, ReadyStatus

router = APIRouter(tags=["health"])


@router.get(
    "/health",
    response_model=None,
    responses={200: {"model": HealthStatus}, 503: {"model": HealthStatus, "description": "Loading the model failed"}},
)
def health(state: StateDep) -> dict[str, str] | JSONResponse:
    """Liveness: 200 while the server works, including a slow model load (no restart mid-load); 503 with the
    error once loading failed, so the container turns unhealthy and gets restarted instead of serving nothing."""
    if state.load_error:
        return JSONResponse({"status": "failed", "error": state.load_error}, status_code=503)
    return {"status": "ok"}


@router.get(
    "/ready",
    response_model=None,
    responses={
        200: {"model": ReadyStatus},
        503: {"model": ReadyStatus, "description": "Loading, or loading failed", "headers": RETRY_AFTER},
    },
)
def ready(state: StateDep) -> dict[str, str] | JSONResponse:
    """Readiness: 200 with the model's name and version once it can answer, 503 before (or on failure)."""
    if state.loaded is None:
        body = {"status": "failed", "error": state.load_error} if state.load_error else {"status": "loading"}
        return JSONResponse(body, status_code=503, headers={"Retry-After": "5"})
    return {"status": "ready", "model": state.loaded.name, "version": state.loaded.version}
