"""Latency and throughput of the API against direct generation and `mlflow models serve`, same prompts.

    python scripts/benchmark_serve.py --model latest --config configs/smoke.yaml --requests 32 --max-tokens 64

Run it in the project folder after `make train` and `evaluate` (the registered model needs a @champion). All
three modes answer the same held-out prompts (the test split of the config's data) greedily with the same
max_tokens, at 1 and at 8 concurrent clients, alternated round by round:
- direct: the merged model in this process, one `generate` call per request (8 threads share the model);
- api: POST /v1/chat/completions over HTTP to `serve`, started here on a free port (or --url of a running
  server), which batches concurrent requests;
- mlflow: POST /invocations to `mlflow models serve -m <--mlflow-model> --env-manager local --workers 1`,
  started here on a free port (default model `models:/<project>@champion`, tracking store from
  MLFLOW_TRACKING_URI or ./mlflow.db), with the llm/v1/chat payload
  `{"messages": [...], "max_tokens": N, "do_sample": false}`; --skip-mlflow leaves this mode out.
Prints p50/p95 latency and requests/s per mode and concurrency, the API's overhead at p50 over direct
generation with one client (target: at most 10%), its throughput relative to direct at 8 clients, and its
throughput relative to `mlflow models serve` at 8 clients (target: at least 2x).

With one client the modes take turns request by request, so a busy spell of the machine hits them alike.
This process and the servers run with OMP_WAIT_POLICY=PASSIVE (unless it is set already): after each
parallel region an idle process's OpenMP threads otherwise spin for ~10-20 ms, and on a machine with few
cores they steal the cores of the process being measured (on 2 cores that put +10-20 ms on the API's
p50). Both sides pay the same policy, so the comparison stays fair; absolute times are a little higher
than with the default.

    python scripts/benchmark_serve.py --int8-decode --model latest --requests 60 --rounds 1 --max-tokens 64

`--int8-decode` weighs LLM_INT8_DECODE (serve/int8.py) instead: the model as the server loads it, with and
without int8 decoding, in this process on the CPU, one request at a time, alternated prompt by prompt. It prints
each one's latency and tokens/s, their ratio, and how many greedy answers differ (the accuracy cost: read them).
{%- if cookiecutter.llama_cpp %}

    python scripts/benchmark_serve.py --against llama.cpp --model latest --gguf outputs/<run>/model-q4_k_m.gguf

`--against llama.cpp` compares four ways instead, on the same model (the run and its GGUF export), prompts and
machine: bare llama-cpp-python in this process (its Llama object, one request at a time behind a lock, as its own
server does), this project's server with the llama.cpp backend, and with the transformers backend, without and
with LLM_INT8_DECODE (tf+int8). It prints single-stream tokens/s and latency, 8-concurrent throughput and p50,
and the ratios: the llama.cpp backend against bare llama-cpp-python (its API's overhead; goal: within 1.2x) and
each transformers mode against the llama.cpp backend (goal: at least 0.5x single-stream).
{%- endif %}
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

# Before the project's modules import torch: OpenMP reads it once, at start (see above).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from {{ cookiecutter.package_name }}.config import load_config
from {{ cookiecutter.package_name }}.data.dataset import load_splits
from {{ cookiecutter.package_name }}.model.load import end_token_ids
from {{ cookiecutter.package_name }}.serve.loader import LoadedModel, load_for_serving
from {{ cookiecutter.package_name }}.serve.settings import Settings
from {{ cookiecutter.package_name }}.tracking import tracking_uri
from {{ cookiecutter.package_name }}.train.sft import describe_hardware

Conversation = list[dict[str, str]]
Answer = Callable[[Conversation], int]
"""Answers one conversation; returns the number of tokens generated."""


@dataclass
class Run:
    latencies: list[float]
    """Seconds per request."""
    tokens: int
    """Tokens generated in the run."""
    wall_s: float


@dataclass
class Figures:
    mode: str
    clients: int
    requests: int
    p50_ms: float
    p95_ms: float
    requests_per_s: float
    tokens_per_s: float


def main() -> None:
    args = _parse_args()
    config = load_config(args.config)
    rows = list(load_splits(config.data)["test"]["messages"])
    prompts = [row[:-1] for row in rows]  # each conversation without its expected answer
    prompts = (prompts * (args.requests // max(len(prompts), 1) + 1))[: args.requests]
    if args.int8_decode:
        return against_int8(args, prompts)
    {%- if cookiecutter.llama_cpp %}
    if args.against == "llama.cpp":
        return against_llama_cpp(args, prompts)
    {%- endif %}
    loaded = load_for_serving(Settings(_env_file=None, model=args.model, request_log=None))
    mlflow_model = args.mlflow_model or f"models:/{config.project}@champion"
    runs: dict[tuple[str, int], list[Run]] = {}
    mlflow_server: AbstractContextManager[str | None] = (
        nullcontext(None) if args.skip_mlflow else running_mlflow_server(mlflow_model)
    )
    with running_server(args.model, url=args.url) as url, mlflow_server as mlflow_url, ExitStack() as clients:
        modes = {
            "direct": direct(loaded, args.max_tokens),
            "api": api(url, args.max_tokens, clients, model=loaded.name),
        }
        if mlflow_url:
            modes["mlflow"] = mlflow_serve(mlflow_url, args.max_tokens, clients)
        # One client: the modes take turns request by request. Eight clients: run by run.
        for mode, run in take_turns(modes, prompts * args.rounds).items():
            runs[mode, 1] = [run]
        for _ in range(args.rounds):
            for mode, answer in modes.items():
                runs.setdefault((mode, 8), []).append(measure(answer, prompts, clients=8))
    hardware = describe_hardware(loaded.device)  # the README names what it ran on
    report([summarize(mode, clients, done) for (mode, clients), done in runs.items()], out=args.out, hardware=hardware)


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="latest", help="Adapter folder or `latest` (as for `serve --model`).")
    parser.add_argument("--config", type=Path, default=Path("configs/smoke.yaml"), help="Config naming the data.")
    parser.add_argument("--requests", type=int, default=64, help="Requests per run.")
    parser.add_argument("--rounds", type=int, default=3, help="Runs per mode and concurrency, alternated.")
    parser.add_argument("--max-tokens", type=int, default=64, help="max_tokens of every request.")
    parser.add_argument("--url", help="Benchmark a running server instead of starting one (same model!).")
    parser.add_argument(
        "--mlflow-model", metavar="URI", help="Model for `mlflow models serve` (default: models:/<project>@champion)."
    )
    parser.add_argument("--skip-mlflow", action="store_true", help="Leave out the `mlflow models serve` mode.")
    parser.add_argument("--int8-decode", action="store_true", help="Compare with and without LLM_INT8_DECODE.")
    {%- if cookiecutter.llama_cpp %}
    parser.add_argument("--against", choices=["llama.cpp"], help="Compare with llama.cpp instead (see above).")
    parser.add_argument("--gguf", type=Path, help="The run's GGUF export (default: <run>/model-q4_k_m.gguf).")
    {%- endif %}
    parser.add_argument(
        "--out",
        type=Path,
        help="Also write the figures as JSON here; `report` shows reports/benchmark_serve.json in the README.",
    )
    return parser.parse_args()


# ---- the three ways to get an answer --------------------------------------------------------------------


def direct(loaded: LoadedModel, max_tokens: int, texts: list[str] | None = None) -> Answer:
    """One greedy `generate` per prompt on the merged model, as the server loads it (threads share it); each
    answer's text is appended to `texts` when given."""
    import torch

    model, tokenizer = loaded.model, loaded.tokenizer
    stop_ids = end_token_ids(model, tokenizer)

    def answer(messages: Conversation) -> int:
        inputs = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        with torch.inference_mode():
            output = model.generate(
                **inputs.to(model.device),
                max_new_tokens=max_tokens,
                do_sample=False,
                eos_token_id=stop_ids,
                pad_token_id=tokenizer.pad_token_id,
            )
        new = output[0, inputs["input_ids"].shape[1] :]
        if texts is not None:
            texts.append(tokenizer.decode(new, skip_special_tokens=True))
        return len(new)

    return answer


def api(url: str, max_tokens: int, clients: ExitStack, *, model: str) -> Answer:
    """POST /v1/chat/completions per prompt (up to 8 connections at once). `model` is named in every request:
    vLLM serving the adapter (`serve-vllm`) answers a request without it with the base model alone."""
    http = clients.enter_context(httpx.Client(base_url=url, timeout=300, limits=httpx.Limits(max_connections=8)))

    def answer(messages: Conversation) -> int:
        body = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0}
        response = http.post("/v1/chat/completions", json=body)
        response.raise_for_status()
        return response.json()["usage"]["completion_tokens"]

    return answer


def mlflow_serve(url: str, max_tokens: int, clients: ExitStack) -> Answer:
    """POST /invocations of `mlflow models serve` per prompt (llm/v1/chat input, up to 8 connections at once).
    Completion tokens come from the response's `usage`; an empty answer stops the benchmark."""
    http = clients.enter_context(httpx.Client(base_url=url, timeout=300, limits=httpx.Limits(max_connections=8)))

    def answer(messages: Conversation) -> int:
        # Extra keys become generation params; `temperature: 0` is refused by transformers, greedy is do_sample.
        body = {"messages": messages, "max_tokens": max_tokens, "do_sample": False}
        response = http.post("/invocations", json=body)
        if response.is_error:
            sys.exit(f"mlflow models serve answered {response.status_code}: {response.text[:500]}")
        completion = response.json()
        if isinstance(completion, dict) and "predictions" in completion:
            completion = completion["predictions"]
        if isinstance(completion, list):
            completion = completion[0]
        if not (completion["choices"][0]["message"]["content"] or "").strip():
            sys.exit(f"mlflow models serve gave an empty answer: {completion}")
        return completion["usage"]["completion_tokens"]

    return answer


def take_turns(modes: dict[str, Answer], prompts: list[Conversation]) -> dict[str, Run]:
    """One client: each prompt goes to every mode in turn, after a warm-up of each. A run's wall time is the
    sum of its latencies (nothing overlaps)."""
    for answer in modes.values():
        for messages in prompts[: min(4, len(prompts))]:
            answer(messages)
    runs = {mode: Run(latencies=[], tokens=0, wall_s=0.0) for mode in modes}
    for messages in prompts:
        for mode, answer in modes.items():
            start = time.perf_counter()
            runs[mode].tokens += answer(messages)
            runs[mode].latencies.append(time.perf_counter() - start)
    for run in runs.values():
        run.wall_s = sum(run.latencies)
    return runs


def measure(answer: Answer, prompts: list[Conversation], *, clients: int) -> Run:
    """Each call's latency and the run's wall time, after a warm-up (first calls pay one-time costs)."""
    for messages in prompts[: min(4, len(prompts))]:
        answer(messages)

    def timed(messages: Conversation) -> tuple[float, int]:
        start = time.perf_counter()
        tokens = answer(messages)
        return time.perf_counter() - start, tokens

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        done = list(pool.map(timed, prompts))
    return Run(
        latencies=[latency for latency, _ in done], tokens=sum(t for _, t in done), wall_s=time.perf_counter() - start
    )


def summarize(mode: str, clients: int, runs: list[Run]) -> Figures:
    latencies = [latency for run in runs for latency in run.latencies]
    wall = sum(run.wall_s for run in runs)
    return Figures(
        mode=mode,
        clients=clients,
        requests=len(latencies),
        p50_ms=1000 * statistics.median(latencies),
        p95_ms=1000 * statistics.quantiles(latencies, n=20)[-1],  # the last of 19 cut points: p95
        requests_per_s=len(latencies) / wall,
        tokens_per_s=sum(run.tokens for run in runs) / wall,
    )


# ---- with and without int8 decoding ---------------------------------------------------------------------


def against_int8(args: argparse.Namespace, prompts: list[Conversation]) -> None:
    """The served model's full weights against LLM_INT8_DECODE, one client, alternated (see the top)."""
    settings = Settings(_env_file=None, model=args.model, request_log=None, device="cpu")
    texts: dict[str, list[str]] = {"full": [], "int8": []}
    loaded = {mode: load_for_serving(settings.model_copy(update={"int8_decode": mode == "int8"})) for mode in texts}
    modes = {mode: direct(loaded[mode], args.max_tokens, texts[mode]) for mode in texts}
    results = [summarize(mode, 1, [run]) for mode, run in take_turns(modes, prompts * args.rounds).items()]
    report(results, out=None, ratios=False)
    full, int8 = results
    warm_up = len(texts["full"]) - full.requests  # take_turns' first answers are not timed
    pairs = list(zip(texts["full"][warm_up:], texts["int8"][warm_up:], strict=True))
    differ = sum(a != b for a, b in pairs)
    print(f"\nint8 / full tokens/s, 1 client: {int8.tokens_per_s / full.tokens_per_s:.2f}x")
    print(f"greedy answers that differ: {differ} of {len(pairs)}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        figures = {"results": [asdict(r) for r in results], "answers_differ": differ, "answers": len(pairs)}
        args.out.write_text(json.dumps(figures, indent=2) + "\n")


{% if cookiecutter.llama_cpp -%}
# ---- against llama.cpp ----------------------------------------------------------------------------------


def against_llama_cpp(args: argparse.Namespace, prompts: list[Conversation]) -> None:
    """Bare llama-cpp-python, our llama.cpp backend and our transformers backend (also with LLM_INT8_DECODE),
    alternated as in main()."""
    from {{ cookiecutter.package_name }}.registry import resolve_model_source

    source = resolve_model_source(args.model)
    gguf = args.gguf or source.adapter_dir.parent / "model-q4_k_m.gguf"
    runs: dict[tuple[str, int], list[Run]] = {}
    with ExitStack() as clients:  # the servers and HTTP clients, all closed on the way out
        llama_url = clients.enter_context(running_server(str(gguf), url=None, LLM_BACKEND="llama.cpp"))
        torch_url = clients.enter_context(running_server(args.model, url=None))
        int8_url = clients.enter_context(running_server(args.model, url=None, LLM_INT8_DECODE="true"))
        name = httpx.get(f"{torch_url}/v1/models").json()["data"][0]["id"]
        modes = {
            "bare": bare_llama_cpp(gguf, args.max_tokens, tokenizer_dir=source.tokenizer_dir),
            "llama.cpp": api(llama_url, args.max_tokens, clients, model=name),
            "transformers": api(torch_url, args.max_tokens, clients, model=name),
            "tf+int8": api(int8_url, args.max_tokens, clients, model=name),
        }
        for mode, run in take_turns(modes, prompts * args.rounds).items():
            runs[mode, 1] = [run]
        for _ in range(args.rounds):
            for mode, answer in modes.items():
                runs.setdefault((mode, 8), []).append(measure(answer, prompts, clients=8))
    report_ratios([summarize(mode, clients, done) for (mode, clients), done in runs.items()], out=args.out)


def bare_llama_cpp(gguf: Path, max_tokens: int, *, tokenizer_dir: Path) -> Answer:
    """llama-cpp-python alone: the same prompt token ids (the run's tokenizer), greedy, one call at a time."""
    import threading

    import llama_cpp

    from {{ cookiecutter.package_name }}.model.device import usable_cores
    from {{ cookiecutter.package_name }}.model.load import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_dir)
    cores = usable_cores()  # as the server's llama.cpp backend (LLM_LLAMA_THREADS unset)
    llm = llama_cpp.Llama(str(gguf), n_ctx=2048, n_threads=cores, n_threads_batch=cores, verbose=False)
    lock = threading.Lock()  # a Llama object generates one sequence at a time

    def answer(messages: Conversation) -> int:
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"]
        with lock:
            completion = llm.create_completion(list(ids), max_tokens=max_tokens, temperature=0.0)
        return completion["usage"]["completion_tokens"]

    return answer


def report_ratios(results: list[Figures], *, out: Path | None) -> None:
    report(results, out=None, hardware="", ratios=False)
    by = {(r.mode, r.clients): asdict(r) for r in results}
    ratios = {
        f"{mode} / {base}, {clients} client(s) {label}": by[mode, clients][key] / by[base, clients][key]
        for mode, base in (("llama.cpp", "bare"), ("transformers", "llama.cpp"), ("tf+int8", "llama.cpp"))
        for clients in (1, 8)
        for key, label in (("tokens_per_s", "tokens/s"), ("p50_ms", "p50 latency"))
    }
    print()
    for name, value in ratios.items():
        print(f"{name}: {value:.2f}x")
    print("goals: llama.cpp backend within 1.2x of bare (tokens/s ratio >= 0.83); transformers >= 0.5x of llama.cpp")
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"results": [asdict(r) for r in results], "ratios": ratios}, indent=2) + "\n")
        print(f"wrote {out}")


{% endif -%}
# ---- the server -----------------------------------------------------------------------------------------


@contextmanager
def running_server(model: str, *, url: str | None, **variables: str) -> Iterator[str]:
    """`serve` in a subprocess on a free port (with `variables` set: LLM_BACKEND=...), or the running server at
    `url`. Its request log goes to a temp folder: benchmark traffic must not reach the drift check."""
    if url:
        yield url
        return
    port = _free_port()
    env = os.environ | {"LLM_REQUEST_LOG": f"{tempfile.mkdtemp(prefix='benchmark-')}/requests.jsonl"} | variables
    package = "{{ cookiecutter.package_name }}"
    command = [sys.executable, "-m", package, "serve", "--model", model, "--port", str(port)]
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        why = f"run `serve --model {model}` to see why"
        _wait_ready(f"http://127.0.0.1:{port}", server, path="/ready", why=why)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=30)


@contextmanager
def running_mlflow_server(model_uri: str) -> Iterator[str]:
    """`mlflow models serve` of `model_uri` in its own process group on a free port, one worker, this
    environment (no conda/virtualenv build). The whole group is stopped on the way out, whatever happens."""
    port = _free_port()
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    # mlflow execs `uvicorn` by name: the interpreter's bin folder goes first on PATH, activated or not.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = os.environ | {"MLFLOW_TRACKING_URI": tracking_uri(), "PATH": path}
    with tempfile.NamedTemporaryFile(prefix="benchmark-mlflow-", suffix=".log", delete=False) as log:
        server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            url = f"http://127.0.0.1:{port}"
            _wait_ready(url, server, path="/ping", why=f"its log is {log.name}", what="mlflow models serve")
            yield url
        finally:
            _stop_group(server)
    Path(log.name).unlink()  # kept only when something went wrong


def _stop_group(process: subprocess.Popen) -> None:
    """SIGTERM to the process group (the server and its workers), SIGKILL if it lingers."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return  # already gone
        try:
            process.wait(timeout=30)
            return
        except subprocess.TimeoutExpired:
            continue


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_ready(
    url: str, server: subprocess.Popen, *, path: str, why: str, what: str = "the server", timeout_s: float = 300
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"{what} exited with {server.returncode}; {why}")
        try:
            if httpx.get(f"{url}{path}", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass  # still starting
        time.sleep(0.25)
    sys.exit(f"{what} was not ready after {timeout_s} s; {why}")


# ---- report ---------------------------------------------------------------------------------------------


def report(results: list[Figures], *, out: Path | None, hardware: str = "", ratios: bool = True) -> None:
    print(f"{'mode':<13}{'clients':>8}{'requests':>10}{'p50 ms':>10}{'p95 ms':>10}{'req/s':>9}{'tokens/s':>10}")
    for r in results:
        print(
            f"{r.mode:<13}{r.clients:>8}{r.requests:>10}{r.p50_ms:>10.1f}{r.p95_ms:>10.1f}"
            f"{r.requests_per_s:>9.2f}{r.tokens_per_s:>10.1f}"
        )
    if not ratios:
        return
    by = {(r.mode, r.clients): r for r in results}
    overhead = by["api", 1].p50_ms / by["direct", 1].p50_ms - 1
    throughput = by["api", 8].requests_per_s / by["direct", 8].requests_per_s
    extra_ms = by["api", 1].p50_ms - by["direct", 1].p50_ms
    print(f"\nAPI overhead at p50, 1 client: {overhead:+.1%}, {extra_ms:+.1f} ms (target: at most +10%)")
    print(f"API / direct throughput, 8 clients: {throughput:.2f}x")
    versus_mlflow = None
    if ("mlflow", 8) in by:
        versus_mlflow = by["api", 8].requests_per_s / by["mlflow", 8].requests_per_s
        print(f"API / mlflow models serve throughput, 8 clients: {versus_mlflow:.2f}x (target: at least 2x)")
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        figures = {
            "results": [asdict(r) for r in results],
            "overhead_p50": overhead,
            "throughput_ratio_8": throughput,
            "throughput_ratio_vs_mlflow_8": versus_mlflow,
            "hardware": hardware,
        }
        out.write_text(json.dumps(figures, indent=2) + "\n")
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
