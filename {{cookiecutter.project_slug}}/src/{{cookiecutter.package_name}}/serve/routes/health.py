"""Liveness and readiness, for load balancers, Docker HEALTHCHECK and Kubernetes probes.

curl -i localhost:8000/health    # 200 while the process serves HTTP, even during model loading
curl -i localhost:8000/ready     # 503 until the model is loaded, then 200
"""

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from ..deps import StateDep

router = APIRouter(tags=["health"])


@router.get("/health")
def health() -> dict[str, str]:
    """Liveness: the server answers. Never depends on the model, so a slow load is not a restart."""
    return {"status": "ok"}


@router.get("/ready", response_model=None)
def ready(state: StateDep) -> dict[str, str] | JSONResponse:
    """Readiness: 200 with the model's name and version once it can answer, 503 before (or on failure)."""
    if state.loaded is None:
        body = {"status": "failed", "error": state.load_error} if state.load_error else {"status": "loading"}
        return JSONResponse(body, status_code=503, headers={"Retry-After": "5"})
    return {"status": "ready", "model": state.loaded.name, "version": state.loaded.version}
