"""GET /metrics for Prometheus. A plain route: mounting prometheus_client's ASGI app at /metrics would
answer 307 redirects to /metrics/, which some scrapers do not follow."""

from fastapi import APIRouter, Response

from ..deps import MetricsDep

router = APIRouter(tags=["monitoring"])


@router.get("/metrics", include_in_schema=False)
def metrics(metrics: MetricsDep) -> Response:
    return Response(metrics.render(), media_type=metrics.content_type)
