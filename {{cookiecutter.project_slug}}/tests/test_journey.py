"""The journey `report` writes from the MLflow runs: docs/experiments.md (every run, what changed, the gate),
reports/journey.png, docs/decisions.md (appended to, hand edits kept) and docs/interview.md (this project's
figures); and a store that is missing, corrupt or unreachable said so, never a traceback."""

import json
import logging
from pathlib import Path

import pytest
from typer.testing import CliRunner

from {{ cookiecutter.package_name }}.cli import app
from {{ cookiecutter.package_name }}.config import Config
from {{ cookiecutter.package_name }}.data.dataset import load_splits
from {{ cookiecutter.package_name }}.evaluate.gate import promote
from {{ cookiecutter.package_name }}.registry import CANDIDATE
from {{ cookiecutter.package_name }}.report import write_report
from {{ cookiecutter.package_name }}.report.journey import experiments_text, read_journey, update_decisions
from {{ cookiecutter.package_name }}.report.readme import START
from {{ cookiecutter.package_name }}.tracking import (
    client,
    log_evaluation,
    log_training_inputs,
    training_run,
)

CONFIGS = Path(__file__).parents[1] / "configs"
README = f"# Demo\n\n## Results\n\n{START}\n_old_\n<!-- results:end -->\n"
PROJECT = "journey-demo"  # its own experiment and registered model in the session's MLflow store
# The gate on field accuracy (smoke.yaml gates on the loss), so the log shows a rate with its interval.
HEADLINE = ("tracking.promotion_metric=finetuned.field_accuracy", "tracking.promotion_direction=maximize")


def _tracked_run(config: Config, *, name: str, evaluation: dict | None, report_dir: Path, stage: str = "sft") -> str:
    """A run as `train` and `evaluate` record it, without training a model: the config, data and stage logged by
    the project's own functions, a registered version, then the evaluation logged and the gate run on it."""
    with training_run(config, run_name=name, config_name="smoke", tags={"stage": stage}) as run_id:
        splits = load_splits(config.data)
        data = str(config.data.path)
        log_training_inputs(config, splits=splits, config_file=CONFIGS / "smoke.yaml", device="cpu", data_path=data)
    mlflow_client = client()
    if not mlflow_client.search_registered_models(f"name='{config.project}'"):
        mlflow_client.create_registered_model(config.project)
    version = mlflow_client.create_model_version(config.project, source=f"runs:/{run_id}/model", run_id=run_id)
    mlflow_client.set_registered_model_alias(config.project, CANDIDATE, version.version)
    if evaluation is not None:
        log_evaluation(run_id=run_id, report=evaluation, report_dir=report_dir, examples=[])
        promote(config, version=str(version.version))
    return run_id


@pytest.fixture
def journey_project(tmp_path, monkeypatch, smoke_report) -> Path:
    """A project folder holding the smoke run's eval.json and a README with markers, as the current folder."""
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "eval.json").write_text(json.dumps(smoke_report))
    (tmp_path / "README.md").write_text(README)
    (tmp_path / "pyproject.toml").write_text(f'[project]\nname = "{PROJECT}"\n')
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _pct(value: float) -> str:
    return f"{value:.1%}"


@pytest.mark.e2e
def test_two_evaluated_runs_make_the_experiment_log_decisions_and_interview(
    journey_project, smoke_config, smoke_report
):
    reports = journey_project / "reports"
    shared = ("tracking.enabled=true", f"project={PROJECT}", f"eval.report_dir={reports}", *HEADLINE)
    # Each run has its own train.run_name, as `train` gives it: a difference the log does not list.
    config = smoke_config(*shared, "train.run_name=run-a")
    changed = smoke_config(*shared, "train.run_name=run-b", "lora.r=8", "train.learning_rate=0.001")
    first = _tracked_run(config, name="run-a", evaluation=smoke_report, report_dir=reports)
    second = _tracked_run(changed, name="run-b", evaluation=smoke_report, report_dir=reports)
    readme, card = journey_project / "README.md", journey_project / "MODEL_CARD.md"
    write_report(config, readme=readme, model_card=card)

    docs = journey_project / "docs"
    experiments = (docs / "experiments.md").read_text()
    rate = smoke_report["finetuned"]["field_accuracy"]
    bounds = smoke_report["intervals"]["columns"]["finetuned"]["field_accuracy"]
    headline = f"- Field accuracy (mean): {_pct(rate)} [{bounds['low'] * 100:.1f}, {bounds['high'] * 100:.1f}]"
    params = client().get_run(first).data.params
    runs = experiments.split("\n## ")[1:]
    assert [run.splitlines()[0].split(" · ")[:2] for run in runs] == [["1. run-a", "SFT"], ["2. run-b", "SFT"]]
    assert runs[0].splitlines()[0].endswith("· **champion**")  # the second one did not beat it
    assert "- Changed: first run" in runs[0] and headline in runs[0] and headline in runs[1]
    assert f"- Changed: `lora.r` 16 → 8, `train.learning_rate` {params['train.learning_rate']} → 0.001\n" in runs[1]
    assert "- Gate: version 1 promoted to champion: no champion yet" in runs[0]
    assert f"- Gate: version 2 refused: candidate {rate:.4g} does not beat champion {rate:.4g} (maximize)" in runs[1]
    digest = client().get_run(first).inputs.dataset_inputs[0].dataset.digest
    assert f"training split digest `{digest}`" in runs[0] and f"<!-- run: {second} -->" in runs[1]
    assert "![finetuned.field_accuracy over the runs, champion starred](../reports/journey.png)" in experiments
    assert (reports / "journey.png").read_bytes().startswith(b"\x89PNG")

    decisions = (docs / "decisions.md").read_text()
    assert decisions.count("\n- Why:\n") == 2
    assert f"<!-- decision: {first} promotion -->" in decisions and f"<!-- decision: {second} refusal -->" in decisions

    interview = (docs / "interview.md").read_text()
    base, few_shot = smoke_report["base"]["field_accuracy"], smoke_report["baselines"]["few_shot"]["field_accuracy"]
    assert f"Field accuracy (mean): base {_pct(base)}, fine-tuned {_pct(rate)}, difference " in interview
    assert f"Field accuracy (mean): base few-shot {_pct(few_shot)}, fine-tuned {_pct(rate)}, difference " in interview
    classical = smoke_report["baselines"]["classical"]["field_accuracy"]
    assert f"Field accuracy (mean): TF-IDF + LR {_pct(classical)}, fine-tuned {_pct(rate)}, difference " in interview
    assert f"Test rows digest `{smoke_report['run']['test_digest'][:12]}`" in interview
    assert "Ranks tried in the runs: 8, 16 (`docs/experiments.md`)" in interview
    assert interview.count("\nYour words:\n") == 8

    written = {path: path.read_bytes() for path in (*docs.iterdir(), reports / "journey.png")}
    write_report(config, readme=readme, model_card=card)
    assert {path: path.read_bytes() for path in written} == written, "a second report must write the same bytes"

    mine = decisions.replace("- Why:\n", "- Why: the smaller rank was worth a try.\n", 1) + "\nMy own note.\n"
    (docs / "decisions.md").write_text(mine)
    update_decisions(docs / "decisions.md", read_journey(config))  # a report run with nothing new: kept as it is
    assert (docs / "decisions.md").read_text() == mine
    third = _tracked_run(changed, name="run-c", evaluation=smoke_report, report_dir=reports)
    write_report(config, readme=readme, model_card=card)
    after = (docs / "decisions.md").read_text()
    assert after.startswith(mine.rstrip("\n")) and after.count(f"<!-- decision: {third} refusal -->") == 1
    assert "- Changed: no setting changed against run-b" in after.split(third)[1]


def test_a_run_without_evaluation_and_a_deleted_run(tmp_path, smoke_config):
    config = smoke_config("tracking.enabled=true", "project=journey-bare", *HEADLINE)
    kept = _tracked_run(config, name="kept", evaluation=None, report_dir=tmp_path)
    gone = _tracked_run(config, name="gone", evaluation=None, report_dir=tmp_path)
    client().delete_run(gone)
    dpo = _tracked_run(config, name="dpo", evaluation=None, report_dir=tmp_path, stage="dpo")
    journey = read_journey(config)
    assert [(run.name, run.stage) for run in journey.runs] == [("kept", "SFT"), ("dpo", "DPO")]
    assert journey.missing is None
    update_decisions(tmp_path / "decisions.md", journey)  # not judged by the gate: only the stage change
    decisions = (tmp_path / "decisions.md").read_text()
    assert (
        decisions.count("\n## ") == 1
        and f"· dpo · stage change: SFT → DPO\n\n<!-- decision: {dpo} stage -->" in decisions
    )
    text = experiments_text(journey, project="journey-bare", plot=None)
    assert "- Field accuracy (mean): not evaluated (`evaluate --adapter models:/journey-bare/1` scores it)" in text
    assert "- Gate: version 1, not judged yet" in text and f"<!-- run: {kept} -->" in text and "![" not in text


@pytest.mark.parametrize(
    ("store", "said"),
    [
        ("missing", "mlflow.db not found: no run recorded yet (`make train evaluate` records one)"),
        ("corrupt", "the MLflow store mlflow.db could not be read ((sqlite3.DatabaseError) file is not a database)"),
        ("off", "tracking is off (`tracking.enabled: false`), so no run was recorded"),
    ],
)
def test_no_readable_store_is_said_in_the_log_never_a_traceback(
    tmp_path, monkeypatch, smoke_config, store, said, caplog
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")
    if store == "corrupt":
        (tmp_path / "mlflow.db").write_text("not a database")
    config = smoke_config(*([] if store == "off" else ["tracking.enabled=true"]))
    with caplog.at_level(logging.WARNING):
        journey = read_journey(config)
    assert journey.missing == said and f"experiment log: {said}" in caplog.text
    assert experiments_text(journey, project="x", plot=None).endswith(f"\nNo runs to show: {said}.\n")
    assert (tmp_path / "mlflow.db").exists() == (store == "corrupt")  # a missing store is not created


def test_an_unreachable_tracking_server_is_said(monkeypatch, smoke_config, free_port):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    journey = read_journey(smoke_config("tracking.enabled=true"))
    assert journey.missing.startswith("the MLflow store http://127.0.0.1:") and "is unreachable" in journey.missing


@pytest.mark.e2e
def test_report_with_a_corrupt_store_writes_everything_from_local_files(journey_project, smoke_config, monkeypatch):
    (journey_project / "mlflow.db").write_text("not a database")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")
    reports = journey_project / "reports"
    result = CliRunner().invoke(
        app,
        ["report", "--config", str(CONFIGS / "smoke.yaml"), *_paths(smoke_config(), reports), "tracking.enabled=true"],
    )
    assert result.exit_code == 0, result.output
    experiments = (journey_project / "docs" / "experiments.md").read_text()
    assert "No runs to show: the MLflow store mlflow.db could not be read (" in experiments
    assert "Traceback" not in result.output and (journey_project / "docs" / "interview.md").is_file()


def _paths(config: Config, reports: Path) -> list[str]:
    return [
        f"data.path={config.data.path}",
        f"model.base_model={config.model.base_model}",
        f"eval.report_dir={reports}",
    ]
