"""One APIRouter per resource: health (liveness, readiness), models, chat, metrics, and the demo page."""
