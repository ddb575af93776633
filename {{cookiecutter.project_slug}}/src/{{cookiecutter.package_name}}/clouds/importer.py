"""Bring a cloud job's results (or a notebook's run.zip) into this project as if it had been trained here.

    <project> cloud fetch <job id>          # downloads the job's output, then import_run
    <project> cloud fetch path/to/run.zip   # a run packed by notebooks/train_on_colab.ipynb

`import_run` copies `outputs/<run>/` and `reports/` in, then creates the MLflow run a local `train` would have
made: the resolved config as parameters, every logged step of train_log.json as metric history, the data
splits as dataset inputs, the job's id and target (and a cloud job's instance, region, billed seconds and cost)
as tags; logs and
registers the adapter (alias `candidate`), logs the evaluation, and runs the promotion gate, as `evaluate` does.
A job already imported (its `cloud.job_id` tag is on a run of the project's experiment) is refused.

The archive never decides where files go: the run lands in this project's outputs/ and reports/ (the default
train.output_dir and eval.report_dir, relative to the project folder), whatever its config.yaml says, and the
imported config.yaml is rewritten to say so. A .zip past MAX_UNPACKED_BYTES or MAX_FILES is refused unopened.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from ..config import Config, EvalConfig, TrainConfig, load_config
from ..errors import BadInput
from ..runs import CONFIG_FILE, TRAIN_LOG, write_tracking_file
from .entrypoint import JOB_FILE, rewrite_config

JOB_ID_TAG = "cloud.job_id"
EVAL_FILES = ("eval.json", "eval.md")
# A run holds an adapter (tens of MB for a 7B model's LoRA; full-precision weights of a small model stay well
# under 2 GiB), a few config and log files, and its checkpoints are left out: an archive past either cap is not
# a run but a zip bomb (a 1.2 MB zip can unpack to 1 GiB), refused before a byte is unpacked.
MAX_UNPACKED_BYTES = 2 * 1024**3
MAX_FILES = 10_000
# This project's folders (the config defaults, relative to the project folder): where every import goes.
PROJECT_OUTPUT_DIR, PROJECT_REPORT_DIR = TrainConfig().output_dir, EvalConfig().report_dir


class RunImportError(BadInput, ValueError):
    """A job's output cannot be imported (files missing, already imported, run folder taken); nothing changed."""


@dataclass
class ImportedRun:
    run_dir: Path
    run_id: str | None
    version: str | None
    promoted: bool | None


@contextmanager
def _unpacked(path: Path) -> Iterator[Path]:
    """The job's output folder: `path` itself, or a .zip extracted to a temporary folder."""
    if path.is_dir():
        yield path
        return
    if not zipfile.is_zipfile(path):
        raise RunImportError(f"{path}: neither a folder nor a .zip of a run (from `cloud fetch` or the notebook)")
    with tempfile.TemporaryDirectory(prefix="cloud-import-") as scratch, zipfile.ZipFile(path) as archive:
        _check_size(path, archive)
        try:
            archive.extractall(scratch)
        except (zipfile.BadZipFile, EOFError) as err:  # e.g. a member larger than its header says: bad CRC
            raise RunImportError(f"{path}: a damaged .zip ({err}); nothing was imported") from None
        inner = [p for p in Path(scratch).iterdir() if p.is_dir()]
        # A zip of the folder itself holds one top folder; a zip of its content holds outputs/ at the top.
        yield inner[0] if len(inner) == 1 and not (Path(scratch) / "outputs").is_dir() else Path(scratch)


def _check_size(path: Path, archive: zipfile.ZipFile) -> None:
    """Refuse an archive whose members would unpack past MAX_FILES or MAX_UNPACKED_BYTES. zipfile stops reading
    a member at the size its header declares (a member that holds more fails its CRC), so the headers bound it."""
    members = archive.infolist()
    unpacked = sum(member.file_size for member in members)
    if len(members) > MAX_FILES or unpacked > MAX_UNPACKED_BYTES:
        raise RunImportError(
            f"{path}: {len(members):,} files, {unpacked:,} bytes unpacked; a run's archive holds at most "
            f"{MAX_FILES:,} files and {MAX_UNPACKED_BYTES:,} bytes. Nothing was imported"
        )


def _layout(folder: Path) -> Path:
    """The one outputs/<run>/ folder, after checking every file the import needs is there."""
    runs = sorted(p for p in (folder / "outputs").glob("*") if p.is_dir()) if (folder / "outputs").is_dir() else []
    if len(runs) != 1:
        raise RunImportError(f"{folder}: expected exactly one outputs/<run>/ folder, found {len(runs)}")
    needed = [runs[0] / "adapter", runs[0] / CONFIG_FILE, runs[0] / TRAIN_LOG, folder / "reports" / "eval.json"]
    missing = [str(p.relative_to(folder)) for p in needed if not p.exists()]
    if missing:
        raise RunImportError(
            f"{folder}: missing {', '.join(missing)}; the job did not finish (see `cloud status`), or this is "
            "not a job's output"
        )
    return runs[0]


def import_run(
    path: Path,
    *,
    job: dict[str, Any],
    output_dir: str | Path = PROJECT_OUTPUT_DIR,
    report_dir: str | Path = PROJECT_REPORT_DIR,
) -> ImportedRun:
    """Import the job output at `path` (folder or .zip). `job`: job_id, target, instance_type, region,
    billed_s, usd_per_hour, instance_count (what is unknown may be missing). Refuses a second import. The run
    goes to `output_dir`/<run>/ and its reports to `report_dir` (this project's), never where the archive's
    config.yaml points."""
    with _unpacked(Path(path)) as folder:
        source = _layout(folder)
        config = load_config(source / CONFIG_FILE)
        run_dir = Path(output_dir) / source.name
        _refuse_second_import(config, job_id=str(job["job_id"]), run_dir=run_dir)
        shutil.copytree(source, run_dir)
        updates: dict[str, Any] = {"train.output_dir": str(output_dir), "eval.report_dir": str(report_dir)}
        # >>> cloud_training
        if job.get("usd_per_hour") is not None:  # the report's cost estimate: wall time x this job's price
            updates["report.hourly_cost_usd"] = float(job["usd_per_hour"])
        # <<< cloud_training
        rewrite_config(run_dir / CONFIG_FILE, updates)
        config = load_config(run_dir / CONFIG_FILE)
        report_dir = Path(config.eval.report_dir)
        report_dir.mkdir(parents=True, exist_ok=True)
        for name in EVAL_FILES:
            if (folder / "reports" / name).is_file():
                shutil.copy2(folder / "reports" / name, report_dir / name)
        record = json.loads((folder / JOB_FILE).read_text(encoding="utf-8")) if (folder / JOB_FILE).is_file() else {}
    if not config.tracking.enabled:
        return ImportedRun(run_dir=run_dir, run_id=None, version=None, promoted=None)
    try:
        run_id = _create_run(config, run_dir=run_dir, job=job, record=record)
        version = _register(config, run_id=run_id, run_dir=run_dir)
        promoted = _log_evaluation(config, run_id=run_id, version=version, run_dir=run_dir)
    except BaseException:
        shutil.rmtree(run_dir, ignore_errors=True)  # importing again must find the folder free
        raise
    return ImportedRun(run_dir=run_dir, run_id=run_id, version=version, promoted=promoted)


def _refuse_second_import(config: Config, *, job_id: str, run_dir: Path) -> None:
    if run_dir.exists():
        raise RunImportError(
            f"{run_dir} already exists: this run was imported (or trained) here before. Nothing was imported; "
            "delete the folder to import it again"
        )
    if not config.tracking.enabled:
        return
    from ..tracking import client

    mlflow_client = client()
    experiment = mlflow_client.get_experiment_by_name(config.project)
    if experiment is None:
        return
    found = mlflow_client.search_runs([experiment.experiment_id], filter_string=f"tags.`{JOB_ID_TAG}` = '{job_id}'")
    if found:
        raise RunImportError(
            f"job {job_id} was imported already: MLflow run {found[0].info.run_id} ({found[0].info.run_name}) "
            f"carries {JOB_ID_TAG}={job_id}. Nothing was imported"
        )


def _create_run(config: Config, *, run_dir: Path, job: dict, record: dict) -> str:
    """The MLflow run of the imported training: params, metric history, dataset inputs, tags; FINISHED."""
    import mlflow

    from ..tracking import project_experiment_id, run_tags, tracking_uri

    train_log = json.loads((run_dir / TRAIN_LOG).read_text(encoding="utf-8"))
    tags = run_tags(train_log.get("config_name") or run_dir.name) | _job_tags(job)
    mlflow.set_tracking_uri(tracking_uri())
    client = mlflow.MlflowClient()
    started = _millis(record.get("started"))
    run = client.create_run(project_experiment_id(config.project), start_time=started, tags=tags, run_name=run_dir.name)
    with mlflow.start_run(run_id=run.info.run_id):
        _log_inputs(config, train_log=train_log, record=record, config_file=run_dir / CONFIG_FILE)
        _log_history(client, run.info.run_id, train_log["log_history"])
    client.set_terminated(run.info.run_id, "FINISHED", end_time=_millis(record.get("ended")))
    return run.info.run_id


def _job_tags(job: dict) -> dict[str, str]:
    tags = {JOB_ID_TAG: str(job["job_id"])}
    for key in ("target", "instance_type", "region", "billed_s", "usd_per_hour", "instance_count", "spot"):
        if job.get(key) is not None:
            tags[f"cloud.{key}"] = str(job[key])
    # >>> cloud_training
    from .jobs.job import job_cost

    if (cost := job_cost(job)) is not None:
        tags["cloud.cost_usd"] = f"{cost:.4f}"
    # <<< cloud_training
    return tags


def _millis(iso: str | None) -> int | None:
    return int(datetime.fromisoformat(iso).timestamp() * 1000) if iso else None


def _log_inputs(config: Config, *, train_log: dict, record: dict, config_file: Path) -> None:
    """As a local `train` logs them (tracking.log_training_inputs), with the job's library versions and device;
    the splits are read here (the job trained on a copy)."""
    from ..data.dataset import load_splits
    from ..tracking import log_training_inputs

    splits = load_splits(config.data, system_prompt=config.task.system_prompt)
    device, versions = train_log.get("device", "unknown"), record.get("library_versions") or {}
    log_training_inputs(
        config, splits=splits, config_file=config_file, device=device, data_path=config.data.path, versions=versions
    )


def _log_history(client, run_id: str, log_history: list[dict]) -> None:
    """Every numeric value of every logged step, as the training callback logs them (one batch per step)."""
    from mlflow.entities import Metric

    for entry in log_history:
        step = int(entry.get("step", 0))
        metrics = [
            Metric(key, float(value), 0, step)
            for key, value in entry.items()
            if key != "step" and isinstance(value, int | float) and not isinstance(value, bool)
        ]
        if metrics:
            client.log_batch(run_id, metrics=metrics)


def _register(config: Config, *, run_id: str, run_dir: Path) -> str | None:
    """Log the adapter as the run's model and register it (alias candidate), as training does."""
    from ..model.load import load_finetuned, load_tokenizer
    from ..registry import log_and_register

    adapter = run_dir / "adapter"
    model = load_finetuned(config.model, adapter_dir=adapter, device="cpu")
    tokenizer = load_tokenizer(adapter)
    version = log_and_register(config, run_id=run_id, model=model, tokenizer=tokenizer)
    write_tracking_file(run_dir, run_id=run_id, version=version)
    return str(version.version) if version else None


def _log_evaluation(config: Config, *, run_id: str, version: str | None, run_dir: Path) -> bool | None:
    """eval.json made local (this adapter, run and version), logged to the run; then the promotion gate."""
    from ..evaluate.gate import promote
    from ..tracking import log_evaluation

    report_dir = Path(config.eval.report_dir)
    report = json.loads((report_dir / "eval.json").read_text(encoding="utf-8"))
    report["run"] |= {"adapter": str(run_dir / "adapter"), "mlflow_run_id": run_id, "model_version": version}
    (report_dir / "eval.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    log_evaluation(run_id=run_id, report=report, report_dir=report_dir, examples=report.get("examples") or [])
    if not (config.tracking.promote and version):
        return None
    return promote(config, version=version, report_dir=report_dir).promoted
