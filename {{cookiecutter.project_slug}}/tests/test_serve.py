"""The API in-process (FastAPI TestClient): every endpoint, every error, metrics and the request log.

The served model is the tiny offline model with an untrained adapter: its answers are gibberish, but
greedy decoding makes them repeatable, which is all these tests need. It is loaded once (the session's
`served_model`) and each test's app is built around it; only the tests about loading load it themselves.
"""

import json
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from {{ cookiecutter.package_name }}.cli import app as cli_app
from {{ cookiecutter.package_name }}.data.shop_example import SYSTEM_PROMPT
from {{ cookiecutter.package_name }}.model.load import load_tokenizer
from {{ cookiecutter.package_name }}.monitor.request_log import RECORD_KEYS
from {{ cookiecutter.package_name }}.registry import ModelSourceError, resolve_model_source
from {{ cookiecutter.package_name }}.serve.app import create_app
from {{ cookiecutter.package_name }}.serve.loader import LoadedModel
from {{ cookiecutter.package_name }}.serve.settings import Settings

CHAT = "/v1/chat/completions"
MODEL = "{{ cookiecutter.project_slug }}"
HELLO = [{"role": "user", "content": "Where is my order B11688?"}]
# What the model sees for HELLO: the run's config records the prompt training used (`train` does), so it leads.
SEEN = [{"role": "system", "content": SYSTEM_PROMPT}, *HELLO]


def make_settings(adapter: Path, log_dir: Path, **overrides) -> Settings:
    """Settings for a test server, deaf to the developer's LLM_* variables and .env file."""
    with pytest.MonkeyPatch.context() as env:
        for name in [name for name in os.environ if name.startswith("LLM_")]:
            env.delenv(name)
        # Refusals answered at once: these tests send hundreds; test_serve's pacing test sets its own.
        fields = {
            "model": str(adapter),
            "device": "cpu",
            "request_log": log_dir / "requests.jsonl",
            "refusal_delay_s": 0,
        }
        return Settings(_env_file=None, **(fields | overrides))


@contextmanager
def serving(adapter: Path, log_dir: Path, *, loaded: LoadedModel | None = None, **overrides) -> Iterator[TestClient]:
    """A started app (lifespan run) whose model is ready: `loaded` if given, else loaded from `adapter`."""
    with TestClient(create_app(make_settings(adapter, log_dir, **overrides), loaded=loaded)) as client:
        deadline = time.monotonic() + 30
        while client.get("/ready").status_code != 200:
            assert time.monotonic() < deadline, client.get("/ready").json()
            time.sleep(0.02)
        yield client


@pytest.fixture(scope="module")
def client(served_adapter, served_model, tmp_path_factory) -> Iterator[TestClient]:
    """One server shared by the tests that only read (fresh ones are made where counts matter)."""
    with serving(served_adapter, tmp_path_factory.mktemp("logs"), loaded=served_model) as started:
        yield started


@pytest.fixture(scope="module")
def tokenizer(served_adapter):
    return load_tokenizer(served_adapter)


def chat(client: TestClient, messages=HELLO, **params):
    return client.post(CHAT, json={"messages": messages, "temperature": 0, **params})


def answer(client: TestClient, messages=HELLO, **params) -> str:
    response = chat(client, messages, **params)
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["message"]["content"]


def assert_error(response, status: int, *, code: str | None = None, param: str | None = None) -> dict:
    """`status` with OpenAI's error body; returns the error object."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if code:
        assert error["code"] == code
    if param:
        assert error["param"] == param
    return error


def sample(client: TestClient, metric: str, /, **labels: str) -> float:
    """The value of one sample on /metrics (0 when absent)."""
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for s in family.samples:
            if s.name == metric and all(s.labels.get(key) == value for key, value in labels.items()):
                return s.value
    return 0.0


def sse_events(text: str) -> list[str]:
    """The `data:` payloads of a server-sent event stream, asserting its framing."""
    assert text.endswith("\n\n")
    blocks = text.split("\n\n")[:-1]
    assert all(block.startswith("data: ") for block in blocks), blocks
    return [block.removeprefix("data: ") for block in blocks]


def read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def patch_generate(model, replacement, monkeypatch) -> None:
    """`model.generate` is `replacement` until the test ends. The model is the session's shared one: the
    patch is an instance attribute shadowing the method, which `monkeypatch` deletes at teardown."""
    monkeypatch.setitem(vars(model), "generate", replacement)


@contextmanager
def generation_held(client: TestClient, monkeypatch) -> Iterator[threading.Event]:
    """Every generate call waits until the yielded event is set (at the latest when the block ends)."""
    model = client.app.state.server.engine.model
    original, release = model.generate, threading.Event()

    def held(*args, **kwargs):
        release.wait(30)
        return original(*args, **kwargs)

    patch_generate(model, held, monkeypatch)
    try:
        yield release
    finally:
        release.set()


def wait_for(condition, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


# ---- health, readiness, models, demo page ---------------------------------------------------------------


def test_health_answers_at_once_and_ready_is_503_until_the_model_is_loaded(served_adapter, tmp_path):
    app = create_app(make_settings(served_adapter, tmp_path))
    not_started = TestClient(app)  # no lifespan: the model never loads
    assert not_started.get("/health").json() == {"status": "ok"}
    assert not_started.get("/ready").status_code == 503
    assert not_started.get("/ready").json() == {"status": "loading"}
    assert_error(not_started.post(CHAT, json={"messages": HELLO}), 503, code="model_not_ready")
    with serving(served_adapter, tmp_path) as client:  # loads the model itself: loading is what is tested
        ready = client.get("/ready").json()
    assert ready == {"status": "ready", "model": "{{ cookiecutter.project_slug }}", "version": "untrained"}


def test_a_model_that_cannot_load_fails_liveness_and_readiness(tmp_path):
    # Liveness fails too: a container that will never serve must be restarted or flagged, not "healthy".
    app = create_app(make_settings(tmp_path / "no-such-adapter", tmp_path))
    with TestClient(app) as client:
        wait_for(lambda: client.get("/ready").json()["status"] == "failed")
        health = client.get("/health")
        assert health.status_code == 503 and health.json()["status"] == "failed"
        assert "no-such-adapter: no such folder" in health.json()["error"]
        assert client.get("/ready").status_code == 503
        assert "no-such-adapter: no such folder" in client.get("/ready").json()["error"]
        assert "failed to load" in assert_error(client.post(CHAT, json={"messages": HELLO}), 503)["message"]


def test_models_lists_and_retrieves_the_served_model(client):
    listed = client.get("/v1/models").json()
    assert listed["object"] == "list"
    assert [(m["id"], m["object"]) for m in listed["data"]] == [(MODEL, "model")]
    assert client.get(f"/v1/models/{MODEL}").json()["id"] == MODEL
    assert_error(client.get("/v1/models/gpt-4o"), 404, code="model_not_found", param="model")


def test_demo_page_is_html_that_calls_the_api(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "/v1/chat/completions" in page.text and "<script>" in page.text
    # The API key lives for the tab's session only, not on disk for every later visitor (issue 27 item 12).
    assert "sessionStorage" in page.text and "localStorage" not in page.text


# ---- chat completions -----------------------------------------------------------------------------------


def test_completion_has_openai_shape_and_usage_counts_tokens_like_the_tokenizer(client, tokenizer):
    response = chat(client, max_tokens=5)
    body = response.json()
    assert response.status_code == 200
    assert body["id"].startswith("chatcmpl-") and response.headers["x-request-id"] == body["id"]
    assert body["object"] == "chat.completion" and body["model"] == "{{ cookiecutter.project_slug }}"
    assert isinstance(body["created"], int)
    [choice] = body["choices"]
    assert choice["index"] == 0 and choice["message"]["role"] == "assistant"
    prompt_ids = tokenizer.apply_chat_template(SEEN, add_generation_prompt=True, return_dict=True)["input_ids"]
    assert body["usage"]["prompt_tokens"] == len(prompt_ids)
    # The untrained tiny model never ends early, so it stops at max_tokens: "length" after exactly 5 tokens.
    assert choice["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 5
    assert body["usage"]["total_tokens"] == len(prompt_ids) + 5


def test_served_answer_equals_direct_generation_with_the_merged_model(client, served_model, tokenizer):
    prompt = tokenizer.apply_chat_template(SEEN, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    output = served_model.model.generate(**prompt, max_new_tokens=12, do_sample=False)
    direct = tokenizer.decode(output[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True)
    assert answer(client, max_tokens=12) == direct


def test_stop_sequence_ends_the_answer_before_it(client):
    full = answer(client, max_tokens=24)
    # A stop taken from the middle of the greedy answer (letters only, so no partial characters).
    start = next(i for i in range(len(full) // 3, len(full) - 2) if full[i : i + 2].isalpha())
    stop = full[start : start + 2]
    response = chat(client, max_tokens=24, stop=[stop, "never-generated"]).json()
    assert response["choices"][0]["message"]["content"] == full[: full.index(stop)]
    assert response["choices"][0]["finish_reason"] == "stop"


def test_stream_is_server_sent_events_ending_with_done(client):
    whole = answer(client, max_tokens=16, stop="zz-unlikely")
    response = client.post(
        CHAT,
        json={
            "messages": HELLO,
            "temperature": 0,
            "max_tokens": 16,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.text)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert {chunk["object"] for chunk in chunks} == {"chat.completion.chunk"}
    assert len({chunk["id"] for chunk in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(chunk["choices"][0]["delta"].get("content", "") for chunk in chunks if chunk["choices"])
    assert text == whole
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 16


def test_streamed_answer_honours_stop_sequences_too(client):
    full = answer(client, max_tokens=24)
    start = next(i for i in range(len(full) // 2, len(full) - 3) if full[i : i + 3].isalpha())
    stop = full[start : start + 3]
    response = client.post(
        CHAT, json={"messages": HELLO, "temperature": 0, "max_tokens": 24, "stop": stop, "stream": True}
    )
    chunks = [json.loads(event) for event in sse_events(response.text)[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == full[: full.index(stop)]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_sampling_with_a_seed_is_repeatable_and_differs_from_greedy(client):
    first = answer(client, max_tokens=16, temperature=1.5, top_p=0.9, seed=7)
    assert answer(client, max_tokens=16, temperature=1.5, top_p=0.9, seed=7) == first
    assert first != answer(client, max_tokens=16)


def test_concurrent_requests_are_batched_and_answered_as_if_alone(served_adapter, served_model, tmp_path, monkeypatch):
    prompts = [[{"role": "user", "content": "x" * n}] for n in (1, 5, 12, 30, 60, 3)]  # different padding
    with serving(served_adapter, tmp_path, max_batch_size=8, batch_wait_ms=0, loaded=served_model) as client:
        alone = [answer(client, p, max_tokens=10 + i) for i, p in enumerate(prompts)]
        with generation_held(client, monkeypatch) as release, ThreadPoolExecutor(len(prompts) + 1) as pool:
            blocker = pool.submit(answer, client, HELLO, max_tokens=4)  # holds the worker in its own batch
            engine = client.app.state.server.engine
            wait_for(lambda: engine.admitted == 1)
            together = [pool.submit(answer, client, p, max_tokens=10 + i) for i, p in enumerate(prompts)]
            wait_for(lambda: engine.admitted == len(prompts) + 1)
            release.set()
            assert blocker.result()
            assert [future.result() for future in together] == alone
        # 6 requests alone, then the blocker alone, then the 6 queued ones batched: usually all in one batch,
        # but on a loaded machine the worker may wake before the last arrivals, so allow a split, not 6 batches.
        assert sample(client, "llm_batch_size_sum") == 13
        assert 8 <= sample(client, "llm_batch_size_count") <= 10


def test_training_system_prompt_is_the_default(served_adapter, tmp_path, tokenizer):
    with serving(served_adapter, tmp_path) as client:  # the default is read from the run's config at load time
        usage = chat(client, max_tokens=1).json()["usage"]
        explicit = chat(client, SEEN, max_tokens=1).json()["usage"]
    bare = tokenizer.apply_chat_template(HELLO, add_generation_prompt=True, return_dict=True)["input_ids"]
    assert usage["prompt_tokens"] == explicit["prompt_tokens"] > len(bare)


def test_system_prompt_setting_is_added_when_a_request_has_none(served_adapter, tmp_path, tokenizer):
    system = {"role": "system", "content": "Reply with JSON only."}
    with serving(served_adapter, tmp_path, system_prompt=system["content"]) as client:  # applied at load time
        usage = chat(client, max_tokens=1).json()["usage"]
        explicit = chat(client, [system, *HELLO], max_tokens=1).json()["usage"]
    expected = tokenizer.apply_chat_template([system, *HELLO], add_generation_prompt=True, return_dict=True)
    assert usage["prompt_tokens"] == explicit["prompt_tokens"] == len(expected["input_ids"])


def served_prompt_ids(client: TestClient, user_message: str, monkeypatch) -> list[int]:
    """The prompt token ids the chat route builds for one plain user message (no system message)."""
    engine, built = client.app.state.server.engine, []
    encode = engine.encode

    async def recorded(messages):
        built.append(await encode(messages))
        return built[-1]

    monkeypatch.setattr(engine, "encode", recorded)
    assert chat(client, [{"role": "user", "content": user_message}], max_tokens=1).status_code == 200
    return built[0]


def evaluated_prompt_ids(adapter: Path, row: list[dict[str, str]]) -> list[int]:
    """The prompt token ids evaluation generates from for one test row, with its config and tokenizer."""
    from {{ cookiecutter.package_name }}.config import load_config
    from {{ cookiecutter.package_name }}.evaluate.evaluate import generate_answers

    class Recorder:  # stands in for the model: keeps each prompt (padding dropped), generates nothing
        def __init__(self, eos_token_id: int):
            self.generation_config = SimpleNamespace(eos_token_id=eos_token_id)
            self.prompts: list[list[int]] = []

        def generate(self, input_ids, attention_mask, **_):
            self.prompts += [ids[mask.bool()].tolist() for ids, mask in zip(input_ids, attention_mask, strict=True)]
            return input_ids

    tokenizer = load_tokenizer(adapter)
    recorder = Recorder(tokenizer.eos_token_id)
    eval_cfg = load_config(adapter.parent / "config.yaml").eval
    generate_answers(recorder, tokenizer=tokenizer, rows=[row], eval_cfg=eval_cfg, device="cpu")
    return recorder.prompts[0]


def test_served_prompt_equals_evaluated_prompt_for_the_example_rows(served_adapter, tmp_path, monkeypatch):
    """The example's `messages` rows carry the system prompt; `train` records it in the run's config, so a
    plain user message is served with the same prompt tokens as evaluation scored that row with."""
    from {{ cookiecutter.package_name }}.config import load_config
    from {{ cookiecutter.package_name }}.data.dataset import load_splits

    config = load_config(served_adapter.parent / "config.yaml")
    assert config.task.system_prompt == SYSTEM_PROMPT
    row = load_splits(config.data, system_prompt=config.task.system_prompt)["test"]["messages"][0]
    assert [message["role"] for message in row] == ["system", "user", "assistant"]
    with serving(served_adapter, tmp_path) as client:
        served = served_prompt_ids(client, row[1]["content"], monkeypatch)
    assert served == evaluated_prompt_ids(served_adapter, row)


def test_served_prompt_equals_evaluated_prompt_for_a_user_instruction_task(served_adapter, tmp_path, monkeypatch):
    """A user's own task: instruction rows without a system message and a task.system_prompt in the config.
    Data loading puts the prompt first in each row and the server in each request: the same tokens."""
    import shutil

    from {{ cookiecutter.package_name }}.config import dump_config, load_config
    from {{ cookiecutter.package_name }}.data.dataset import load_splits

    data = tmp_path / "tickets.jsonl"
    rows = [
        {"instruction": "Triage this ticket.", "input": f"Ticket {i}: my invoice {i} is wrong", "output": "{}"}
        for i in range(20)
    ]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    run = tmp_path / "tickets-run"
    shutil.copytree(served_adapter, run / "adapter")
    prompt = "Reply with JSON only. Keys: category, priority."
    example = load_config(served_adapter.parent / "config.yaml")
    task = {"name": "Ticket triage", "fields": ["category", "priority"], "system_prompt": prompt}
    data_path = {"path": str(data)}
    updates = {"task": example.task.model_copy(update=task), "data": example.data.model_copy(update=data_path)}
    dump_config(example.model_copy(update=updates), run / "config.yaml")

    config = load_config(run / "config.yaml")
    row = load_splits(config.data, system_prompt=config.task.system_prompt)["test"]["messages"][0]
    assert row[0] == {"role": "system", "content": prompt} and row[1]["content"].startswith("Triage this ticket.\n\n")
    with serving(run / "adapter", tmp_path / "logs") as client:
        served = served_prompt_ids(client, row[1]["content"], monkeypatch)
    assert served == evaluated_prompt_ids(run / "adapter", row)


# ---- limits and errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "code", "param"),
    [
        ({"messages": HELLO, "max_tokens": 100_000}, 400, "max_tokens_exceeded", "max_tokens"),
        ({"messages": HELLO, "max_completion_tokens": 100_000}, 400, "max_tokens_exceeded", "max_tokens"),
        ({"messages": [{"role": "user", "content": "word " * 2000}]}, 400, "context_length_exceeded", "messages"),
        ({"messages": HELLO, "model": "gpt-4o"}, 404, "model_not_found", "model"),
        ({"messages": []}, 422, "invalid_value", "messages"),
        ({}, 422, "invalid_value", "messages"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, 422, "invalid_value", "messages.0.role"),
        ({"messages": [{"role": "user", "content": 42}]}, 422, "invalid_value", "messages.0.content"),
        ({"messages": HELLO, "max_tokens": "many"}, 422, "invalid_value", "max_tokens"),
        ({"messages": HELLO, "max_tokens": 0}, 422, "invalid_value", "max_tokens"),
        ({"messages": HELLO, "temperature": 3}, 422, "invalid_value", "temperature"),
        ({"messages": HELLO, "stop": ["a", "b", "c", "d", "e"]}, 422, "invalid_value", "stop"),
        ({"messages": HELLO, "stop": ""}, 422, "invalid_value", "stop"),
        ({"messages": HELLO, "n": 2}, 422, "invalid_value", "n"),
        # Strict types, as OpenAI's API: no coercion of strings or booleans into booleans or numbers.
        ({"messages": HELLO, "stream": "yes"}, 422, "invalid_value", "stream"),
        ({"messages": HELLO, "max_tokens": True}, 422, "invalid_value", "max_tokens"),
        ({"messages": HELLO, "temperature": "0.5"}, 422, "invalid_value", "temperature"),
        (
            {"messages": HELLO, "stream_options": {"include_usage": 1}},
            422,
            "invalid_value",
            "stream_options.include_usage",
        ),
        ([1, 2, 3], 422, "invalid_value", None),
    ],
    ids=lambda value: None if isinstance(value, dict | list) else str(value),
)
def test_invalid_requests_get_openai_errors(client, body, status, code, param):
    assert_error(client.post(CHAT, json=body), status, code=code, param=param)


def test_a_flood_of_messages_is_refused_before_any_message_is_validated(client):
    # 30,001 invalid items in a 60 KB body (issue 27): one error naming the limit, not 30,001 validated items.
    error = assert_error(client.post(CHAT, json={"messages": [1] * 30_001}), 422, param="messages")
    assert "at most 256 items" in error["message"] and "30001" in error["message"]
    # 256 messages pass the schema; they are already over the default prompt limit, as MAX_MESSAGES says.
    assert_error(chat(client, [{"role": "user", "content": "hi"}] * 256), 400, code="context_length_exceeded")


def test_refusals_wait_out_the_refusal_delay_while_good_requests_go_on(served_adapter, served_model, tmp_path):
    # Issue 27: 8 clients sending refused bodies as fast as answered took good requests' p50 from 65 ms to
    # 1.5 s; a refusal that waits (off the event loop) holds each such client to a few requests a second.
    with (
        serving(served_adapter, tmp_path, refusal_delay_s=1.5, loaded=served_model) as client,
        ThreadPoolExecutor(1) as pool,
    ):
        started = time.perf_counter()
        refused = pool.submit(client.post, CHAT, json={"messages": [1] * 300})
        assert chat(client, max_tokens=1).status_code == 200
        answered_good = time.perf_counter() - started
        assert_error(refused.result(), 422, param="messages")
        assert time.perf_counter() - started >= 1.5 > answered_good
    statuses = [json.loads(line)["status"] for line in (tmp_path / "requests.jsonl").read_text().splitlines()]
    assert sorted(statuses) == [200, 422]


def test_the_prompt_is_built_off_the_event_loop(client, monkeypatch):
    # A long chat template costs tens of milliseconds, during which the event loop would answer no one.
    tokenizer = client.app.state.server.loaded.tokenizer
    original, threads = tokenizer.apply_chat_template, []

    def recorded(*args, **kwargs):
        threads.append(threading.current_thread().name)
        return original(*args, **kwargs)

    monkeypatch.setitem(vars(tokenizer), "apply_chat_template", recorded)
    loop_thread = client.portal.call(lambda: threading.current_thread().name)
    answer(client, max_tokens=1)
    answer(client, max_tokens=1)
    assert len(threads) == 2 and loop_thread not in threads, (threads, loop_thread)


@pytest.mark.parametrize(
    "raw",
    [b"{not json", b'{"messages": [', b"[" * 5_000 + b"]" * 5_000, b'{"messages": "\xff"}'],
    ids=["malformed", "truncated", "nested-5000-deep", "invalid-utf8"],
)
def test_bad_json_is_400_and_the_server_keeps_serving(client, raw):
    response = client.post(CHAT, content=raw, headers={"content-type": "application/json"})
    assert_error(response, 400)
    assert chat(client, max_tokens=1).status_code == 200


def test_body_without_json_content_type_is_400_naming_the_fix(client):
    error = assert_error(client.post(CHAT, content=json.dumps({"messages": HELLO})), 400, code="invalid_json")
    assert "Content-Type: application/json" in error["message"]


def test_bodies_over_the_limit_are_413_with_or_without_content_length(served_adapter, served_model, tmp_path):
    big = json.dumps({"messages": [{"role": "user", "content": "x" * 5_000}]}).encode()
    with serving(served_adapter, tmp_path, max_body_bytes=4_096, loaded=served_model) as client:
        assert_error(client.post(CHAT, content=big, headers={"content-type": "application/json"}), 413)
        chunked = client.post(
            CHAT, content=iter([big[:3000], big[3000:]]), headers={"content-type": "application/json"}
        )
        assert_error(chunked, 413, code="body_too_large")
        assert chat(client, max_tokens=1).status_code == 200


def test_unknown_routes_and_methods_get_the_same_error_shape(client):
    assert_error(client.get("/v1/completions"), 404)
    assert_error(client.get(CHAT), 405)


def test_api_key_is_required_on_v1_when_set(served_adapter, served_model, tmp_path):
    with serving(served_adapter, tmp_path, api_key="s3cret", loaded=served_model) as client:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic czNjcmV0"}):
            refused = client.post(CHAT, json={"messages": HELLO}, headers=headers)
            assert_error(refused, 401, code="invalid_api_key")
            assert refused.headers["www-authenticate"] == "Bearer"
            assert_error(client.get("/v1/models", headers=headers), 401)
        ok = client.post(CHAT, json={"messages": HELLO, "max_tokens": 1}, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        # Probes, metrics and the page stay open: they are scraped and opened without credentials.
        assert [client.get(path).status_code for path in ("/health", "/ready", "/metrics", "/")] == [200] * 4


def test_full_queue_answers_429_with_retry_after(served_adapter, served_model, tmp_path, monkeypatch):
    with serving(served_adapter, tmp_path, max_batch_size=1, max_queue=1, loaded=served_model) as client:
        engine = client.app.state.server.engine
        with generation_held(client, monkeypatch) as release, ThreadPoolExecutor(2) as pool:
            admitted = [pool.submit(chat, client, max_tokens=2) for _ in range(2)]  # one generating, one queued
            wait_for(lambda: engine.admitted == 2)
            refused = chat(client, max_tokens=2)
            release.set()
            assert [future.result().status_code for future in admitted] == [200, 200]
        assert_error(refused, 429, code="queue_full")
        assert refused.headers["retry-after"] == "1"
        assert sample(client, "llm_requests_total", status="429", finish_reason="none") == 1


def test_generation_timeout_is_504_and_frees_the_server(served_adapter, served_model, tmp_path, monkeypatch):
    with serving(served_adapter, tmp_path, generation_timeout_s=0.3, loaded=served_model) as client:
        with generation_held(client, monkeypatch):
            timed_out = chat(client, max_tokens=4)
            streamed = client.post(CHAT, json={"messages": HELLO, "max_tokens": 4, "stream": True})
        assert_error(timed_out, 504, code="timeout")
        # A stream has sent its 200 before the timeout: the error arrives as an event, as OpenAI sends it, and
        # [DONE] still ends the stream (as vLLM's do), so a client that reads to [DONE] is not left waiting.
        assert streamed.status_code == 200
        *_, error, done = sse_events(streamed.text)
        assert json.loads(error)["error"]["code"] == "timeout" and done == "[DONE]"
        wait_for(lambda: client.app.state.server.engine.admitted == 0)
        assert chat(client, max_tokens=2).status_code == 200
        assert sample(client, "llm_requests_total", status="504", finish_reason="none") == 2


def test_a_failing_generate_is_500_and_the_next_request_is_served(served_adapter, served_model, tmp_path, monkeypatch):
    def out_of_memory(*args, **kwargs):
        raise RuntimeError("CUDA out of memory")

    with serving(served_adapter, tmp_path, loaded=served_model) as client:
        patch_generate(client.app.state.server.engine.model, out_of_memory, monkeypatch)
        error = assert_error(chat(client, max_tokens=2), 500, code="generation_failed")
        assert "CUDA out of memory" in error["message"]
        monkeypatch.undo()  # the model's own generate again
        assert chat(client, max_tokens=2).status_code == 200


# ---- metrics and request log ----------------------------------------------------------------------------


def test_metrics_count_every_request_with_its_labels(served_adapter, served_model, tmp_path):
    with serving(served_adapter, tmp_path, loaded=served_model) as client:
        assert client.get("/metrics").headers["content-type"].startswith("text/plain")
        for _ in range(3):
            chat(client, max_tokens=3)
        client.post(CHAT, json={"messages": HELLO, "temperature": 0, "max_tokens": 3, "stream": True})
        chat(client, max_tokens=100_000)
        client.post(CHAT, json={"messages": "not a list"})
        assert sample(client, "llm_requests_total", status="200", finish_reason="length") == 4
        assert sample(client, "llm_requests_total", status="400", finish_reason="none") == 1
        assert sample(client, "llm_requests_total", status="422", finish_reason="none") == 1
        assert sample(client, "llm_request_duration_seconds_count") == 6
        assert sample(client, "llm_prompt_tokens_count") == sample(client, "llm_completion_tokens_count") == 4
        assert sample(client, "llm_completion_tokens_sum") == 12
        assert sample(client, "llm_time_to_first_token_seconds_count") == 1
        assert sample(client, "llm_requests_in_flight") == 0
        info = {"name": "{{ cookiecutter.project_slug }}", "version": "untrained"}
        assert sample(client, "llm_model_info", **info) == 1
        assert sample(client, "process_resident_memory_bytes") > 50e6  # the process's own, read from /proc


def test_request_log_gets_one_record_per_request_without_texts(served_adapter, served_model, tmp_path, tokenizer):
    with serving(served_adapter, tmp_path, loaded=served_model) as client:
        chat(client, max_tokens=3)
        client.post(CHAT, json={"messages": HELLO, "temperature": 0, "max_tokens": 2, "stream": True})
        chat(client, max_tokens=100_000)
        client.post(CHAT, json={"messages": []})
        records = read_log(tmp_path / "requests.jsonl")
    assert [tuple(record) for record in records] == [RECORD_KEYS] * 4  # exactly these keys, in this order
    assert [r["status"] for r in records] == [200, 200, 400, 422]
    assert [r["stream"] for r in records] == [False, True, False, False]
    assert [r["completion_tokens"] for r in records] == [3, 2, None, None]
    assert [r["finish_reason"] for r in records] == ["length", "length", None, None]
    prompt_ids = tokenizer.apply_chat_template(SEEN, add_generation_prompt=True, return_dict=True)["input_ids"]
    assert records[0]["prompt_tokens"] == len(prompt_ids)
    assert records[0]["prompt_chars"] == len(HELLO[0]["content"])
    assert records[0]["model"] == MODEL and records[0]["model_version"] == "untrained"
    assert records[0]["time"].endswith("+00:00") and records[0]["latency_s"] > 0
    assert len({r["request_id"] for r in records}) == 4


def test_request_log_texts_are_redacted_when_enabled(served_adapter, served_model, tmp_path):
    private = "Mail jane.doe@example.com or call +44 20 7946 0958, card 4111 1111 1111 1111. Order B11688."
    with serving(served_adapter, tmp_path, log_texts=True, loaded=served_model) as client:
        reply = answer(client, [{"role": "user", "content": private}], max_tokens=4)
    [record] = read_log(tmp_path / "requests.jsonl")
    assert tuple(record) == (*RECORD_KEYS, "prompt", "response")
    assert record["prompt"] == "Mail [EMAIL] or call [PHONE], card [CARD]. Order B11688."
    assert record["response"] == reply
    assert "jane.doe" not in (tmp_path / "requests.jsonl").read_text()


def test_request_log_can_be_switched_off(served_adapter, served_model, tmp_path):
    with serving(served_adapter, tmp_path, request_log="", loaded=served_model) as client:
        assert chat(client, max_tokens=1).status_code == 200
    assert not (tmp_path / "requests.jsonl").exists()


# ---- model source and the serve command -----------------------------------------------------------------


def test_model_source_resolves_folders_runs_and_latest(served_adapter, tmp_path):
    assert resolve_model_source(str(served_adapter)).adapter_dir == served_adapter
    assert resolve_model_source(str(served_adapter.parent)).adapter_dir == served_adapter  # the run folder
    latest = resolve_model_source("latest", output_dir=served_adapter.parents[1])
    assert (latest.adapter_dir, latest.name, latest.version) == (served_adapter, "untrained", None)
    with pytest.raises(ModelSourceError, match="run `train` first"):
        resolve_model_source("latest", output_dir=tmp_path)
    with pytest.raises(ModelSourceError, match=r"--model models:/demo@champion: model .* not found"):
        resolve_model_source("models:/demo@champion")


@pytest.mark.parametrize(
    ("args", "env", "exit_code", "message"),
    [
        (["--model", "no/such/adapter"], {}, 1, "error: --model no/such/adapter: no such folder"),
        (["--model", "runs:/abc/adapter"], {}, 1, "error: --model runs:/abc/adapter: model runs:/abc/a"),
        ([], {"LLM_MAX_TOKENS": "lots"}, 2, "error: LLM_MAX_TOKENS: Input should be a valid integer"),
        (["--config", "no-such.yaml"], {}, 2, "no-such.yaml: config file not found"),
    ],
)
def test_serve_command_fails_fast_with_a_clear_error(args, env, exit_code, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no outputs/ and no .env here
    result = CliRunner().invoke(cli_app, ["serve", *args], env=env)
    assert result.exit_code == exit_code, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_an_unwritable_request_log_is_refused_before_the_server_starts(tmp_path, monkeypatch):
    """Issue 27 item 11: not a traceback from the app's start-up, but the variable, the path and exit 2."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("not a folder")
    log = tmp_path / "afile" / "requests.jsonl"  # its parent is a file: unwritable, even as root
    result = CliRunner().invoke(cli_app, ["serve"], env={"LLM_REQUEST_LOG": str(log)})
    assert result.exit_code == 2, result.output
    assert f"error: LLM_REQUEST_LOG={log}: cannot write the request log" in result.output
    assert "Traceback" not in result.output


# ---- stalled uploads and failed loads (issue 18, items 3 and 4) -------------------------------------------


def call_app(app, receive, *, content_length: int = 1000) -> list[dict]:
    """One POST /v1/chat/completions straight into the ASGI app with the given `receive`; the messages sent."""
    import asyncio

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": CHAT,
        "raw_path": CHAT.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(content_length).encode())],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent


def part_of_the_body_then(last: dict | None):
    """A client that sends 10 of its 1000 bytes, then `last` (None: nothing ever again, a stalled upload)."""
    import asyncio

    messages = [{"type": "http.request", "body": b'{"messages"', "more_body": True}]

    async def receive() -> dict:
        if messages:
            return messages.pop(0)
        if last is None:
            await asyncio.Event().wait()  # never set: the rest of the body never comes
        return last

    return receive


def test_a_stalled_upload_gets_408_within_the_body_timeout_and_is_counted_as_408(served_adapter, tmp_path):
    app = create_app(make_settings(served_adapter, tmp_path, body_timeout_s=0.3))
    started = time.monotonic()
    sent = call_app(app, part_of_the_body_then(None))
    assert time.monotonic() - started < 5
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 408
    assert (b"connection", b"close") in sent[0]["headers"]
    error = json.loads(b"".join(message.get("body", b"") for message in sent[1:]))["error"]
    assert error["code"] == "body_timeout" and "0.3 s" in error["message"]
    assert error["type"] == "timeout_error" and error["param"] is None  # OpenAI's shape, as documented
    metrics = TestClient(app)  # no lifespan needed to read /metrics
    assert sample(metrics, "llm_requests_total", status="408", finish_reason="none") == 1
    assert sample(metrics, "llm_requests_total", status="413", finish_reason="none") == 0
    assert sample(metrics, "llm_requests_in_flight") == 0


def test_a_client_that_leaves_mid_body_is_counted_as_499_not_413(served_adapter, tmp_path):
    app = create_app(make_settings(served_adapter, tmp_path, body_timeout_s=5))
    sent = call_app(app, part_of_the_body_then({"type": "http.disconnect"}))
    assert sent == []  # nobody to answer
    metrics = TestClient(app)
    assert sample(metrics, "llm_requests_total", status="499", finish_reason="none") == 1
    assert sample(metrics, "llm_requests_total", status="413", finish_reason="none") == 0


def test_liveness_is_200_while_the_model_loads(served_adapter, tmp_path, monkeypatch):
    from {{ cookiecutter.package_name }}.serve import app as app_module

    release = threading.Event()

    def slow_load(settings):
        release.wait(30)
        raise RuntimeError("stopped by the test")

    monkeypatch.setattr(app_module, "load_for_serving", slow_load)
    with TestClient(create_app(make_settings(served_adapter, tmp_path))) as client:
        try:
            assert client.get("/health").json() == {"status": "ok"}
            assert client.get("/ready").status_code == 503 and client.get("/ready").json() == {"status": "loading"}
        finally:
            release.set()


# ---- one request cannot hurt another (issue 18) -------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"temperature": 1e-40}, "temperature"),  # overflows float32 logits: the sampler failed its batch
        ({"temperature": 1, "top_p": 5e-324}, "top_p"),  # 0 in float32: nothing left to sample
        ({"temperature": 1, "seed": 2**64}, "seed"),  # beyond torch's 64-bit seeds
        ({"temperature": 1, "seed": -1}, "seed"),
        ({"stop": ["x" * 257]}, "stop"),
        ({"stop": "x" * 60_000}, "stop"),
    ],
    ids=["tiny-temperature", "tiny-top-p", "seed-2**64", "negative-seed", "stop-257-chars", "stop-60k-chars"],
)
def test_values_that_would_break_the_sampler_or_the_stop_check_are_refused(client, params, param):
    assert_error(chat(client, max_tokens=1, **params), 422, code="invalid_value", param=param)


def test_the_limits_of_the_sampling_values_are_accepted(client):
    for params in ({"temperature": 0.01}, {"temperature": 1, "top_p": 1e-6, "seed": 2**63 - 1}, {"stop": "x" * 256}):
        assert chat(client, max_tokens=2, **params).status_code == 200, params


def test_integral_floats_are_integers_as_the_schema_says_and_other_floats_are_not(client):
    # Found by schemathesis: JSON Schema's "integer" includes 1508.0, which strict validation had refused (422).
    whole = answer(client, max_tokens=3, seed=1508)
    assert answer(client, max_tokens=3.0, seed=1508.0, n=1.0) == whole
    assert_error(chat(client, max_tokens=2.5), 422, code="invalid_value", param="max_tokens")


def test_a_request_that_breaks_generation_fails_alone_in_its_batch(served_adapter, served_model, tmp_path, monkeypatch):
    from {{ cookiecutter.package_name }}.serve import engine as engine_module

    sample_row = engine_module._RowSampler._sample

    def poisoned(logits, row):  # the poison the bounds now refuse, simulated: this row's sampler raises
        if row.params.seed == 13:
            raise RuntimeError("probability tensor contains either inf, nan or element < 0")
        return sample_row(logits, row)

    monkeypatch.setattr(engine_module._RowSampler, "_sample", staticmethod(poisoned))
    prompts = [[{"role": "user", "content": "x" * n}] for n in (1, 5, 12, 30, 60, 3, 9)]

    def ask(prompt, stream):
        body = {"messages": prompt, "temperature": 0, "max_tokens": 6, "stream": stream}
        return client.post(CHAT, json=body)

    with serving(served_adapter, tmp_path, max_batch_size=8, batch_wait_ms=0, loaded=served_model) as client:
        alone = [answer(client, p, max_tokens=6) for p in prompts]
        with generation_held(client, monkeypatch) as release, ThreadPoolExecutor(9) as pool:
            blocker = pool.submit(answer, client, HELLO, max_tokens=2)  # holds the worker in its own batch
            engine = client.app.state.server.engine
            wait_for(lambda: engine.admitted == 1)
            innocent = [pool.submit(ask, p, i % 3 == 0) for i, p in enumerate(prompts)]  # 3 of them streamed
            poison = pool.submit(chat, client, max_tokens=6, temperature=1, seed=13)
            wait_for(lambda: engine.admitted == 9)
            release.set()
            assert blocker.result()
            responses = [future.result() for future in innocent]
            assert_error(poison.result(), 500, code="generation_failed")
        assert [r.status_code for r in responses] == [200] * 7
        for i, response in enumerate(responses):
            if i % 3:
                assert response.json()["choices"][0]["message"]["content"] == alone[i]
            else:
                events = sse_events(response.text)
                chunks = [json.loads(event) for event in events[:-1]]
                assert events[-1] == "[DONE]" and all("error" not in chunk for chunk in chunks)
                assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == alone[i]
        assert sample(client, "llm_requests_total", status="500", finish_reason="none") == 1


def test_stop_scanner_finds_the_earliest_stop_and_holds_back_what_may_become_one():
    from {{ cookiecutter.package_name }}.serve.engine import StopScanner

    scanner = StopScanner(("abcd", "bc", "aab"))
    assert scanner.scan("xxa") is None and scanner.safe_end == 2  # "a" may start "abcd" or "aab"
    assert scanner.scan("xxaa") is None and scanner.safe_end == 2  # "aa" may start "aab"
    assert scanner.scan("xxaab\ufffd") == 2  # "aab" is complete; the partial character is ignored
    scanner = StopScanner(("abcd", "bc"))
    assert scanner.scan("a") is None and scanner.scan("abc") == 1  # "bc" ends first: cut before it
    scanner = StopScanner(("abac",))
    assert scanner.scan("ababa") is None and scanner.safe_end == 2  # overlapping: "aba" is held
    assert scanner.scan("ababac") == 2
    scanner = StopScanner(("x\n",))
    assert scanner.scan("say x") is None and scanner.safe_end == 4
    assert scanner.scan("said x\n") == 5  # decoding rewrote earlier text: scanned again from the start
    assert StopScanner(()).scan("anything") is None


def test_stop_check_cost_per_token_does_not_grow_with_the_stop_length():
    from {{ cookiecutter.package_name }}.serve.engine import StopScanner

    # 1,500 tokens of 4 characters each; long stops that the text almost matches all the time (the worst
    # case for testing every prefix), against 1-character stops, timed in this same test: only the ratio counts.
    texts = ["x" * (4 * n) for n in range(1, 1501)]

    def best_time(stops: tuple[str, ...]) -> float:
        times = []
        for _ in range(3):
            scanner, started = StopScanner(stops), time.perf_counter()
            for text in texts:
                assert scanner.scan(text) is None
            times.append(time.perf_counter() - started)
        return min(times)

    short = best_time(("y", "z", "w", "v"))
    long = best_time(tuple("x" * 255 + end for end in "yzwv"))
    assert long < 3 * short, (long, short)


def test_a_prompt_with_a_lone_surrogate_still_gets_its_request_log_line(served_adapter, served_model, tmp_path):
    body = {"messages": [{"role": "user", "content": "order \ud800 B11688"}], "temperature": 0, "max_tokens": 2}
    raw = json.dumps(body).encode()  # valid JSON ("\\ud800" escaped), though no UTF-8 text can hold it
    with serving(served_adapter, tmp_path, log_texts=True, loaded=served_model) as client:
        first = client.post(CHAT, content=raw, headers={"content-type": "application/json"})
        assert chat(client, max_tokens=2).status_code == 200
    records = read_log(tmp_path / "requests.jsonl")
    assert [r["status"] for r in records] == [first.status_code, 200]
    assert records[0]["prompt"] == "order \ud800 B11688"


# ---- LLM_INT8_DECODE (serve/int8.py) ---------------------------------------------------------------------


def test_int8_layers_read_int8_weights_for_decoding_rows_and_the_models_own_for_prompts():
    import torch

    from {{ cookiecutter.package_name }}.serve.int8 import DECODE_ROWS, Int8DecodeLinear

    torch.manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        linear = torch.nn.Linear(64, 96).to(dtype)
        layer = Int8DecodeLinear(linear)
        prompt = torch.randn(1, DECODE_ROWS + 1, 64, dtype=dtype)
        assert torch.equal(layer(prompt), linear(prompt))  # many rows: the original product, bit for bit
        step = torch.randn(4, 1, 64, dtype=dtype)  # a decoding step of 4 sequences
        got, full = layer(step), linear(step)
        assert got.dtype == dtype and got.shape == full.shape
        assert not torch.equal(got, full)  # computed from the int8 copy...
        assert (got.float() - full.float()).norm() < 0.02 * full.float().norm()  # ...and close to the original
        assert set(layer.state_dict()) == {"linear.weight", "linear.bias"}  # the copy is never saved


def test_int8_decoding_wraps_only_layers_the_kernel_computes_right(monkeypatch):
    import torch

    from {{ cookiecutter.package_name }}.serve.int8 import Int8DecodeLinear, use_int8_decoding

    def model() -> torch.nn.Sequential:
        return torch.nn.Sequential(torch.nn.Linear(32, 24), torch.nn.Linear(24, 32), torch.nn.Linear(32, 8))

    wrapped = model()
    assert use_int8_decoding(wrapped) == 2  # an input width of 24 (not a multiple of 16) is left as it is
    assert [type(layer) for layer in wrapped] == [Int8DecodeLinear, torch.nn.Linear, Int8DecodeLinear]
    # A kernel that computes wrong products (as it did for some widths) is caught by the probe of each layer.
    monkeypatch.setattr(torch, "_weight_int8pack_mm", lambda rows, weight, scales: torch.zeros(len(rows), len(weight)))
    untouched = model()
    assert use_int8_decoding(untouched) == 0
    assert all(type(layer) is torch.nn.Linear for layer in untouched)


def test_int8_decoding_refuses_a_model_that_is_not_on_the_cpu():
    import torch

    from {{ cookiecutter.package_name }}.errors import BadInput
    from {{ cookiecutter.package_name }}.serve.int8 import use_int8_decoding

    with torch.device("meta"):
        model = torch.nn.Sequential(torch.nn.Linear(32, 32))
    with pytest.raises(BadInput, match="LLM_INT8_DECODE is for a model on the CPU, but this one is on meta"):
        use_int8_decoding(model)


def test_the_server_with_int8_decoding_decodes_with_int8_layers(served_adapter, served_model, tmp_path, monkeypatch):
    import torch

    from {{ cookiecutter.package_name }}.serve.int8 import Int8DecodeLinear
    from {{ cookiecutter.package_name }}.serve.loader import load_for_serving

    linears = sum(isinstance(m, torch.nn.Linear) and m.in_features % 16 == 0 for m in served_model.model.modules())
    loaded = load_for_serving(make_settings(served_adapter, tmp_path, int8_decode=True))
    assert sum(isinstance(m, Int8DecodeLinear) for m in loaded.model.modules()) == linears > 0
    int8_products, kernel = [], torch._weight_int8pack_mm
    monkeypatch.setattr(torch, "_weight_int8pack_mm", lambda *args: int8_products.append(1) or kernel(*args))
    with serving(served_adapter, tmp_path, loaded=loaded) as client:
        response = chat(client, max_tokens=6, stop=None)
    assert response.status_code == 200, response.text
    # Every layer in each decoding step, plus the output layer in the prompt's pass: generate computes the logits
    # of the prompt's last position only (1 row). The prompt's other layers used the full weights (many rows).
    decoding_steps = response.json()["usage"]["completion_tokens"] - 1  # the first token came from the prompt's pass
    assert len(int8_products) == decoding_steps * linears + 1
