"""GET /v1/models: the one model this server serves, as OpenAI lists models."""

from fastapi import APIRouter, Depends

from ..deps import LoadedDep, StateDep, require_api_key
from ..errors import APIError, documented_errors
from ..schemas import ModelCard, ModelList

router = APIRouter(prefix="/v1", tags=["models"], dependencies=[Depends(require_api_key)])


@router.get("/models", responses=documented_errors(503))
def list_models(loaded: LoadedDep, state: StateDep) -> ModelList:
    return ModelList(data=[_card(loaded.name, state)])


@router.get("/models/{model_id}", responses=documented_errors(404, 503))
def get_model(model_id: str, loaded: LoadedDep, state: StateDep) -> ModelCard:
    if model_id != loaded.name:
        raise APIError(
            404,
            f"model {model_id!r} is not served here; this server serves {loaded.name!r}",
            param="model",
            code="model_not_found",
        )
    return _card(loaded.name, state)


def _card(name: str, state: StateDep) -> ModelCard:
    return ModelCard(id=name, created=state.loaded_at, owned_by="local")
