"""SageMaker's container contract (aws): /ping is its health check, /invocations answers as
/v1/chat/completions does, with the same request log and API key."""

import json
import os
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from {{ cookiecutter.package_name }}.serve.app import create_app
from {{ cookiecutter.package_name }}.serve.settings import Settings

HELLO = [{"role": "user", "content": "Where is my order B11688?"}]


def settings_for(model: Path, **overrides) -> Settings:
    """Server settings deaf to the developer's LLM_* variables and .env file."""
    with pytest.MonkeyPatch.context() as env:
        for name in [name for name in os.environ if name.startswith("LLM_")]:
            env.delenv(name)
        return Settings(_env_file=None, **({"model": str(model), "device": "cpu", "request_log": None} | overrides))


def wait_until(client: TestClient, path: str, status: int = 200, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while client.get(path).status_code != status:
        assert time.monotonic() < deadline, client.get(path).text
        time.sleep(0.02)


def test_invocations_answers_like_chat_completions_and_is_logged(served_adapter, served_model, tmp_path):
    log = tmp_path / "requests.jsonl"
    with TestClient(create_app(settings_for(served_adapter, request_log=log), loaded=served_model)) as client:
        wait_until(client, "/ping")
        body = {"messages": HELLO, "temperature": 0, "max_tokens": 8}
        invoked, chatted = client.post("/invocations", json=body), client.post("/v1/chat/completions", json=body)
        assert invoked.status_code == 200, invoked.text
        assert invoked.json()["choices"] == chatted.json()["choices"]
        assert invoked.headers["x-request-id"].startswith("chatcmpl-")
        assert client.post("/invocations", json={"messages": []}).status_code == 422  # as /v1/chat/completions
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [record["status"] for record in records] == [200, 200, 422]


def test_ping_is_503_before_the_model_loads_and_when_it_cannot(served_adapter, tmp_path):
    assert TestClient(create_app(settings_for(served_adapter))).get("/ping").status_code == 503  # no lifespan
    with TestClient(create_app(settings_for(tmp_path / "no-such-adapter"))) as client:
        wait_until(client, "/ready", status=503)
        deadline = time.monotonic() + 30
        while client.get("/ping").json()["status"] != "failed":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert client.get("/ping").status_code == 503


def test_invocations_needs_the_api_key_when_one_is_set(served_adapter, served_model):
    with TestClient(create_app(settings_for(served_adapter, api_key="k3y"), loaded=served_model)) as client:
        wait_until(client, "/ping")  # SageMaker's health check needs no key
        body = {"messages": HELLO, "max_tokens": 4}
        assert client.post("/invocations", json=body).status_code == 401
        assert client.post("/invocations", json=body, headers={"Authorization": "Bearer k3y"}).status_code == 200
