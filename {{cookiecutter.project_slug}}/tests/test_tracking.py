"""MLflow tracking of training and evaluation runs, read back through MLflow's own client."""

import json
import os
import urllib.request
from pathlib import Path

import pytest

from {{ cookiecutter.package_name }}.tracking import TrackingError, flatten
from {{ cookiecutter.package_name }}.tracking import client as tracking_client
from {{ cookiecutter.package_name }}.train.sft import train


def tracked(run_dir: Path) -> dict:
    return json.loads((run_dir / "tracking.json").read_text())


@pytest.mark.e2e
def test_training_run_holds_params_curves_dataset_and_artifacts(smoke_run, smoke_report, smoke_config):
    config = smoke_config()
    client = tracking_client()
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


def test_unreachable_tracking_server_fails_before_training(smoke_config, tmp_path, monkeypatch, free_port):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(TrackingError, match=r"unreachable.*Nothing was trained"):
        train(smoke_config("tracking.enabled=true", root=tmp_path), config_name="smoke")
    assert not (tmp_path / "outputs").exists()


def _fake_server(content_type: str, body: bytes):
    """An HTTP server on 127.0.0.1 answering 200 with `body` to every GET and POST; yields its URL."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Always(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.do_GET()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Always)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_mlflow_s_retries_against_a_server_are_bounded_unless_set(empty_json_server, monkeypatch):
    """MLflow's defaults (7 retries, backoff 2, 120 s timeout) held a run about 4 minutes per call to a dead
    server; the pre-flight check sets shorter ones, and keeps a value the person set."""
    from {{ cookiecutter.package_name }}.tracking import HTTP_RETRIES, check_tracking_server

    for name in HTTP_RETRIES:  # recorded first, so whatever the check sets is undone after the test
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "7")
    check_tracking_server(empty_json_server)
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "2"
    assert os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] == "1"
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "7"


@pytest.fixture
def not_mlflow_server():
    """An HTML page for every request (a wrong port, say)."""
    yield from _fake_server("text/html", b"<html><body>OK</body></html>")


@pytest.fixture
def empty_json_server():
    """`{}` for every request: it passes the pre-flight check (an experiments API answering a JSON object) and
    then gives MLflow nothing it can use."""
    yield from _fake_server("application/json", b"{}")


def test_a_server_passing_the_check_but_refusing_the_run_is_one_error(
    empty_json_server, smoke_config, tmp_path, monkeypatch
):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", empty_json_server)
    config = smoke_config("tracking.enabled=true", "train.run_name=mine", "data.max_train_samples=16", root=tmp_path)
    with pytest.raises(TrackingError, match=rf"MLflow \({empty_json_server}\) refused to open run mine: .*Nothing was"):
        train(config, config_name="smoke")
    assert not (tmp_path / "outputs" / "mine").exists()


def test_server_that_is_not_mlflow_fails_before_writing(not_mlflow_server, smoke_config, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", not_mlflow_server)
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(f"{not_mlflow_server}/health") as response:
        assert response.status == 200  # what the old /health check accepted
    with pytest.raises(TrackingError, match=r"answers, but not as an MLflow tracking server.*Nothing was trained"):
        train(smoke_config("tracking.enabled=true", "train.run_name=mine", root=tmp_path), config_name="smoke")
    assert not (tmp_path / "outputs").exists()


def test_mlflow_refusing_the_run_leaves_no_run_folder(smoke_config, tiny_model, tmp_path, monkeypatch):
    """Any failure before training starts (here: MLflow refusing to open the run) removes the new run folder,
    so the same train.run_name can be used again."""
    from {{ cookiecutter.package_name }}.train import sft as train_module

    def refusing(*args, **kwargs):
        raise TrackingError("MLflow refused the run")

    monkeypatch.setattr(train_module, "training_run", refusing)
    config = smoke_config("tracking.enabled=true", "train.run_name=mine", "data.max_train_samples=16", root=tmp_path)
    with pytest.raises(TrackingError, match="MLflow refused the run"):
        train(config, config_name="smoke")
    assert not (tmp_path / "outputs" / "mine").exists()


def test_interrupted_training_ends_killed_not_running(smoke_config, tiny_model, tmp_path, monkeypatch):
    import trl

    def interrupt(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(trl.SFTTrainer, "train", interrupt)
    config = smoke_config("tracking.enabled=true", "project=interrupted", "data.max_train_samples=16", root=tmp_path)
    with pytest.raises(KeyboardInterrupt):
        train(config, config_name="smoke")
    client = tracking_client()
    experiment = client.get_experiment_by_name("interrupted")
    runs = client.search_runs([experiment.experiment_id])
    assert [run.info.status for run in runs] == ["KILLED"]


def test_resumed_run_logs_each_metric_step_once():
    """--resume trains the steps after the last checkpoint again: their metrics, already in the run, are
    not logged a second time; new steps are."""
    import mlflow
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from {{ cookiecutter.package_name }}.tracking import metrics_callback, tracking_uri

    mlflow.set_tracking_uri(tracking_uri())
    with mlflow.start_run() as run:  # the stopped session logged steps 1..5
        for step in range(1, 6):
            mlflow.log_metrics({"loss": 1.0 / step}, step=step)
    with mlflow.start_run(run_id=run.info.run_id):  # resumed from the checkpoint at step 4
        callback = metrics_callback()
        for step in (5, 6):
            state = TrainerState(global_step=step)
            callback.on_log(TrainingArguments(output_dir="unused"), state, TrainerControl(), logs={"loss": 0.1})
    history = tracking_client().get_metric_history(run.info.run_id, "loss")
    assert sorted((m.step, m.value) for m in history) == [(1, 1.0), (2, 0.5), (3, 1 / 3), (4, 0.25), (5, 0.2), (6, 0.1)]


def test_flatten_makes_dotted_keys():
    assert flatten({"a": {"b": 1, "c": {"d": "x"}}, "e": None}) == {"a.b": 1, "a.c.d": "x", "e": None}


def test_a_store_moved_with_its_project_names_the_old_artifact_folder(tmp_path, monkeypatch):
    import logging

    import mlflow

    from {{ cookiecutter.package_name }}.tracking import project_experiment_id

    old, new = tmp_path / "old", tmp_path / "new"
    new.mkdir()
    previous = mlflow.get_tracking_uri()
    records = []  # on the module's own logger: the CLI keeps this package's records from the root's handlers
    handler = logging.Handler()
    handler.emit = records.append
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{new / 'mlflow.db'}")
    mlflow.set_tracking_uri(f"sqlite:///{new / 'mlflow.db'}")
    try:
        mlflow.create_experiment("moved", artifact_location=(old / "mlruns").as_uri())  # made before the move
        logging.getLogger("{{ cookiecutter.package_name }}.tracking").addHandler(handler)
        project_experiment_id("moved")
        project_experiment_id("fresh")  # made here: its artifacts lie beside the store
    finally:
        logging.getLogger("{{ cookiecutter.package_name }}.tracking").removeHandler(handler)
        mlflow.set_tracking_uri(previous)
    [record] = [record for record in records if "the project was moved" in record.getMessage()]
    assert f"records its artifacts in {(old / 'mlruns').as_uri()}, not beside it" in record.getMessage()
