"""MLflow: experiment runs, the model registry, the promotion gate, and loading a model by URI.

    <project> train --config configs/smoke.yaml     # logs a run, registers a version, aliases it `candidate`
    <project> evaluate --config configs/smoke.yaml  # logs metrics to that run, then runs the promotion gate
    <project> promote --config configs/smoke.yaml   # the gate on its own
    make mlflow-ui                                  # browse runs, curves, datasets and models

Embedded by default: runs and the registry live in ./mlflow.db (SQLite) and artifacts in ./mlruns, no
server needed. `MLFLOW_TRACKING_URI=http://host:5000` sends everything to a tracking server instead.
Registered model name = the config's `project`; alias `candidate` = the newest version, `champion` =
the version that won the promotion gate.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import Config

if TYPE_CHECKING:
    from datasets import DatasetDict
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion
    from peft import PeftModel
    from transformers import PreTrainedTokenizerBase, TrainerCallback

log = logging.getLogger(__name__)

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
CANDIDATE, CHAMPION = "candidate", "champion"
MODEL_ARTIFACT = "model"  # name of the logged MLflow model inside each run
TRACKING_FILE = "tracking.json"  # in outputs/<run>/: links the run folder to its MLflow run and version


class TrackingError(RuntimeError):
    """MLflow is unreachable, or a model URI, run or alias does not exist; the message says what to do."""


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI when set, else the embedded SQLite store in the current (project) folder."""
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def check_tracking_server(
    uri: str | None = None, *, timeout_s: float = 5.0, consequence: str = "Nothing was trained."
) -> None:
    """Fail before the work, not after: an HTTP tracking server must answer its /health endpoint.
    `consequence` ends the message: what the failure left undone."""
    uri = uri or tracking_uri()
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s) as response:
            response.read()
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise TrackingError(
            f"MLflow tracking server {uri} is unreachable ({reason}). Start it, fix MLFLOW_TRACKING_URI, or "
            f"unset it to track into ./mlflow.db. {consequence}"
        ) from None


def client() -> MlflowClient:
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    return mlflow.MlflowClient()


# ---- training runs --------------------------------------------------------------------------------------


@contextmanager
def training_run(config: Config, *, run_name: str, config_name: str, run_id: str | None = None) -> Iterator[str]:
    """An MLflow run around training (`run_id` reopens one, for --resume); yields its id. It ends FINISHED,
    FAILED, or KILLED on Ctrl-C, never left RUNNING."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    mlflow.set_experiment(experiment_id=_experiment_id(config.project))
    if run_id:
        run = mlflow.start_run(run_id=run_id)
    else:
        run = mlflow.start_run(run_name=run_name, tags=_run_tags(config_name))
    try:
        yield run.info.run_id
    except KeyboardInterrupt:
        mlflow.end_run("KILLED")
        raise
    except BaseException:
        mlflow.end_run("FAILED")
        raise
    mlflow.end_run("FINISHED")


def _experiment_id(name: str) -> str:
    """The project's experiment; with the embedded store its artifacts go to mlruns/ beside mlflow.db,
    wherever the command runs from (MLflow would otherwise use ./mlruns of the current folder)."""
    import mlflow

    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    uri, location = tracking_uri(), None
    if uri.startswith("sqlite:///"):
        location = (Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlruns").as_uri()
    return mlflow.create_experiment(name, artifact_location=location)


def _run_tags(config_name: str) -> dict[str, str]:
    tags = {"config": config_name}
    commit = _git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return tags


def _git_commit() -> str | None:
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def log_training_inputs(config: Config, *, splits: DatasetDict, config_file: Path, device: str) -> None:
    """Parameters (the flattened config), the dataset as an MLflow input, library versions and device."""
    import mlflow
    import pandas as pd

    mlflow.log_params(flatten(config.model_dump(mode="json")))
    mlflow.log_params({f"data.rows.{name}": len(rows) for name, rows in splits.items()})
    mlflow.log_params(
        {f"version.{name}": version for name, version in _library_versions().items()} | {"device": device}
    )
    mlflow.log_artifact(str(config_file))
    for split, rows in splits.items():
        # One JSON string per conversation: MLflow hashes the content into the dataset's digest.
        frame = pd.DataFrame({"messages": [json.dumps(messages) for messages in rows["messages"]]})
        dataset = mlflow.data.from_pandas(frame, source=config.data.path, name=f"{Path(config.data.path).name}-{split}")
        mlflow.log_input(dataset, context=split)


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"train": {"seed": 1}} -> {"train.seed": 1}: MLflow parameters are flat."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat |= flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _library_versions() -> dict[str, str]:
    from importlib.metadata import version

    return {name: version(name) for name in ("torch", "transformers", "peft", "trl", "datasets", "mlflow")}


def metrics_callback() -> TrainerCallback:
    """A Trainer callback logging every loss / eval_loss / learning-rate record to the active run, by step.

    Ours rather than transformers' MLflowCallback, which ends the run when training ends and reads its
    settings from environment variables."""
    import mlflow
    from transformers import TrainerCallback

    class MlflowMetrics(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            numbers = {key: float(value) for key, value in (logs or {}).items() if isinstance(value, int | float)}
            if numbers and state.is_world_process_zero:
                mlflow.log_metrics(numbers, step=state.global_step)

    return MlflowMetrics()


# ---- models and the registry ----------------------------------------------------------------------------


def log_and_register(
    config: Config, *, run_id: str, model: PeftModel, tokenizer: PreTrainedTokenizerBase
) -> ModelVersion | None:
    """Log the trained adapter (the in-memory PeftModel training just saved, so the base model is not
    loaded a second time) as an MLflow transformers model, register it, alias the new version `candidate`."""
    import mlflow

    base = Path(config.model.base_model)
    with _inside_run(run_id):
        info = mlflow.transformers.log_model(
            transformers_model={"model": model, "tokenizer": tokenizer},
            name=MODEL_ARTIFACT,
            task="llm/v1/chat",  # OpenAI-style chat signature: `mlflow models serve` accepts messages
            # A local base is referenced by path (adapter only); a hub base is referenced by its id.
            base_model_path=str(base.resolve()) if base.is_dir() else None,
            pip_requirements=_pip_requirements(),
            input_example={"messages": [{"role": "user", "content": "Where is my order A12345?"}]},
            registered_model_name=config.project if config.tracking.register_model else None,
        )
    if not config.tracking.register_model:
        return None
    version = client().get_model_version(config.project, str(info.registered_model_version))
    client().set_registered_model_alias(config.project, CANDIDATE, version.version)
    log.info("registered %s version %s as @%s", config.project, version.version, CANDIDATE)
    return version


@contextmanager
def _inside_run(run_id: str) -> Iterator[None]:
    """Log into run `run_id`: the active run when it is that one (during training), else reopen it."""
    import mlflow

    active = mlflow.active_run()
    if active is not None and active.info.run_id == run_id:
        yield
        return
    mlflow.set_tracking_uri(tracking_uri())
    with mlflow.start_run(run_id=run_id):
        yield


def _pip_requirements() -> list[str]:
    # Explicit, because inference on CPU-only installs otherwise fails looking for torchvision.
    versions = _library_versions()
    return [f"{name}=={versions[name]}" for name in ("torch", "transformers", "peft")] + ["accelerate"]


def write_tracking_file(run_dir: Path, *, run_id: str, version: ModelVersion | None) -> None:
    """outputs/<run>/tracking.json: lets `evaluate` log into the same MLflow run later."""
    record = {
        "tracking_uri": tracking_uri(),
        "run_id": run_id,
        "model_version": str(version.version) if version else None,
    }
    (run_dir / TRACKING_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def read_tracking_file(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / TRACKING_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def log_evaluation(*, run_id: str, report: dict[str, Any], report_dir: Path, examples: list[dict[str, str]]) -> None:
    """Held-out metrics as `base.<metric>` / `finetuned.<metric>` on the training run, plus the reports."""
    import mlflow

    metrics = {f"{model}.{name}": value for model in ("base", "finetuned") for name, value in report[model].items()}
    with _inside_run(run_id):
        mlflow.log_metrics(metrics)
        for name in ("eval.json", "eval.md"):
            if (report_dir / name).is_file():
                mlflow.log_artifact(str(report_dir / name), artifact_path="evaluation")
        if examples:
            mlflow.log_table(data=_columns(examples), artifact_file="evaluation/sample_generations.json")


def _columns(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    return {key: [row.get(key) for row in rows] for key in rows[0]}


# ---- promotion gate -------------------------------------------------------------------------------------


@dataclass
class Decision:
    """What the gate decided and why; written to reports/promotion.json and to the version's tags."""

    model: str
    candidate_version: str
    champion_version: str | None
    metric: str
    direction: str
    candidate_value: float | None
    champion_value: float | None
    promoted: bool
    reason: str


def promote(config: Config, *, version: str | None = None, report_dir: Path | None = None) -> Decision:
    """Make the candidate (or `version`) `champion` if it beats the current champion on the configured
    metric, or if there is no champion yet. A losing candidate leaves the champion untouched."""
    mlflow_client = client()
    name, metric = config.project, config.tracking.promotion_metric
    candidate = _version(mlflow_client, name, version=version, alias=None if version else CANDIDATE)
    champion = _alias_or_none(mlflow_client, name, CHAMPION)
    candidate_value = _run_metric(mlflow_client, candidate.run_id, metric)
    champion_value = _run_metric(mlflow_client, champion.run_id, metric) if champion else None
    promoted, reason = _judge(
        candidate_value, champion_value, direction=config.tracking.promotion_direction, has_champion=bool(champion)
    )
    if champion is not None and str(champion.version) == str(candidate.version):
        promoted, reason = True, f"version {candidate.version} is already {CHAMPION}"
    decision = Decision(
        model=name,
        candidate_version=str(candidate.version),
        champion_version=str(champion.version) if champion else None,
        metric=metric,
        direction=config.tracking.promotion_direction,
        candidate_value=candidate_value,
        champion_value=champion_value,
        promoted=promoted,
        reason=reason,
    )
    _record(mlflow_client, decision, report_dir=report_dir)
    return decision


def _judge(candidate: float | None, champion: float | None, *, direction: str, has_champion: bool) -> tuple[bool, str]:
    if candidate is None:
        return False, "the candidate has no value for the metric: run `evaluate` first"
    if not has_champion:
        return True, "no champion yet"
    if champion is None:
        return True, "the champion has no value for the metric"
    better = candidate > champion if direction == "maximize" else candidate < champion
    verdict = "beats" if better else "does not beat"
    return better, f"candidate {candidate:.4g} {verdict} champion {champion:.4g} ({direction})"


def _record(mlflow_client: MlflowClient, decision: Decision, *, report_dir: Path | None) -> None:
    if decision.promoted:
        mlflow_client.set_registered_model_alias(decision.model, CHAMPION, decision.candidate_version)
    tags = {
        "promotion.decision": "promoted" if decision.promoted else "rejected",
        "promotion.reason": decision.reason,
        "promotion.metric": decision.metric,
        "promotion.compared_to": decision.champion_version or "none",
    }
    if decision.champion_version != decision.candidate_version:  # re-judging the champion keeps its record
        for key, value in tags.items():
            mlflow_client.set_model_version_tag(decision.model, decision.candidate_version, key, value)
    if report_dir is not None:
        report_dir.mkdir(parents=True, exist_ok=True)
        (report_dir / "promotion.json").write_text(json.dumps(asdict(decision), indent=2) + "\n", encoding="utf-8")


def _version(mlflow_client: MlflowClient, name: str, *, version: str | None, alias: str | None) -> ModelVersion:
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


def _alias_or_none(mlflow_client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    from mlflow.exceptions import MlflowException

    try:
        return mlflow_client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def _run_metric(mlflow_client: MlflowClient, run_id: str, metric: str) -> float | None:
    return mlflow_client.get_run(run_id).data.metrics.get(metric)


# ---- loading by URI -------------------------------------------------------------------------------------


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


def fetch_model(source: str, *, download_dir: Path | None = None) -> ModelSource:
    """The one loading function of evaluation and serving. `source` is `models:/<name>@<alias>`,
    `models:/<name>/<version>`, `runs:/<run id>/model`, or a local adapter folder."""
    if source.startswith(("models:/", "runs:/")):
        return _fetch_from_mlflow(source, download_dir=download_dir)
    return _local_source(Path(source))


def run_config_file(run_id: str) -> Path | None:
    """The resolved config.yaml that training logged to run `run_id` (downloaded), or None if absent."""
    import mlflow
    from mlflow.exceptions import MlflowException

    mlflow.set_tracking_uri(tracking_uri())
    try:
        return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="config.yaml"))
    except (MlflowException, OSError):
        return None


def _local_source(adapter_dir: Path) -> ModelSource:
    uris = "models:/<name>@champion, models:/<name>/<version> or runs:/<id>/model"
    if not adapter_dir.exists():
        raise TrackingError(f"{adapter_dir}: no such folder; pass outputs/<run>/adapter or a model URI ({uris})")
    config_file = adapter_dir / "adapter_config.json"
    if not config_file.is_file():
        raise TrackingError(f"{adapter_dir}: not a LoRA adapter folder (no adapter_config.json) nor a URI ({uris})")
    base = json.loads(config_file.read_text(encoding="utf-8"))["base_model_name_or_path"]
    tracked = read_tracking_file(adapter_dir.parent) or {}
    return ModelSource(
        adapter_dir=adapter_dir,
        tokenizer_dir=adapter_dir,
        base_model=base,
        name=adapter_dir.parent.name,
        version=tracked.get("model_version"),
        run_id=tracked.get("run_id"),
    )


def _fetch_from_mlflow(source: str, *, download_dir: Path | None) -> ModelSource:
    import mlflow
    import yaml
    from mlflow.exceptions import MlflowException

    mlflow.set_tracking_uri(tracking_uri())
    try:
        local = Path(
            mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=download_dir and str(download_dir))
        )
    except MlflowException as err:
        raise TrackingError(f"model {source} not found in {tracking_uri()}: {err.message.splitlines()[0]}") from None
    flavor = yaml.safe_load((local / "MLmodel").read_text(encoding="utf-8"))["flavors"]["transformers"]
    base = flavor.get("local_base_model_path") or flavor["source_model_name"]
    name, version, run_id = _identify(source)
    return ModelSource(
        adapter_dir=local / flavor["peft_adaptor"],
        tokenizer_dir=local / "components" / "tokenizer",
        base_model=base,
        name=name,
        version=version,
        run_id=run_id,
    )


def _identify(source: str) -> tuple[str, str | None, str]:
    """(name, version, run id) of a model URI: aliases resolve to a real version, so logs name it."""
    if source.startswith("runs:/"):
        run_id = source.removeprefix("runs:/").split("/", 1)[0]
        return run_id, None, run_id
    reference = source.removeprefix("models:/").rstrip("/")
    name, alias = reference.split("@", 1) if "@" in reference else (reference.partition("/")[0], None)
    number = None if alias else reference.partition("/")[2]
    version = _version(client(), name, version=number, alias=alias)
    return name, str(version.version), version.run_id
