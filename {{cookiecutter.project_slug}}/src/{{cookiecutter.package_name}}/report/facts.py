"""The facts of one evaluated run, gathered once into `RunFacts`: everything the report shows comes from here.

Reads reports/eval.json (written by `evaluate`) and reports/promotion.json (the gate), then finds the run
behind them: its folder outputs/<run>/ (config.yaml, train_log.json) and its MLflow run (loss history,
logged config, the `config` tag). A missing piece is shown as unknown; only a missing eval.json stops.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import Config, ConfigError, load_config
from ..errors import ProjectError
from ..evaluate.markdown import display_path
from ..registry import is_model_uri
from ..runs import CONFIG_FILE, TRACKING_FILE, TRAIN_LOG, run_config_path

log = logging.getLogger(__name__)
# >>> preference_tuning
from typing import TYPE_CHECKING  # noqa: E402  (the preference_tuning extra's type, for the `parent` field)

if TYPE_CHECKING:
    from .lineage import SftParent
# <<< preference_tuning

History = dict[str, list[tuple[int, float]]]  # "loss" and "eval_loss": (optimizer step, value)


class ReportError(ProjectError, ValueError):
    """The report cannot be written (no evaluation yet, README without markers); nothing was written."""


@dataclass
class RunFacts:
    """Everything the report shows, gathered once from the run's files and MLflow."""

    results: dict[str, Any]  # reports/eval.json
    run_config: Config  # the run's resolved config (or the given one when the run's is not found)
    config_source: str  # where run_config came from
    config_name: str | None  # configs/<name>.yaml that trained it, when known
    history: History  # "loss" and "eval_loss" by optimizer step
    history_source: str
    train_log: dict[str, Any] = field(default_factory=dict)
    promotion: dict[str, Any] | None = None
    # >>> preference_tuning
    parent: SftParent | None = None  # a DPO or GRPO run's SFT model and its evaluation; None for an SFT run
    # <<< preference_tuning

    @property
    def run(self) -> dict[str, Any]:
        """eval.json's "run": adapter, split, number of examples, MLflow run id, model version, timings."""
        return self.results["run"]


def read_results(report_dir: Path) -> dict[str, Any]:
    path = report_dir / "eval.json"
    if not path.is_file():
        raise ReportError(f"{path} not found: run `make evaluate` (or `evaluate --config ...`) first")
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ReportError(f"{path}:{err.lineno}: not valid JSON ({err.msg}); run `make evaluate` again") from None
    missing = [key for key in ("base", "finetuned", "run") if key not in results]
    if missing:
        raise ReportError(f"{path}: missing {', '.join(missing)}; it predates this version: run `make evaluate` again")
    if results["run"].get("other_data"):  # the README and card show a model's results on its own test split
        raise ReportError(
            f"{path} scores the model on other data (`evaluate --other-data`), not on its own test split; "
            "run `make evaluate` (the run's own config) first; nothing was written"
        )
    return results


def gather(config: Config, *, results: dict[str, Any], report_dir: Path) -> RunFacts:
    """The run behind eval.json: its folder, resolved config, loss history and gate decision."""
    run = results["run"]
    # With tracking off, MLflow is not asked at all (no server to wait for, no mlflow.db created).
    run_id = run.get("mlflow_run_id") if config.tracking.enabled else None
    run_dir = find_run_dir(run, output_dir=Path(config.train.output_dir))
    train_log = read_json(run_dir / TRAIN_LOG) if run_dir else {}
    run_config, config_source = _run_config(config, run_dir=run_dir, run_id=run_id)
    history, history_source = loss_history(run_id=run_id, train_log=train_log, run_dir=run_dir)
    promotion = read_json(report_dir / "promotion.json")
    if promotion.get("candidate_version") != run.get("model_version"):
        promotion = {}  # the gate judged another version since: not this run's decision
    # >>> preference_tuning
    from .lineage import sft_parent

    parent = sft_parent(run_config, run_id=run_id, test_digest=run.get("test_digest"), tracking=config.tracking.enabled)
    # <<< preference_tuning
    return RunFacts(
        results=results,
        run_config=run_config,
        config_source=config_source,
        config_name=train_log.get("config_name") or _mlflow_tag(run_id, "config"),
        history=history,
        history_source=history_source,
        train_log=train_log,
        promotion=promotion or None,
        # >>> preference_tuning
        parent=parent,
        # <<< preference_tuning
    )


def find_run_dir(run: dict[str, Any], *, output_dir: Path) -> Path | None:
    """outputs/<run>/ of the evaluated adapter: its parent folder, or the folder whose tracking.json
    names the same MLflow run (when a registry URI was evaluated)."""
    adapter = run.get("adapter") or ""
    if not is_model_uri(adapter) and (Path(adapter).parent / CONFIG_FILE).is_file():
        return Path(adapter).parent
    run_id = run.get("mlflow_run_id")
    if run_id:
        # read_json, not runs.read_tracking_file: a broken tracking.json of another run must not stop this.
        for tracking_file in sorted(output_dir.glob(f"*/{TRACKING_FILE}")):
            if read_json(tracking_file).get("run_id") == run_id:
                return tracking_file.parent
    return None


def read_json(path: Path) -> dict[str, Any]:
    """A JSON file the report can do without: {} when it is missing or not valid JSON (with a warning)."""
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except json.JSONDecodeError:
        log.warning("%s is not valid JSON; ignored", path)
        return {}


def _run_config(config: Config, *, run_dir: Path | None, run_id: str | None) -> tuple[Config, str]:
    """The run's own resolved config.yaml (run folder, else its MLflow artifact); else the given config."""
    path = run_config_path(run_dir=run_dir, run_id=run_id)
    if path is not None:
        try:
            return load_config(path), display_path(path)
        except ConfigError as err:
            log.warning("%s does not load (%s); showing the given config instead", path, err)
    return config, "the config given to `report` (the run's config.yaml was not found)"


def loss_history(*, run_id: str | None, train_log: dict[str, Any], run_dir: Path | None) -> tuple[History, str]:
    """Training and validation loss by step: the MLflow run's metric history, else train_log.json."""
    if run_id:
        history = _mlflow_history(run_id)
        if history["loss"]:
            return history, "the MLflow run's metric history (loss, eval_loss)"
    history = {"loss": [], "eval_loss": []}
    for entry in train_log.get("log_history", []):
        for key in history:
            if key in entry and "step" in entry:
                history[key].append((int(entry["step"]), float(entry[key])))
    if history["loss"] and run_dir is not None:
        return _last_per_step(history), display_path(run_dir / TRAIN_LOG)
    return history, ""


def _mlflow_history(run_id: str) -> History:
    from mlflow.exceptions import MlflowException

    from ..tracking import client

    try:
        mlflow_client = client()
        raw = {key: mlflow_client.get_metric_history(run_id, key) for key in ("loss", "eval_loss")}
    except (MlflowException, OSError) as err:
        log.warning("MLflow history of run %s unavailable (%s); using the local train_log.json", run_id, err)
        return {"loss": [], "eval_loss": []}
    return _last_per_step(
        {key: [(m.step, m.value) for m in sorted(ms, key=lambda m: m.timestamp)] for key, ms in raw.items()}
    )


def _last_per_step(history: History) -> History:
    """One point per step, the newest (a resumed run logs the steps after its checkpoint again)."""
    return {key: sorted(dict(points).items()) for key, points in history.items()}


def _mlflow_tag(run_id: str | None, key: str) -> str | None:
    if not run_id:
        return None
    from mlflow.exceptions import MlflowException

    from ..tracking import client

    try:
        return client().get_run(run_id).data.tags.get(key)
    except (MlflowException, OSError):
        return None


def project_metadata(root: Path) -> dict[str, str]:
    """Name, licence and repository of the project, from its pyproject.toml (defaults without one)."""
    import tomllib

    path = root / "pyproject.toml"
    project = tomllib.loads(path.read_text(encoding="utf-8")).get("project", {}) if path.is_file() else {}
    license_name = project.get("license") if isinstance(project.get("license"), str) else None
    return {
        "name": project.get("name", root.name),
        "description": project.get("description", ""),
        "license": license_name or "Proprietary",
        "repository": project.get("urls", {}).get("Repository", ""),
    }
