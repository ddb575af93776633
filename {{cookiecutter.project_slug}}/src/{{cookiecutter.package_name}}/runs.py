"""What a training run leaves in outputs/<run>/, and how to find it again.

    outputs/<run>/adapter/          the LoRA adapter + tokenizer (model/load.py and registry.py load it)
    outputs/<run>/config.yaml       CONFIG_FILE: the resolved config, also logged to the MLflow run
    outputs/<run>/train_log.json    TRAIN_LOG: loss by step, wall time, hardware (`report` reads it)
    outputs/<run>/tracking.json     TRACKING_FILE: the MLflow run and registered version of this folder

Every module that reads or writes these files takes their names from here, so they cannot drift apart.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .tracking import tracking_uri

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion

CONFIG_FILE = "config.yaml"
TRAIN_LOG = "train_log.json"
TRACKING_FILE = "tracking.json"


def write_tracking_file(run_dir: Path, *, run_id: str, version: ModelVersion | None) -> None:
    """outputs/<run>/tracking.json: lets `evaluate` (and --resume) log into the same MLflow run later."""
    record = {
        "tracking_uri": tracking_uri(),
        "run_id": run_id,
        "model_version": str(version.version) if version else None,
    }
    (run_dir / TRACKING_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def read_tracking_file(run_dir: Path) -> dict[str, Any] | None:
    """The run folder's tracking.json, or None for a run trained with tracking off."""
    path = run_dir / TRACKING_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def run_config_path(*, run_dir: Path | None = None, run_id: str | None = None) -> Path | None:
    """The resolved config.yaml that trained a model: the run folder's when it has one, else the copy
    training logged to MLflow run `run_id` (downloaded to a temporary folder), else None."""
    if run_dir is not None and (run_dir / CONFIG_FILE).is_file():
        return run_dir / CONFIG_FILE
    if not run_id:
        return None
    import mlflow
    from mlflow.exceptions import MlflowException

    mlflow.set_tracking_uri(tracking_uri())
    try:
        return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=CONFIG_FILE))
    except (MlflowException, OSError):  # no such run, or one trained before the config was logged
        return None
