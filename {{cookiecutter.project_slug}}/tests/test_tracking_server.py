"""Training and evaluating against a real `mlflow server` over HTTP: the pipeline as it runs beside a shared
tracking server, and a server that dies in the middle of a run."""

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow import MlflowClient

from {{ cookiecutter.package_name }}.registry import CHAMPION, fetch_model
from {{ cookiecutter.package_name }}.tracking import TrackingError
from {{ cookiecutter.package_name }}.train.sft import train


def tracked(run_dir: Path) -> dict:
    return json.loads((run_dir / "tracking.json").read_text())


@pytest.fixture
def mlflow_server(mlflow_server_process) -> str:
    return mlflow_server_process[0]


@pytest.fixture
def mlflow_server_process(tmp_path, free_port, wait_until_ready):
    """A real `mlflow server` on 127.0.0.1 (SQLite backend, proxied artifact store), stopped afterwards; yields
    its URI and process."""
    port = free_port()
    log = tmp_path / "mlflow-server.log"
    with log.open("w") as output:
        server = subprocess.Popen(
            [
                sys.executable, "-m", "mlflow", "server",
                "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
                "--artifacts-destination", str(tmp_path / "artifacts"),
            ],
            stdout=output,
            stderr=subprocess.STDOUT,
            env={**os.environ, "MLFLOW_TRACKING_URI": ""},
        )  # fmt: skip
    uri = f"http://127.0.0.1:{port}"
    try:
        # Up once /health answers; check_tracking_server then asks its experiments API before any run.
        wait_until_ready(f"{uri}/health", process=server, output=log, timeout_s=60)
        yield uri, server
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.e2e
def test_pipeline_against_a_tracking_server_over_http(mlflow_server, smoke_config, tiny_model, tmp_path, monkeypatch):
    from {{ cookiecutter.package_name }}.evaluate.evaluate import evaluate

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
def test_a_tracking_server_dying_mid_run_keeps_the_training_and_says_how_to_register_it(
    mlflow_server_process, smoke_config, tiny_model, tmp_path, monkeypatch
):
    from transformers import TrainerCallback

    from {{ cookiecutter.package_name }}.train import sft

    uri, server = mlflow_server_process
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # no retries: the test needs the failure, not waits
    metrics = sft.metrics_callback

    class ServerDiesAtStep2(TrainerCallback):
        """The project's metrics callback, with the real server killed under it at step 2."""

        def __init__(self):
            self.metrics = metrics()

        def on_log(self, args, state, control, **kwargs):
            if state.global_step >= 2 and server.poll() is None:
                server.terminate()
                server.wait(timeout=30)
            self.metrics.on_log(args, state, control, **kwargs)

    monkeypatch.setattr(sft, "metrics_callback", ServerDiesAtStep2)
    overrides = ("tracking.enabled=true", "project=dies", "train.max_steps=4", "train.logging_steps=1")
    config = smoke_config(
        *overrides, "train.eval_steps=2", "train.save_steps=2", "train.run_name=dies-1", root=tmp_path
    )
    started = time.monotonic()
    with pytest.raises(TrackingError) as caught:
        train(config, config_name="smoke")
    assert time.monotonic() - started < 120
    assert f"MLflow ({uri}) stopped answering during run dies-1: " in str(caught.value)
    assert "`train --resume train.run_name=dies-1` with the same --config continues it" in str(caught.value)
    run_dir = Path(config.train.output_dir) / "dies-1"
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()  # training finished without the server
    assert json.loads((run_dir / "train_log.json").read_text())["log_history"][-1]["step"] == 4
