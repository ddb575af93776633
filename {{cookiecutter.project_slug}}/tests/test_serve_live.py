"""A real server: the `serve` command in a subprocess on 127.0.0.1, called over HTTP by the official
`openai` client, under load, and (where Chromium is installed) through the demo page in a browser."""

import asyncio
import itertools
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

MODEL = "{{ cookiecutter.project_slug }}"
PACKAGE = "{{ cookiecutter.package_name }}"
API_KEY = "live-test-key"
HELLO = [{"role": "user", "content": "Where is my order B11688?"}]
SRC = Path(__file__).parents[1] / "src"
LOAD_SCRIPT = Path(__file__).parents[1] / "scripts" / "load_test.py"
CHROMIUM = Path("/usr/bin/chromium")
# Real servers on real ports: part of the end-to-end run (`make test`), not of `make test FAST=1`.
pytestmark = pytest.mark.e2e


@pytest.fixture(scope="session")
def server_process(free_port, wait_until_ready) -> Callable[..., AbstractContextManager[tuple[subprocess.Popen, str]]]:
    """`with server_process(adapter, workdir, **env) as (process, url):` runs `<project> serve` in a subprocess
    (output in workdir/server.log), yields it and its base URL once /ready answers 200, and stops it after."""

    @contextmanager
    def run(adapter: Path, workdir: Path, **env: str) -> Iterator[tuple[subprocess.Popen, str]]:
        port = free_port()
        environment = {name: value for name, value in os.environ.items() if not name.startswith("LLM_")}
        environment |= {"HF_HUB_OFFLINE": "1", "LLM_DEVICE": "cpu", "LLM_REQUEST_LOG": str(workdir / "requests.jsonl")}
        environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))
        command = [sys.executable, "-m", PACKAGE, "serve", "--model", str(adapter), "--port", str(port)]
        log = workdir / "server.log"  # a file, not a pipe: a full pipe would block the server mid-test
        with log.open("w") as output:
            server = subprocess.Popen(
                command, cwd=workdir, env=environment | env, stdout=output, stderr=subprocess.STDOUT
            )
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until_ready(f"{url}/ready", process=server, output=log)
            yield server, url
        finally:
            server.terminate()
            server.wait(timeout=30)

    return run


@pytest.fixture(scope="session")
def running_server(server_process) -> Callable[..., AbstractContextManager[str]]:
    """`with running_server(adapter, workdir, **env) as url:` as `server_process`, yielding only the URL."""

    @contextmanager
    def run(adapter: Path, workdir: Path, **env: str) -> Iterator[str]:
        with server_process(adapter, workdir, **env) as (_, url):
            yield url

    return run


@pytest.fixture(scope="module")
def server(served_adapter, tmp_path_factory, running_server) -> Iterator[tuple[str, Path]]:
    workdir = tmp_path_factory.mktemp("live")
    with running_server(served_adapter, workdir, LLM_API_KEY=API_KEY) as url:
        yield url, workdir


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    url, _ = server
    return openai.OpenAI(base_url=f"{url}/v1", api_key=API_KEY, max_retries=0, timeout=30)


def sample(url: str, metric: str, **labels: str) -> float:
    """The sum of a metric's samples on /metrics that carry `labels`."""
    families = text_string_to_metric_families(httpx.get(f"{url}/metrics").text)
    samples = [s for f in families for s in f.samples if s.name == metric]
    return sum(s.value for s in samples if all(s.labels.get(k) == v for k, v in labels.items()))


def test_openai_client_lists_the_model_and_gets_a_completion(client):
    assert [model.id for model in client.models.list().data] == [MODEL]
    completion = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=8, temperature=0)
    assert completion.object == "chat.completion" and completion.model == MODEL
    assert completion.choices[0].finish_reason == "length"
    assert completion.choices[0].message.role == "assistant" and completion.choices[0].message.content
    assert completion.usage.completion_tokens == 8
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + 8


def test_openai_client_streams_the_same_answer(client):
    whole = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=12, temperature=0)
    stream = client.chat.completions.create(
        model=MODEL, messages=HELLO, max_tokens=12, temperature=0, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]
    assert chunks[-1].usage.completion_tokens == 12


def test_openai_client_raises_its_usual_errors(server, client):
    url, _ = server
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0).models.list()
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=1_000_000)
    with pytest.raises(openai.NotFoundError, match="not served here"):
        client.chat.completions.create(model="gpt-4o", messages=HELLO, max_tokens=1)


def test_load_200_requests_16_at_a_time_no_5xx_and_all_counted(server):
    url, workdir = server
    counted_before = sample(url, "llm_requests_total")
    logged_before = len((workdir / "requests.jsonl").read_text().splitlines())
    statuses = asyncio.run(_load(url, total=200, concurrency=16, time_cap_s=90))
    assert not [status for status in statuses if status >= 500], statuses
    assert len(statuses) == 200
    assert sample(url, "llm_requests_total") - counted_before == 200
    assert len((workdir / "requests.jsonl").read_text().splitlines()) - logged_before == 200


async def _load(url: str, *, total: int, concurrency: int, time_cap_s: float) -> list[int]:
    """`total` chat requests, at most `concurrency` in flight (every 4th streamed); their statuses."""
    gate = asyncio.Semaphore(concurrency)
    headers = {"Authorization": f"Bearer {API_KEY}"}

    async def one(http: httpx.AsyncClient, i: int) -> int:
        body = {"model": MODEL, "messages": [{"role": "user", "content": f"Order {i}?"}], "max_tokens": 8}
        async with gate:
            if i % 4:
                return (await http.post("/v1/chat/completions", json=body, headers=headers)).status_code
            async with http.stream("POST", "/v1/chat/completions", json=body | {"stream": True}, headers=headers) as r:
                await r.aread()
                return r.status_code

    async with httpx.AsyncClient(base_url=url, timeout=60) as http, asyncio.timeout(time_cap_s):
        return list(await asyncio.gather(*(one(http, i) for i in range(total))))


def test_load_script_with_bad_requests_and_streams_finds_no_5xx_and_no_failed_good_request(server):
    url, _ = server
    command = [sys.executable, str(LOAD_SCRIPT), "--url", url, "--requests", "40", "--concurrency", "8"]
    command += ["--bad-share", "0.1", "--stream-share", "0.3", "--api-key", API_KEY, "--max-tokens", "8", "--json"]
    command += ["--flooders", "2"]  # two clients sending 30,001-item bodies all along
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert (report["good"], report["bad"]) == (36, 4) and report["passed"] is True
    assert report["good_by_status"] == {"200": 36} and report["server_errors"] == 0
    assert set(report["flood_by_status"]) == {"422"}, report["flood_by_status"]
    # The first four kinds of bad request, each refused with its 4xx: invalid JSON, wrong type x2, over the limit.
    assert report["bad_by_status"] == {"400": 2, "422": 2}, report["bad_by_status"]
    assert 0 < report["latency_ms"]["p50"] <= report["latency_ms"]["p95"] <= report["latency_ms"]["p99"]
    assert report["rss_mb_before"] > 10 and report["rss_mb_after"] > 10, report["rss_source"]


def test_a_client_leaving_mid_stream_frees_its_slot_and_is_counted_499(server):
    url, _ = server
    body = {"model": MODEL, "messages": HELLO, "max_tokens": 256, "temperature": 0, "stream": True}
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, headers=headers, timeout=30) as response:
        assert next(response.iter_lines()).startswith("data: ")  # the stream has started; now hang up
    deadline = time.monotonic() + 30
    while sample(url, "llm_requests_total", status="499") < 1:
        assert time.monotonic() < deadline, "the abandoned stream was never counted"
        time.sleep(0.1)
    assert sample(url, "llm_requests_in_flight") == 0
    assert httpx.get(f"{url}/ready").status_code == 200


@pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} not installed (Debian: apt-get install chromium)")
def test_demo_page_shows_a_model_reply_in_headless_chromium(served_adapter, tmp_path, running_server, chromium_page):
    question = "Where is my order B11688?"
    with running_server(served_adapter, tmp_path) as url, chromium_page(tmp_path) as call:
        call("Page.navigate", url=f"{url}/?prompt={urllib.parse.quote(question)}")
        deadline, reply = time.monotonic() + 60, None
        while reply is None and time.monotonic() < deadline:
            time.sleep(0.2)
            reply = call("Runtime.evaluate", expression=REPLY_JS, returnByValue=True)["result"]["result"].get("value")
        assert reply is not None, "no complete model reply appeared on the page"
        # The request the page sent (its form's settings), answered whole: the page must show exactly that answer.
        body = {"messages": [{"role": "user", "content": question}]} | reply["settings"]
        expected = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60).json()["choices"][0]
    assert reply["user"] == question and not reply["error"]
    assert reply["status"] == f"serving {MODEL} (version untrained)"
    assert reply["text"] == expected["message"]["content"]
    assert reply["finish_reason"] == expected["finish_reason"]


# The first reply on the page once its stream has ended (the page marks it data-done), else null; with the
# status line and the generation settings of the page's form.
REPLY_JS = """(() => {
  const reply = document.querySelector(".turn.assistant[data-done]");
  if (!reply) return null;
  const value = (id) => Number(document.getElementById(id).value);
  return {
    user: document.querySelector(".turn.user").textContent,
    text: reply.textContent,
    error: reply.classList.contains("error"),
    finish_reason: reply.dataset.finishReason ?? null,
    status: document.getElementById("status").textContent,
    settings: {temperature: value("temperature"), max_tokens: value("max_tokens")},
  };
})()"""


@pytest.fixture(scope="session")
def chromium_page(free_port, wait_until_ready) -> Callable[[Path], AbstractContextManager[Callable[..., dict]]]:
    """`with chromium_page(workdir) as call:` starts headless Chromium (output in workdir/chromium.log) and
    drives its page over the DevTools protocol (CDP): `call(method, **params)` returns the answer."""
    from websockets.sync.client import connect  # installed with uvicorn[standard]

    @contextmanager
    def run(workdir: Path) -> Iterator[Callable[..., dict]]:
        port = free_port()
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]
        flags += [f"--remote-debugging-port={port}", f"--user-data-dir={workdir / 'profile'}", "about:blank"]
        log = workdir / "chromium.log"
        with log.open("w") as output:
            browser = subprocess.Popen([str(CHROMIUM), *flags], stdout=output, stderr=subprocess.STDOUT)
        try:
            targets = f"http://127.0.0.1:{port}/json/list"
            wait_until_ready(targets, process=browser, output=log, timeout_s=30)
            page = next(target for target in httpx.get(targets, timeout=2).json() if target["type"] == "page")
            with connect(page["webSocketDebuggerUrl"], max_size=None) as connection:
                yield devtools_caller(connection)
        finally:
            browser.terminate()
            browser.wait(timeout=30)

    return run


def devtools_caller(connection) -> Callable[..., dict]:
    """`call(method, **params)`: sends one CDP command on `connection` and returns its answer (skipping the
    events that arrive meanwhile)."""
    ids = itertools.count(1)

    def call(method: str, **params) -> dict:
        message_id = next(ids)
        connection.send(json.dumps({"id": message_id, "method": method, "params": params}))
        while (message := json.loads(connection.recv(timeout=30))).get("id") != message_id:
            pass  # an event, not our answer
        return message

    return call


# ---- stalled uploads (issue 18, item 3) --------------------------------------------------------------------


def stalled_upload(url: str) -> socket.socket:
    """A connection that sent its headers (Content-Length: 1000) and 11 bytes of the body, then nothing."""
    host, port = urllib.parse.urlsplit(url).hostname, urllib.parse.urlsplit(url).port
    connection = socket.create_connection((host, port), timeout=30)
    headers = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {API_KEY}\r\n"
        "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    )
    connection.sendall(headers.encode() + b'{"messages"')
    return connection


@pytest.fixture(scope="module")
def guarded_server(served_adapter, tmp_path_factory, running_server) -> Iterator[str]:
    """A server with 1 s body and head timeouts and at most 4 open connections."""
    settings = {"LLM_BODY_TIMEOUT_S": "1", "LLM_HEADER_TIMEOUT_S": "1", "LLM_MAX_CONNECTIONS": "4"}
    with running_server(served_adapter, tmp_path_factory.mktemp("guarded"), LLM_API_KEY=API_KEY, **settings) as url:
        yield url


def test_a_stalled_upload_gets_408_and_its_connection_closed(guarded_server):
    url = guarded_server
    started = time.monotonic()
    with stalled_upload(url) as connection:
        answer = b""
        while chunk := connection.recv(65536):  # until the server closes the connection
            answer += chunk
    assert time.monotonic() - started < 10
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert b'"code":"body_timeout"' in answer
    assert sample(url, "llm_requests_total", status="408") == 1
    assert sample(url, "llm_requests_total", status="413") == 0
    assert sample(url, "llm_requests_in_flight") == 0


def test_sigterm_with_a_stalled_upload_exits_within_the_shutdown_timeout(served_adapter, tmp_path, running_server):
    # The body timeout is far away: only the graceful-shutdown timeout can end the server in time.
    settings = {"LLM_API_KEY": API_KEY, "LLM_BODY_TIMEOUT_S": "120", "LLM_SHUTDOWN_TIMEOUT_S": "1"}
    with running_server(served_adapter, tmp_path, **settings) as url:
        connection = stalled_upload(url)  # kept open until the server has gone: a client that never leaves
        time.sleep(0.5)  # the request is in the server, waiting for the rest of its body
        stopping = time.monotonic()
        # Leaving the block sends SIGTERM and waits (at most 30 s) for the exit.
    assert time.monotonic() - stopping < 10
    connection.close()


# ---- hostile clients and shutdown (issue 27) ---------------------------------------------------------------


def raw_connection(url: str) -> socket.socket:
    parts = urllib.parse.urlsplit(url)
    return socket.create_connection((parts.hostname, parts.port), timeout=15)


def read_until_closed(connection: socket.socket) -> bytes:
    answer = b""
    while chunk := connection.recv(65536):
        answer += chunk
    return answer


def test_huge_heads_get_431_and_slow_or_silent_connections_are_cut(guarded_server):
    url = guarded_server
    # A 1 MB header: uvicorn alone reads any size (a 100 MB one took 19.5 s and 1 GB of server memory).
    with raw_connection(url) as huge:
        huge.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Filler: " + b"a" * 1_000_000 + b"\r\n\r\n")
        answer = read_until_closed(huge)
    assert answer.startswith(b"HTTP/1.1 431 ") and b'"code":"headers_too_large"' in answer, answer[:300]
    # Half a request head, then nothing: others are served meanwhile.
    stalled = raw_connection(url)
    stalled.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
    assert httpx.get(f"{url}/health").status_code == 200
    silent = [raw_connection(url) for _ in range(3)]  # with `stalled`: the 4 connections allowed
    time.sleep(0.2)
    refused = httpx.get(f"{url}/health")
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "too_many_connections"
    started = time.monotonic()
    assert read_until_closed(stalled).startswith(b"HTTP/1.1 408 ")
    assert [read_until_closed(connection) for connection in silent] == [b""] * 3  # closed without a word
    assert time.monotonic() - started < 5
    assert httpx.get(f"{url}/health").status_code == 200
    for connection in [stalled, *silent]:
        connection.close()


def health_latencies(url: str, count: int) -> list[float]:
    latencies = []
    with httpx.Client(base_url=url, timeout=30) as http:
        for _ in range(count):
            started = time.perf_counter()
            assert http.get("/health").status_code == 200
            latencies.append(time.perf_counter() - started)
    return latencies


def test_a_flood_of_30001_item_bodies_from_8_clients_is_refused_without_stalling_others(server):
    url, _ = server
    flood = json.dumps({"messages": [1] * 30_001}, separators=(",", ":")).encode()  # 60 KB: under the body limit
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    stop, statuses = threading.Event(), []

    def flooder() -> None:
        with httpx.Client(base_url=url, timeout=60) as http:
            while not stop.is_set():
                statuses.append(http.post("/v1/chat/completions", content=flood, headers=headers).status_code)

    idle = statistics.median(health_latencies(url, 20))
    threads = [threading.Thread(target=flooder) for _ in range(8)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.5)
        busy = statistics.median(health_latencies(url, 20))
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    flooded_s = time.perf_counter() - started
    assert statuses and set(statuses) == {422}, statuses
    # Each refusal waits LLM_REFUSAL_DELAY_S (0.1 s): at most 10 a second per client. Unpaced, the 8 clients
    # got about 320 answers a second on 2 cores, and good chat requests' p50 went from 65 ms to 1.5 s.
    assert len(statuses) <= 8 * (flooded_s / 0.1 + 1), f"{len(statuses)} refusals in {flooded_s:.2f} s"
    # Before the message cap each such body held the event loop about 0.3 s: /health waited seconds.
    assert busy < max(3 * idle, 0.25), f"/health median {busy:.3f} s under the flood, {idle:.3f} s idle"


def test_sigterm_ends_streams_in_flight_with_an_answer_and_a_log_line_in_time(served_adapter, tmp_path, server_process):
    # Sampled at temperature 2, the untrained model all but never ends a turn: each answer is 1,024 tokens.
    body = {"model": MODEL, "messages": HELLO, "max_tokens": 1024, "temperature": 2, "seed": 0}
    streams: list[list[str]] = []  # the `data:` lines of each stream
    answers: list[httpx.Response] = []  # the whole (not streamed) answers

    def call(url: str, stream: bool) -> None:
        with httpx.Client(base_url=url, timeout=30) as http:
            if not stream:
                answers.append(http.post("/v1/chat/completions", json=body))
                return
            with http.stream("POST", "/v1/chat/completions", json=body | {"stream": True}) as response:
                assert response.status_code == 200
                streams.append([line for line in response.iter_lines() if line])

    settings = {"LLM_SHUTDOWN_TIMEOUT_S": "0.5", "LLM_MAX_BATCH_SIZE": "1", "LLM_MAX_TOKENS": "1024"}
    with server_process(served_adapter, tmp_path, **settings) as (process, url):
        # 12 streams and 4 whole answers, generated one at a time: seconds of work, far more than the 0.5 s grace.
        clients = [threading.Thread(target=call, args=(url, i < 12)) for i in range(16)]
        for client in clients:
            client.start()
        wait_for_metric(url, "llm_requests_in_flight", 16)
        stopping = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == -signal.SIGTERM  # uvicorn re-raises the signal once it has shut down
        exited_after = time.monotonic() - stopping
        for client in clients:
            client.join(timeout=10)
    # Before: the process exited 12.4 s after SIGTERM with LLM_SHUTDOWN_TIMEOUT_S=2, streams cut without a word.
    assert exited_after < 0.5 + 3, f"exited {exited_after:.1f} s after SIGTERM; LLM_SHUTDOWN_TIMEOUT_S=0.5"
    assert len(streams) == 12 and len(answers) == 4
    # Every stream ends with [DONE]: after its finish chunk, or after an error event saying why it ended.
    assert all(events[-1] == "data: [DONE]" for events in streams), streams
    cut = [events for events in streams if '"code":"server_shutting_down"' in events[-2].replace(" ", "")]
    assert cut, "every stream was answered within the grace period: send more"
    refused = [answer for answer in answers if answer.status_code != 200]
    for answer in refused:  # OpenAI's shape, with the time to retry (at another replica)
        assert answer.status_code == 503 and answer.json()["error"]["code"] == "server_shutting_down", answer.text
        assert answer.headers["Retry-After"]
    # One request-log line each, with the status its client saw.
    logged = [json.loads(line)["status"] for line in (tmp_path / "requests.jsonl").read_text().splitlines()]
    assert sorted(logged) == sorted([200] * (16 - len(cut) - len(refused)) + [503] * (len(cut) + len(refused)))


def wait_for_metric(url: str, metric: str, value: float, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while sample(url, metric) < value:
        assert time.monotonic() < deadline, f"{metric} never reached {value}"
        time.sleep(0.05)
