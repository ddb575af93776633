"""Hyperparameter sweeps (sweep.py): the search space refused before training, pruning, nested MLflow runs,
no registered versions from trials, a stopped study continued, and configs/best.yaml loadable by `train`."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from {{ cookiecutter.package_name }}.cli import app
from {{ cookiecutter.package_name }}.config import ConfigError, load_config
from {{ cookiecutter.package_name }}.report.journey import experiments_text, read_journey
from {{ cookiecutter.package_name }}.sweep.sweep import (
    PARENT_RUN_ATTR,
    PLOTS,
    SweepError,
    check_space,
    objective_value,
    run_sweep,
)
from {{ cookiecutter.package_name }}.tracking import client, project_experiment_id

CONFIGS = Path(__file__).parents[1] / "configs"
runner = CliRunner()


def _space_config(tmp_path: Path, entry: str) -> Path:
    """A config whose sweep.space holds `entry` on line 4."""
    path = tmp_path / "space.yaml"
    path.write_text(
        f"project: demo\nsweep:\n  space:\n    {entry}\nmodel:\n  base_model: org/model\n", encoding="utf-8"
    )
    return path


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        (
            "train.learnin_rate: {type: log_uniform, low: 1.0e-5, high: 1.0e-3}",
            "space.yaml:4: sweep.space.train.learnin_rate: not a config key that can be searched; "
            "did you mean 'train.learning_rate'?",
        ),
        ("sweep.seed: {type: int, low: 0, high: 3}", "space.yaml:4: sweep.space.sweep.seed: not a config key"),
        (
            "train.learning_rate: {type: uniform, low: 0.1, high: 0.01}",
            "space.yaml:4: sweep.space.train.learning_rate: Value error, low (0.1) must be below high (0.01)",
        ),
        (
            "train.learning_rate: {type: log_uniform, low: 0, high: 0.01}",
            "space.yaml:4: sweep.space.train.learning_rate: Value error, log_uniform needs low above 0",
        ),
        ("lora.r: {type: categorical, choices: []}", "space.yaml:4: sweep.space.lora.r: Value error, categorical"),
        ("lora.r: {type: int, low: 0, high: 8}", "space.yaml:4: sweep.space.lora.r: 0 is refused by the config"),
        (
            "train.lr_scheduler: {type: categorical, choices: [cosine, cosinus]}",
            "space.yaml:4: sweep.space.train.lr_scheduler: 'cosinus' is refused by the config",
        ),
        ("lora.r: {type: int, low: 4.5, high: 8}", "space.yaml:4: sweep.space.lora.r: Value error, int needs whole"),
    ],
)
def test_bad_space_entry_is_refused_with_its_key_and_line(tmp_path, entry, expected):
    with pytest.raises((SweepError, ConfigError)) as refused:
        check_space(_space_config(tmp_path, entry))
    assert expected in str(refused.value)


def test_sweep_command_refuses_a_bad_space_with_exit_2_and_writes_nothing(tmp_path):
    config = _space_config(tmp_path, "lora.rank: {type: categorical, choices: [4, 8]}")
    storage = tmp_path / "optuna.db"
    result = runner.invoke(app, ["sweep", "--config", str(config), f"sweep.storage=sqlite:///{storage}"])
    assert result.exit_code == 2
    assert "sweep.space.lora.rank: not a config key that can be searched; did you mean 'lora.r'?" in result.output
    assert sorted(path.name for path in tmp_path.iterdir()) == ["space.yaml"]  # no study, no best.yaml


def test_objective_is_read_from_the_evaluation_metrics_or_named():
    metrics = {"eval_loss": 1.5, "eval_mean_token_accuracy": 0.25, "epoch": 1.0}
    assert objective_value(metrics, objective="eval_loss") == 1.5
    assert objective_value(metrics, objective="mean_token_accuracy") == 0.25
    with pytest.raises(SweepError, match=r"sweep.objective='accuracy' is not a metric .* eval_loss"):
        objective_value(metrics, objective="accuracy")


@pytest.mark.e2e
def test_sweep_prunes_nests_trials_resumes_and_writes_a_loadable_best_config(workdir, tiny_model, tmp_path):
    """The shipped smoke space and seed, 12-step trials: trials 0 and 1 (high learning rates) complete; a
    trial left RUNNING by a stopped sweep is marked FAIL; the continued study (--trials 3) runs one more,
    trial 3 (learning rate 1.5e-4), which the median pruner stops at an early evaluation."""
    import optuna

    from {{ cookiecutter.package_name }}.tracking import client

    base = CONFIGS / "smoke.yaml"
    overrides = [
        f"data.path={workdir / 'data' / 'shop_extraction'}",
        f"model.base_model={tiny_model}",
        f"train.output_dir={tmp_path / 'outputs'}",
        f"eval.report_dir={tmp_path / 'reports'}",
        *("train.max_steps=12", "train.eval_steps=4", "train.logging_steps=4"),
        f"sweep.storage=sqlite:///{tmp_path / 'optuna.db'}",
        "sweep.study_name=test-sweep",
    ]
    best_yaml = tmp_path / "configs" / "best.yaml"
    args = ["sweep", "--config", str(base), "--trials", "2", "--best-config", str(best_yaml), *overrides]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "study test-sweep: 2 complete (2 run now" in first.output
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    optuna.load_study(study_name="test-sweep", storage=storage).ask()  # a trial a stopped sweep left RUNNING

    result = run_sweep(base, trials=3, overrides=overrides, best_config=best_yaml)

    assert result.ran == 1
    assert result.states == {"COMPLETE": 2, "FAIL": 1, "PRUNED": 1}
    study = optuna.load_study(study_name="test-sweep", storage=storage)
    pruned = study.trials[3]
    assert pruned.state.name == "PRUNED" and max(pruned.intermediate_values) < 12
    assert pruned.params["train.learning_rate"] < min(trial.params["train.learning_rate"] for trial in study.trials[:2])
    trial_dir = tmp_path / "outputs" / "sweeps" / "test-sweep" / "trial-003"
    log = json.loads((trial_dir / "train_log.json").read_text())
    assert max(entry["step"] for entry in log["log_history"]) < 12  # training stopped when pruned
    for trial_folder in (trial_dir.parent).iterdir():  # weights dropped, the config kept
        assert sorted(p.name for p in trial_folder.iterdir()) == ["config.yaml", "tracking.json", "train_log.json"]

    mlflow_client, parent = client(), study.user_attrs[PARENT_RUN_ATTR]
    children = mlflow_client.search_runs(
        [mlflow_client.get_run(parent).info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent}'"
    )
    by_trial = {int(run.data.tags["sweep.trial"]): run for run in children}
    assert sorted(by_trial) == [0, 1, 3]  # the stale trial 2 never trained
    states = {number: run.data.tags["sweep.state"] for number, run in by_trial.items()}
    assert states == {0: "COMPLETE", 1: "COMPLETE", 3: "PRUNED"}
    for number, run in by_trial.items():
        drawn = study.trials[number].params["train.learning_rate"]
        assert float(run.data.params["train.learning_rate"]) == pytest.approx(drawn)
        assert run.data.params["tracking.register_model"] == "False"
    assert by_trial[0].data.metrics["sweep.objective"] == pytest.approx(study.trials[0].value)
    trial_run_ids = {run.info.run_id for run in children}
    project = load_config(base, overrides).project
    versions = mlflow_client.search_model_versions(f"name='{project}'")
    assert not [version for version in versions if version.run_id in trial_run_ids]  # trials register nothing
    parent_run = mlflow_client.get_run(parent)
    assert parent_run.info.status == "FINISHED"
    assert parent_run.data.metrics["trials.pruned"] == 1 and parent_run.data.metrics["trials.complete"] == 2

    best = study.best_trial
    header = best_yaml.read_text().splitlines()[:4]
    assert header[0] == f"# {project} train --config {best_yaml}"
    assert f"study 'test-sweep' ({storage}), best of 3 finished trials: trial {best.number}, eval_loss=" in header[1]
    best_overrides = [f"{key}={json.dumps(value)}" for key, value in best.params.items()]
    assert load_config(best_yaml) == load_config(base, [*overrides, *best_overrides])
    assert load_config(best_yaml).lora.r == best.params["lora.r"]
    assert (tmp_path / "reports" / PLOTS["history"]).stat().st_size > 10_000
    assert (tmp_path / "reports" / PLOTS["importance"]).stat().st_size > 10_000


def test_a_sweep_is_one_line_with_its_best_trial(smoke_config):
    """The experiment log (report/journey.py) shows a sweep as one run, its trials nested under it, from the tags
    sweep/sweep.py records."""
    config = smoke_config("tracking.enabled=true", "project=journey-sweep")
    mlflow_client = client()
    experiment = project_experiment_id(config.project)
    space = json.dumps({"lora.r": {"type": "categorical", "choices": [4, 8, 16]}})
    tags = {"sweep.study": "smoke-sweep", "sweep.objective": "minimize eval_loss", "sweep.space": space}
    sweep = mlflow_client.create_run(experiment, run_name="smoke-sweep", tags=tags).info.run_id
    for number, (rank, loss) in enumerate([(8, 1.5), (16, 1.25), (4, 1.9)]):
        trial_tags = {"mlflow.parentRunId": sweep, "stage": "sft", "sweep.trial": str(number)}
        trial = mlflow_client.create_run(experiment, run_name=f"trial-{number:03d}", tags=trial_tags).info.run_id
        mlflow_client.log_param(trial, "lora.r", str(rank))
        mlflow_client.log_metric(trial, "sweep.objective", loss)
    text = experiments_text(read_journey(config), project="journey-sweep", plot=None)
    assert text.count("\n## ") == 1 and "\n## 1. smoke-sweep · sweep · " in text
    assert (
        "- Sweep of 3 trials, best trial-001: eval_loss 1.25 with `lora.r`=16; plots: `reports/sweep_history.png`"
        in text
    )
