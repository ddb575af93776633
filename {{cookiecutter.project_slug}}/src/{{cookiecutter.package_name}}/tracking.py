"""MLflow experiment runs: parameters, datasets, loss curves and evaluation metrics of each training.

    <project> train --config configs/smoke.yaml     # one MLflow run: the config, the data, the curves
    <project> evaluate --config configs/smoke.yaml  # adds the held-out metrics and reports to that run
    <project> evaluate --config other.yaml --other-data  # a new run, tagged evaluation_of=<training run>
    mlflow ui --backend-store-uri sqlite:///mlflow.db   # browse runs, curves, datasets and models

Embedded by default: runs and the registry live in ./mlflow.db (SQLite) and artifacts in ./mlruns, no
server needed. `MLFLOW_TRACKING_URI=http://host:5000` sends everything to a tracking server instead.
The model versions, their aliases and the promotion gate are in registry.py.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import Config
from .errors import ProjectError, first_line
from .model.device import run_params

if TYPE_CHECKING:
    from datasets import DatasetDict
    from mlflow import MlflowClient
    from transformers import TrainerCallback

log = logging.getLogger(__name__)
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
# Run tags of an evaluation: which rows were scored (sha256 of the rows, their number), so the promotion gate
# compares only versions scored on the same data; and, on a run of `evaluate --other-data`, the training run.
TEST_DIGEST_TAG, TEST_ROWS_TAG = "evaluation.test_digest", "evaluation.test_rows"
EVALUATION_OF_TAG, OTHER_DATA_TAG = "evaluation_of", "other_data"


# MLflow retries an unanswered HTTP request 7 times with growing waits (about 4 minutes in all): a tracking
# server that died mid-run held training that long at a log call. Fewer, shorter tries, unless you set them.
HTTP_RETRIES = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}


class TrackingError(ProjectError, RuntimeError):
    """MLflow is unreachable, or a model URI, run or alias does not exist; the message says what to do."""


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI when set, else the embedded SQLite store in the current (project) folder."""
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def check_tracking_server(
    uri: str | None = None, *, timeout_s: float = 5.0, consequence: str = "Nothing was trained."
) -> None:
    """Fail before the work, not after: an HTTP tracking server must answer MLflow's own API (listing one
    experiment), not merely some page: a wrong port can answer 200 on /health. `consequence` ends the
    message: what the failure left undone. For an HTTP store it also sets HTTP_RETRIES' bounded retry settings
    (unless set already), since every run against a server starts with this check."""
    uri = uri or tracking_uri()
    if not uri.startswith(("http://", "https://")):
        return
    for name, value in HTTP_RETRIES.items():
        os.environ.setdefault(name, value)
    fix = f"Start it, fix MLFLOW_TRACKING_URI, or unset it to track into ./mlflow.db. {consequence}"
    request = urllib.request.Request(
        f"{uri.rstrip('/')}/api/2.0/mlflow/experiments/search?max_results=1", headers=_auth_headers()
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            answer = response.read()
    except urllib.error.HTTPError as err:
        raise TrackingError(
            f"{uri} answers HTTP {err.code} to MLflow's experiments API: not an MLflow tracking server, a wrong "
            f"port, or missing credentials (MLFLOW_TRACKING_USERNAME/PASSWORD or MLFLOW_TRACKING_TOKEN). {fix}"
        ) from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise TrackingError(f"MLflow tracking server {uri} is unreachable ({reason}). {fix}") from None
    try:
        is_mlflow = isinstance(json.loads(answer), dict)  # {"experiments": [...]}, or {} when there are none
    except ValueError:
        is_mlflow = False
    if not is_mlflow:
        raise TrackingError(
            f"{uri} answers, but not as an MLflow tracking server (its experiments API returned no JSON "
            f"object; a wrong port?). {fix}"
        )


def _auth_headers() -> dict[str, str]:
    """The credentials MLflow's own client would send (a server with auth refuses the API without them)."""
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    if token:
        return {"Authorization": f"Bearer {token}"}
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user and password:
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}
    return {}


def client() -> MlflowClient:
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    return mlflow.MlflowClient()


# ---- training runs --------------------------------------------------------------------------------------


@contextmanager
def training_run(
    config: Config, *, run_name: str, config_name: str, run_id: str | None = None, tags: dict[str, str] | None = None
) -> Iterator[str]:
    """An MLflow run around training (`run_id` reopens one, for --resume); yields its id. It ends FINISHED,
    FAILED, or KILLED on Ctrl-C, never left RUNNING. A new run is tagged with `tags` (the training stage)."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    try:  # a server can pass check_tracking_server and still refuse the run (a proxy, a read-only one)
        mlflow.set_experiment(experiment_id=project_experiment_id(config.project))
        if run_id:
            run = mlflow.start_run(run_id=run_id)
        else:
            run = mlflow.start_run(run_name=run_name, tags=run_tags(config_name) | (tags or {}))
    except mlflow.exceptions.MlflowException as err:
        raise TrackingError(
            f"MLflow ({tracking_uri()}) refused to open run {run_name}: {first_line(err)}. Nothing "
            "was trained. Point MLFLOW_TRACKING_URI at an MLflow server you can write to, or unset it to track "
            "into ./mlflow.db."
        ) from None
    try:
        yield run.info.run_id
    except BaseException as err:
        _end_run("KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
        if isinstance(err, mlflow.exceptions.MlflowException):  # the server went away: say what is kept
            raise TrackingError(
                f"MLflow ({tracking_uri()}) stopped answering during run {run_name}: "
                f"{first_line(err)}. The run folder keeps what was trained (checkpoints; the "
                "adapter and train_log.json when training had finished). Once the server answers, `train --resume "
                f"train.run_name={run_name}` with the same --config continues it and registers it."
            ) from None
        raise
    mlflow.end_run("FINISHED")


def _end_run(status: str) -> None:
    """End the active run with `status`, even when the server that should record it is gone."""
    import mlflow

    try:
        mlflow.end_run(status)
    except mlflow.exceptions.MlflowException as err:
        log.warning("MLflow could not record the run as %s (%s)", status, first_line(err, 200))


def project_experiment_id(name: str) -> str:
    """The project's experiment; with the embedded store its artifacts go to mlruns/ beside mlflow.db,
    wherever the command runs from (MLflow would otherwise use ./mlruns of the current folder)."""
    import mlflow

    experiment = mlflow.get_experiment_by_name(name)
    uri, location = tracking_uri(), None
    if uri.startswith("sqlite:///"):
        location = (Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlruns").as_uri()
    if experiment is None:
        return mlflow.create_experiment(name, artifact_location=location)
    if location and experiment.artifact_location.startswith("file:") and experiment.artifact_location != location:
        log.warning(
            "warning: %s records its artifacts in %s, not beside it (%s): the project was moved after a run, "
            "and models logged before load from the old folder. Fix: move the project back, or start a new "
            "store here (delete mlflow.db and mlruns/; outputs/ keeps the runs' adapters).",
            uri, experiment.artifact_location, location,
        )  # fmt: skip
    return experiment.experiment_id


def run_tags(config_name: str) -> dict[str, str]:
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


def log_training_inputs(
    config: Config,
    *,
    splits: DatasetDict,
    config_file: Path,
    device: str,
    data_path: str,
    versions: dict[str, str] | None = None,
) -> None:
    """Parameters (the flattened config), the dataset (read from `data_path`) as an MLflow input, library versions
    (`versions`, default this machine's; an imported job passes its own) and device."""
    import mlflow
    import pandas as pd

    versions = library_versions() if versions is None else versions
    params = flatten(config.model_dump(mode="json")) | {f"data.rows.{name}": len(rows) for name, rows in splits.items()}
    params |= {f"version.{name}": version for name, version in versions.items()} | {"device": device}
    # world size, backend, strategy and effective batch = train.batch_size x accumulation x world size
    batch, accumulation = config.train.batch_size, config.train.gradient_accumulation_steps
    params |= run_params(device=device, batch_size=batch, accumulation=accumulation)
    log_run_params(params)
    mlflow.log_artifact(str(config_file))
    for split, rows in splits.items():
        # One JSON string per conversation (per pair for DPO): MLflow hashes the content into the dataset's digest.
        texts = [json.dumps(messages) for messages in rows["messages"]] if "messages" in rows.column_names else None
        frame = pd.DataFrame({"messages": texts} if texts else {"pair": [json.dumps(row) for row in rows]})
        dataset = mlflow.data.from_pandas(frame, source=data_path, name=f"{Path(data_path).name}-{split}")
        mlflow.log_input(dataset, context=split)


def log_run_params(params: dict[str, Any]) -> None:
    """Log `params` to the active run. A resumed run (--resume train.max_steps=...) may change some: MLflow
    refuses to change a parameter, so a changed value goes to tag `resumed.<key>` and the original stays."""
    import mlflow

    logged = mlflow.get_run(mlflow.active_run().info.run_id).data.params
    mlflow.log_params({key: value for key, value in params.items() if key not in logged})
    changed = {f"resumed.{key}": value for key, value in params.items() if key in logged and logged[key] != str(value)}
    if changed:
        mlflow.set_tags(changed)


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"train": {"seed": 1}} -> {"train.seed": 1}: MLflow parameters are flat."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat |= flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def library_versions() -> dict[str, str]:
    """The versions of the training stack, logged with each run and pinned in each logged model."""
    from importlib.metadata import version

    return {name: version(name) for name in ("torch", "transformers", "peft", "trl", "datasets", "mlflow")}


def metrics_callback() -> TrainerCallback:
    """A Trainer callback logging every loss / eval_loss / learning-rate record to the active run, by step.

    Ours rather than transformers' MLflowCallback (`report_to="mlflow"`). That one would log into our run
    (it starts a run only when none is active and ends only a run it started), but it also logs every
    TrainingArguments field and the model's config as parameters, over a hundred of them beside our
    flattened config, and it is configured by MLFLOW_* environment variables, not by the project's config.

    In a resumed run, the steps after the last checkpoint are trained again: a metric already logged at a
    step is not logged there a second time."""
    import mlflow
    from transformers import TrainerCallback

    last_step = _last_logged_steps(mlflow.active_run().info.run_id)

    class MlflowMetrics(TrainerCallback):
        lost = False  # the server stopped answering: training goes on without it (train_log.json keeps all)

        def on_log(self, args, state, control, logs=None, **kwargs):
            numbers = {
                key: float(value)
                for key, value in (logs or {}).items()
                if isinstance(value, int | float) and state.global_step > last_step.get(key, -1)
            }
            if not numbers or not state.is_world_process_zero or self.lost:
                return
            try:
                mlflow.log_metrics(numbers, step=state.global_step)
            except mlflow.exceptions.MlflowException as err:
                self.lost = True
                reason = first_line(err, 200)
                log.warning("MLflow stopped answering at step %d (%s): training goes on", state.global_step, reason)

    return MlflowMetrics()


def _last_logged_steps(run_id: str) -> dict[str, int]:
    """The newest step of each metric of run `run_id` (none for a new run)."""
    mlflow_client = client()
    metrics = mlflow_client.get_run(run_id).data.metrics
    return {key: max(m.step for m in mlflow_client.get_metric_history(run_id, key)) for key in metrics}


# ---- logging into a finished run -----------------------------------------------------------------------


@contextmanager
def inside_run(run_id: str) -> Iterator[None]:
    """Log into run `run_id`: the active run when it is that one (during training), else reopen it."""
    import mlflow

    active = mlflow.active_run()
    if active is not None and active.info.run_id == run_id:
        yield
        return
    mlflow.set_tracking_uri(tracking_uri())
    # MLflow refuses to reopen a run of another experiment than the process's active one (set by an earlier
    # run of another project in this process): make the run's own experiment the active one.
    mlflow.set_experiment(experiment_id=client().get_run(run_id).info.experiment_id)
    with mlflow.start_run(run_id=run_id):
        yield


def log_evaluation(*, run_id: str, report: dict[str, Any], report_dir: Path, examples: list[dict[str, str]]) -> None:
    """Held-out metrics as `base.<metric>` / `finetuned.<metric>` on the training run, plus the reports, and
    which rows were scored (tags `evaluation.test_digest`, `evaluation.test_rows`: the promotion gate compares them)."""
    with inside_run(run_id):
        _log_scores(report=report, report_dir=report_dir, examples=examples)


def log_other_data_evaluation(
    config: Config, *, run_id: str, report: dict[str, Any], report_dir: Path, examples: list[dict[str, str]]
) -> str:
    """An evaluation on other data than the run's own (`evaluate --other-data`): logged as a NEW run of the
    project's experiment tagged `evaluation_of=<run_id>`, never over the training run's own metrics, which
    the promotion gate reads. Returns the new run's id."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    training_name = client().get_run(run_id).info.run_name
    tags = {EVALUATION_OF_TAG: run_id, OTHER_DATA_TAG: "true"}
    with mlflow.start_run(
        experiment_id=project_experiment_id(config.project), run_name=f"{training_name}-other-data", tags=tags
    ) as run:
        _log_scores(report=report, report_dir=report_dir, examples=examples)
    return run.info.run_id


def _log_scores(*, report: dict[str, Any], report_dir: Path, examples: list[dict[str, str]]) -> None:
    """Into the active run: the metrics, what was scored, eval.json / eval.md and the sample generations."""
    import mlflow

    metrics = {f"{model}.{name}": value for model in ("base", "finetuned") for name, value in report[model].items()}
    mlflow.log_metrics(metrics | evaluation_extras(report))
    mlflow.set_tags({TEST_DIGEST_TAG: report["run"]["test_digest"], TEST_ROWS_TAG: report["run"]["test_rows"]})
    for name in ("eval.json", "eval.md"):
        if (report_dir / name).is_file():
            mlflow.log_artifact(str(report_dir / name), artifact_path="evaluation")
    if examples:
        mlflow.log_table(data=_columns(examples), artifact_file="evaluation/sample_generations.json")


def evaluation_extras(report: dict[str, Any]) -> dict[str, float]:
    """The baselines' metrics (`majority.<metric>`, `few_shot.<metric>`), each interval's ends
    (`<column>.<metric>.ci_low`, `finetuned_minus_<column>.<metric>.ci_low`) and the error-kind shares
    (`errors.<kind>_share`) of eval.json, as MLflow metrics."""
    found = {
        f"{column}.{name}": value
        for column, values in (report.get("baselines") or {}).items()
        for name, value in values.items()
        if isinstance(value, int | float) and not isinstance(value, bool) and name not in ("k", "seed")
    }
    intervals = report.get("intervals") or {}
    for group in ("columns", "differences"):
        for column, by_metric in (intervals.get(group) or {}).items():
            # The headline rates only: eval.json holds every field's interval, the run's metric list stays short.
            for name in set(by_metric) & {"json_valid_rate", "field_accuracy", "exact_match", "rouge_l"}:
                entry = by_metric[name]
                found |= {f"{column}.{name}.ci_low": entry["low"], f"{column}.{name}.ci_high": entry["high"]}
    kinds = (report.get("error_analysis") or {}).get("error_kinds") or {}
    found |= {f"errors.{kind}_share": share for kind, share in (kinds.get("shares") or {}).items()}
    for column, judged in (report.get("judge") or {}).items():  # the raw judge answers stay in eval.json
        found[f"judge.{column}.failures"] = judged["judge_failures"]
        if judged["mean_score"] is not None:
            found[f"judge.{column}.mean_score"] = judged["mean_score"]
    return found


def _columns(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    return {key: [row.get(key) for row in rows] for key in rows[0]}
