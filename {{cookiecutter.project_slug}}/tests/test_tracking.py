"""MLflow tracking, registry, promotion gate and model loading, read back through MLflow's own client."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow import MlflowClient
from safetensors.torch import load_file

from {{ cookiecutter.package_name }}.tracking import (
    CANDIDATE,
    CHAMPION,
    TrackingError,
    check_tracking_server,
    fetch_model,
    flatten,
    promote,
)
from {{ cookiecutter.package_name }}.train import train


def tracked(run_dir: Path) -> dict:
    return json.loads((run_dir / "tracking.json").read_text())


@pytest.mark.e2e
def test_training_run_holds_params_curves_dataset_and_artifacts(smoke_run, smoke_report, smoke_config):
    config = smoke_config()
    client = MlflowClient()
    run = client.get_run(tracked(smoke_run)["run_id"])
    assert run.info.status == "FINISHED"
    assert run.info.run_name == smoke_run.name
    assert run.data.tags["config"] == "smoke"

    params = run.data.params
    assert params["lora.r"] == str(config.lora.r)
    assert params["train.max_steps"] == str(config.train.max_steps)
    assert params["train.run_name"] == smoke_run.name  # the resolved config, not the file's null
    assert params["data.rows.train"] == "960"
    assert {"version.torch", "version.transformers", "version.peft", "version.trl", "device"} <= set(params)

    steps = config.train.max_steps
    history = {key: client.get_metric_history(run.info.run_id, key) for key in ("loss", "learning_rate", "eval_loss")}
    assert len(history["loss"]) == steps // config.train.logging_steps
    assert len(history["learning_rate"]) == steps // config.train.logging_steps
    eval_every = config.train.eval_steps
    assert [m.step for m in history["eval_loss"]] == list(range(eval_every, steps + 1, eval_every))
    assert run.data.metrics["finetuned.eval_loss"] == pytest.approx(smoke_report["finetuned"]["eval_loss"])
    assert run.data.metrics["base.eval_loss"] == pytest.approx(smoke_report["base"]["eval_loss"])

    contexts = {d.tags[0].value for d in run.inputs.dataset_inputs}
    assert contexts == {"train", "validation", "test"}
    assert all(d.dataset.digest for d in run.inputs.dataset_inputs)

    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "evaluation"} <= artifacts
    evaluation = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")}
    assert evaluation == {"evaluation/eval.json", "evaluation/eval.md", "evaluation/sample_generations.json"}


@pytest.mark.e2e
def test_first_version_is_candidate_and_champion(smoke_run, smoke_report, smoke_config):
    config = smoke_config()
    client = MlflowClient()
    version = tracked(smoke_run)["model_version"]
    registered = client.get_model_version(config.project, version)
    assert registered.run_id == tracked(smoke_run)["run_id"]
    assert str(client.get_model_version_by_alias(config.project, CANDIDATE).version) == version
    assert str(client.get_model_version_by_alias(config.project, CHAMPION).version) == version
    assert registered.tags["promotion.decision"] == "promoted"
    decision = json.loads((Path(config.eval.report_dir) / "promotion.json").read_text())
    assert decision["promoted"] is True
    assert decision["reason"] == "no champion yet"

    again = promote(config, report_dir=Path(config.eval.report_dir) / "again")  # re-judging the champion
    assert again.promoted and again.reason == f"version {version} is already champion"
    assert client.get_model_version(config.project, version).tags["promotion.reason"] == "no champion yet"


@pytest.mark.e2e
def test_champion_loads_with_the_trained_weights(smoke_run, smoke_report, smoke_config):
    source = fetch_model(f"models:/{smoke_config().project}@{CHAMPION}")
    assert source.version == tracked(smoke_run)["model_version"]
    assert source.run_id == tracked(smoke_run)["run_id"]
    assert Path(source.base_model) == Path(smoke_config().model.base_model).resolve()
    assert (source.tokenizer_dir / "chat_template.jinja").is_file()
    logged = load_file(source.adapter_dir / "adapter_model.safetensors")
    trained = load_file(smoke_run / "adapter" / "adapter_model.safetensors")
    assert logged.keys() == trained.keys()
    assert all((logged[key] == trained[key]).all() for key in trained)
    by_run = fetch_model(f"runs:/{source.run_id}/model")
    assert by_run.adapter_dir.joinpath("adapter_config.json").is_file()


@pytest.mark.parametrize("uri", ["models:/no-such-model@champion", "models:/no-such-model/3"])
def test_unknown_model_uri_is_a_clear_error(uri):
    with pytest.raises(TrackingError, match="no-such-model"):
        fetch_model(uri)


def test_local_folder_that_is_not_an_adapter_is_a_clear_error(tmp_path):
    with pytest.raises(TrackingError, match=r"not a LoRA adapter folder \(no adapter_config\.json\)"):
        fetch_model(str(tmp_path))
    with pytest.raises(TrackingError, match="no such folder"):
        fetch_model(str(tmp_path / "missing"))


def register_scored_version(client: MlflowClient, name: str, *, loss: float) -> str:
    """A registered version whose run scored `loss`: the real registry, with the metric chosen by the test."""
    experiment = client.get_experiment_by_name(name)
    run = client.create_run(experiment.experiment_id if experiment else client.create_experiment(name))
    client.log_metric(run.info.run_id, "finetuned.eval_loss", loss)
    client.set_terminated(run.info.run_id)
    if not client.search_registered_models(f"name='{name}'"):
        client.create_registered_model(name)
    version = client.create_model_version(name, source=f"runs:/{run.info.run_id}/model", run_id=run.info.run_id)
    return str(version.version)


def test_gate_keeps_the_champion_against_a_worse_candidate(smoke_config, tmp_path):
    config = smoke_config("project=gate-test", "tracking.promotion_metric=finetuned.eval_loss")
    client = MlflowClient()
    first = register_scored_version(client, "gate-test", loss=1.0)
    assert promote(config, version=first, report_dir=tmp_path).promoted

    worse = register_scored_version(client, "gate-test", loss=2.0)
    decision = promote(config, version=worse, report_dir=tmp_path)
    assert not decision.promoted
    assert decision.reason == "candidate 2 does not beat champion 1 (minimize)"
    assert str(client.get_model_version_by_alias("gate-test", CHAMPION).version) == first
    assert client.get_model_version("gate-test", worse).tags["promotion.decision"] == "rejected"
    assert json.loads((tmp_path / "promotion.json").read_text())["champion_version"] == first

    better = register_scored_version(client, "gate-test", loss=0.5)
    assert promote(config, version=better, report_dir=tmp_path).promoted
    assert str(client.get_model_version_by_alias("gate-test", CHAMPION).version) == better


def test_unreachable_tracking_server_fails_before_training(smoke_config, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(TrackingError, match=r"unreachable.*Nothing was trained"):
        train(smoke_config("tracking.enabled=true", root=tmp_path), config_name="smoke")
    assert not (tmp_path / "outputs").exists()


def test_interrupted_training_ends_killed_not_running(smoke_config, tiny_model, tmp_path, monkeypatch):
    import trl

    def interrupt(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(trl.SFTTrainer, "train", interrupt)
    config = smoke_config("tracking.enabled=true", "project=interrupted", "data.max_train_samples=16", root=tmp_path)
    with pytest.raises(KeyboardInterrupt):
        train(config, config_name="smoke")
    client = MlflowClient()
    experiment = client.get_experiment_by_name("interrupted")
    runs = client.search_runs([experiment.experiment_id])
    assert [run.info.status for run in runs] == ["KILLED"]


def test_flatten_makes_dotted_keys():
    assert flatten({"a": {"b": 1, "c": {"d": "x"}}, "e": None}) == {"a.b": 1, "a.c.d": "x", "e": None}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    """A real `mlflow server` on 127.0.0.1 (SQLite backend, proxied artifact store), stopped afterwards."""
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable, "-m", "mlflow", "server",
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
            "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
            "--artifacts-destination", str(tmp_path / "artifacts"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "MLFLOW_TRACKING_URI": ""},
    )  # fmt: skip
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            check_tracking_server(uri, timeout_s=1)
            break
        except TrackingError:
            time.sleep(0.5)
    else:
        server.kill()
        pytest.fail("mlflow server did not start within 60 s")
    yield uri
    server.terminate()
    server.wait(timeout=30)


@pytest.mark.e2e
def test_pipeline_against_a_tracking_server_over_http(mlflow_server, smoke_config, tiny_model, tmp_path, monkeypatch):
    from {{ cookiecutter.package_name }}.evaluate import evaluate

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    overrides = ("tracking.enabled=true", "project=over-http", "train.max_steps=4", "train.eval_steps=2")
    config = smoke_config(*overrides, "train.save_steps=2", "eval.max_samples=4", root=tmp_path)
    run_dir = train(config, config_name="smoke")
    evaluate(config, adapter_dir=run_dir / "adapter")

    client = MlflowClient(tracking_uri=mlflow_server)
    champion = client.get_model_version_by_alias("over-http", CHAMPION)
    assert str(champion.version) == tracked(run_dir)["model_version"] == "1"
    run = client.get_run(champion.run_id)
    assert run.info.status == "FINISHED"
    assert "finetuned.eval_loss" in run.data.metrics
    assert any(a.path == "config.yaml" for a in client.list_artifacts(run.info.run_id))
    # The artifacts went through the server (proxied), not straight to a local folder.
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")
    source = fetch_model("models:/over-http@champion", download_dir=tmp_path / "download")
    assert (source.adapter_dir / "adapter_model.safetensors").is_file()
    with urllib.request.urlopen(f"{mlflow_server}/health") as response:
        assert response.status == 200


@pytest.mark.e2e
def test_serving_the_champion_uses_its_logged_config(smoke_run, smoke_report, smoke_config):
    from {{ cookiecutter.package_name }}.serve.loader import load_for_serving
    from {{ cookiecutter.package_name }}.serve.settings import Settings
    from {{ cookiecutter.package_name }}.task import SYSTEM_PROMPT

    project = smoke_config().project
    loaded = load_for_serving(Settings(model=f"models:/{project}@{CHAMPION}", device="cpu"))
    assert (loaded.name, loaded.version) == (project, tracked(smoke_run)["model_version"])
    assert loaded.system_prompt == SYSTEM_PROMPT  # from the config.yaml logged to the training run
