"""The MLflow model registry: model versions, their aliases, and loading a model by URI.

    <project> train --config configs/smoke.yaml     # registers a version, aliases it `candidate`
    <project> evaluate --config configs/smoke.yaml  # then runs the promotion gate on that version
    <project> promote --config configs/smoke.yaml   # the gate on its own (evaluate/gate.py)
    <project> serve --model models:/<project>@champion

Registered model name = the config's `project`; alias `candidate` = the newest version, `champion` = the
version that won the gate (it beats the champion on `tracking.promotion_metric`, scored on the same test rows:
the `evaluation.test_digest` tags of both training runs must agree). Serving, evaluation, preference pairs,
drift, the deploy bundle and vLLM find a model through one function, `resolve_model_source`, whatever the
source: `latest` (the newest outputs/*/adapter), a run folder outputs/<run>, its adapter folder, or an MLflow
model URI `models:/<name>@<alias>`, `models:/<name>/<version>`, `runs:/<run id>/model` (downloaded).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from .config import Config
from .errors import first_line
from .model.load import ModelSourceError, check_adapter_dir, newest_adapter, read_adapter_config
from .runs import read_tracking_file, run_config_path
from .tracking import (
    TrackingError,
    client,
    inside_run,
    library_versions,
    tracking_uri,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion
    from peft import PeftModel
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)

CANDIDATE, CHAMPION = "candidate", "champion"
MODEL_ARTIFACT = "model"  # name of the logged MLflow model inside each run
COMMAND = __package__.replace("_", "-")  # the console script, as in __main__.py: named in the reasons
LATEST = "latest"  # the model source meaning the newest outputs/*/adapter
_URIS = "models:/<name>@champion, models:/<name>/<version> or runs:/<id>/model"


def is_model_uri(source: str | Path) -> bool:
    """True for an MLflow model URI (`models:/...`, `runs:/...`), False for a local folder.

    The same scheme test as MLflow's `is_models_uri` / `RunsArtifactRepository.is_runs_uri`, without
    importing mlflow (seconds) to ask."""
    try:
        return urlparse(str(source)).scheme in ("models", "runs")
    except ValueError:  # e.g. an unbalanced "[" in the netloc: not a URI
        return False


# ---- registering versions -------------------------------------------------------------------------------


def log_and_register(
    config: Config, *, run_id: str, model: PeftModel, tokenizer: PreTrainedTokenizerBase, example: str | None = None
) -> ModelVersion | None:
    """Log the trained adapter (the in-memory PeftModel training just saved, so the base model is not
    loaded a second time) as an MLflow transformers model, register it, alias the new version `candidate`.
    `example`: a user message of the task's own (training passes its first row's), shown as the model's input
    example in MLflow; None logs none.

    Idempotent per run: when the run already has a version (a registration cut short by kill -9, then
    `--resume`), that version is finished (alias, tags) and returned; no second version is created."""
    import mlflow

    if config.tracking.register_model and (existing := _version_of_run(config.project, run_id)) is not None:
        log.info("run %s already has %s version %s: finishing it", run_id, config.project, existing.version)
        return _finish_version(config, run_id=run_id, version=existing)
    base = Path(config.model.base_model)
    with inside_run(run_id):
        info = mlflow.transformers.log_model(
            transformers_model={"model": model, "tokenizer": tokenizer},
            name=MODEL_ARTIFACT,
            task="llm/v1/chat",  # OpenAI-style chat signature: `mlflow models serve` accepts messages
            # A local base is referenced by path (adapter only); a hub base is referenced by its id.
            base_model_path=str(base.resolve()) if base.is_dir() else None,
            pip_requirements=_pip_requirements(),
            input_example={"messages": [{"role": "user", "content": example}]} if example else None,
            registered_model_name=config.project if config.tracking.register_model else None,
        )
    if not config.tracking.register_model:
        return None
    version = client().get_model_version(config.project, str(info.registered_model_version))
    return _finish_version(config, run_id=run_id, version=version)


def _version_of_run(name: str, run_id: str) -> ModelVersion | None:
    """The registered version of model `name` that run `run_id` already has (the oldest), or None."""
    from mlflow.exceptions import MlflowException

    try:
        found = client().search_model_versions(f"name='{name}' and run_id='{run_id}'")
    except MlflowException:  # no such registered model yet
        return None
    return min(found, key=lambda v: int(v.version)) if found else None


def _finish_version(config: Config, *, run_id: str, version: ModelVersion) -> ModelVersion:
    """Alias `version` candidate and tag it with its run's lineage: safe to repeat."""
    client().set_registered_model_alias(config.project, CANDIDATE, version.version)
    # The run's stage and (DPO) SFT parent on the version too, so the registry shows what each version is.
    lineage = {k: v for k, v in client().get_run(run_id).data.tags.items() if k == "stage" or k.startswith("parent.")}
    for key, value in lineage.items():
        client().set_model_version_tag(config.project, version.version, key, value)
    log.info("registered %s version %s as @%s", config.project, version.version, CANDIDATE)
    return version


def _pip_requirements() -> list[str]:
    # Explicit, because inference on CPU-only installs otherwise fails looking for torchvision.
    versions = library_versions()
    return [f"{name}=={versions[name]}" for name in ("torch", "transformers", "peft")] + ["accelerate"]


def logged_row_scores(mlflow_client: MlflowClient, run_id: str) -> dict[str, dict[str, list[float]]]:
    """eval.json's `row_scores` from the run's `evaluation/` artifacts; {} when it has none."""
    import tempfile

    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory() as folder:
        try:
            path = mlflow_client.download_artifacts(run_id, "evaluation/eval.json", folder)
            return json.loads(Path(path).read_text(encoding="utf-8")).get("row_scores") or {}
        except (MlflowException, OSError, json.JSONDecodeError):
            return {}


def version_of(mlflow_client: MlflowClient, name: str, *, version: str | None, alias: str | None) -> ModelVersion:
    from mlflow.exceptions import MlflowException

    try:
        if alias:
            return mlflow_client.get_model_version_by_alias(name, alias)
        return mlflow_client.get_model_version(name, version)
    except MlflowException:
        wanted = f"@{alias}" if alias else f"version {version}"
        raise TrackingError(
            f"registered model '{name}' has no {wanted} in {tracking_uri()}; train first (make train) "
            "or check MLFLOW_TRACKING_URI"
        ) from None


def alias_or_none(mlflow_client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    from mlflow.exceptions import MlflowException

    try:
        return mlflow_client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


# ---- resolving a model source ----------------------------------------------------------------------------


@dataclass
class ModelSource:
    """A model ready to load from local folders: the adapter (+ tokenizer) and the base it adapts."""

    adapter_dir: Path
    tokenizer_dir: Path
    base_model: str
    name: str
    version: str | None
    run_id: str | None
    """The MLflow run that trained it (None for an untracked local adapter)."""
    uri: str | None = None
    """The MLflow model URI it was downloaded from; None for a local adapter folder."""

    @property
    def run_dir(self) -> Path | None:
        """The run folder holding the adapter (its config.yaml, tracking.json); None for a downloaded model."""
        return None if self.uri else self.adapter_dir.parent

    def config_path(self, *, ask_mlflow: bool = True) -> Path | None:
        """The config.yaml that trained it: the run folder's, else (`ask_mlflow`) the copy logged to its MLflow
        run, else None."""
        return run_config_path(run_dir=self.run_dir, run_id=self.run_id if ask_mlflow else None)


def resolve_model_source(
    source: str | Path | None, *, output_dir: str | Path = "outputs", given_as: str = "--model"
) -> ModelSource:
    """The one model-source resolver (serving, evaluation, preference pairs, drift, the deploy bundle, vLLM).

    `source` is `latest` or None (the newest `output_dir`/*/adapter), a run folder holding adapter/, an adapter
    folder, or an MLflow model URI (models:/<name>@<alias>, models:/<name>/<version>, runs:/<id>/model), which
    is downloaded. ModelSourceError (a ModelError) names the source as `given_as` it (--model, --adapter,
    model.adapter) and what to pass instead."""
    if source is None or str(source) == LATEST:
        return _local_source(newest_adapter(output_dir, given_as=given_as))
    if is_model_uri(source):
        try:
            return fetch_model(str(source))
        except TrackingError as err:
            raise ModelSourceError(f"{given_as} {source}: {err}") from None
    folder = Path(source).expanduser()
    adapter_dir = folder / "adapter" if (folder / "adapter").is_dir() else folder  # a run folder: its adapter
    if not adapter_dir.is_dir():
        raise ModelSourceError(
            f"{given_as} {source}: no such folder; pass outputs/<run>/adapter, `latest` or a model URI ({_URIS})"
        )
    return _local_source(adapter_dir)


def _local_source(adapter_dir: Path) -> ModelSource:
    check_adapter_dir(adapter_dir)  # the weights and a readable adapter_config.json, before anything loads
    tracked = read_tracking_file(adapter_dir.parent) or {}
    return ModelSource(
        adapter_dir=adapter_dir,
        tokenizer_dir=adapter_dir,
        base_model=read_adapter_config(adapter_dir)["base_model_name_or_path"],
        name=adapter_dir.parent.name,
        version=tracked.get("model_version"),
        run_id=tracked.get("run_id"),
    )


def fetch_model(uri: str, *, download_dir: Path | None = None) -> ModelSource:
    """Download the MLflow model `uri` (models:/<name>@<alias>, models:/<name>/<version>, runs:/<id>/model);
    TrackingError when the store has no such model. Callers resolve sources with `resolve_model_source`."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.models import Model

    mlflow.set_tracking_uri(tracking_uri())
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=download_dir and str(download_dir)))
    except MlflowException as err:
        raise TrackingError(f"model {uri} not found in {tracking_uri()}: {first_line(err)}") from None
    # The transformers flavor of the MLmodel file names the adapter folder and the base it adapts.
    flavor = Model.load(local).flavors["transformers"]
    name, version, run_id = _identify(uri)
    return ModelSource(
        adapter_dir=local / flavor["peft_adaptor"],
        tokenizer_dir=local / "components" / "tokenizer",
        base_model=flavor.get("local_base_model_path") or flavor["source_model_name"],
        name=name,
        version=version,
        run_id=run_id,
        uri=uri,
    )


def _identify(source: str) -> tuple[str, str | None, str]:
    """(name, version, run id) of a model URI: aliases resolve to a real version, so logs name it."""
    from mlflow.exceptions import MlflowException
    from mlflow.store.artifact.runs_artifact_repo import RunsArtifactRepository
    from mlflow.store.artifact.utils.models import get_model_name_and_version

    # Not in mlflow's public API (neither is RunsArtifactRepository.parse_runs_uri), but the parser its own
    # `models:/` downloads use; it accepts exactly the URIs download_artifacts just did.

    if RunsArtifactRepository.is_runs_uri(source):
        run_id, _ = RunsArtifactRepository.parse_runs_uri(source)
        return run_id, None, run_id
    mlflow_client = client()
    try:
        resolved = get_model_name_and_version(mlflow_client, source)  # @alias and /latest -> a version number
    except MlflowException as err:
        raise TrackingError(f"model {source} not found in {tracking_uri()}: {first_line(err)}") from None
    if len(resolved) == 1:  # models:/<model id>: a logged model, not a registered version
        logged = mlflow_client.get_logged_model(resolved[0])
        return logged.name, None, logged.source_run_id
    name, number = resolved
    version = version_of(mlflow_client, name, version=number, alias=None)
    return name, str(version.version), version.run_id
