"""Load a running server with many concurrent chat requests, some streamed and some deliberately bad.

    {{ cookiecutter.project_slug }} serve &                     # in another shell, or `make serve`
    python scripts/load_test.py --requests 300 --concurrency 32 --bad-share 0.1

Sends `--requests` POST /v1/chat/completions, at most `--concurrency` at a time: a `--stream-share` of the
good ones streamed, and a `--bad-share` of bad ones (invalid JSON, wrong types, values over the limits, an
unknown model, a body over the size limit), each kind in turn. `--flooders N` adds N clients, each in a
process of its own, sending 30,001-item bodies as fast as they are answered for the whole run: the good
requests' latency then shows what such an attack costs everyone else. Prints the answers by status,
separately for good, bad and flood requests, the good requests' p50/p95/p99 latency, the throughput, and the
server's resident memory before and after: from /metrics (`process_resident_memory_bytes`) when the server
exports it, else from the process given with --pid, else from the process listening on the URL's port.

Exit status 1 when a good request failed (not 200, or a stream without its `[DONE]`), any request got a
5xx, or a bad or flood request was accepted; 2 for bad arguments. `--json` prints the figures as one JSON object.
Loopback only (a load test must not hit someone else's server by accident): --allow-remote to lift that.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import multiprocessing
import random
import statistics
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from urllib.parse import urlsplit

import httpx

CHAT = "/v1/chat/completions"
MAX_REQUESTS = 100_000  # bounds: a typo must not start an endless run
MAX_CONCURRENCY = 1024
PROMPTS = ["Where is my order B11688?", "Cancel order A12345, please.", "Do you ship to Norway?", "Refund status?"]
# One of each kind of bad request, sent in turn; (name, body bytes or JSON, expected 4xx).
BAD_REQUESTS: list[tuple[str, object]] = [
    ("invalid-json", b'{"messages": [{"role": "user", "content": "hi"}'),
    ("wrong-type", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": "many"}),
    ("string-bool", {"messages": [{"role": "user", "content": "hi"}], "stream": "yes"}),
    ("over-max-tokens", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 10**6}),
    ("too-many-stops", {"messages": [{"role": "user", "content": "hi"}], "stop": ["a", "b", "c", "d", "e"]}),
    ("unknown-model", {"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]}),
    ("no-messages", {"messages": []}),
    ("body-too-large", {"messages": [{"role": "user", "content": "x" * 70_000}]}),
    # 30,001 items in 60 KB: refused by their count, before any item is validated.
    ("message-flood", b'{"messages":[' + b",".join([b"1"] * 30_001) + b"]}"),
]
MAX_FLOODERS = 64


@dataclass
class Outcome:
    good: bool
    status: int
    latency_s: float
    ok: bool
    """Good: 200 and complete (a stream ends with [DONE]). Bad: refused with a 4xx."""


@dataclass
class Report:
    requests: int
    concurrency: int
    wall_s: float
    requests_per_s: float
    good: int
    bad: int
    good_failed: int
    bad_accepted: int
    server_errors: int
    good_by_status: dict[str, int]
    bad_by_status: dict[str, int]
    latency_ms: dict[str, float]
    """p50/p95/p99 of the good requests."""
    rss_mb_before: float | None
    rss_mb_after: float | None
    rss_source: str
    bad_kinds: dict[str, int] = field(default_factory=dict)
    flood_by_status: dict[str, int] = field(default_factory=dict)
    """Answers to the --flooders' requests; each should be a 4xx."""

    @property
    def passed(self) -> bool:
        flood_ok = all(400 <= int(status) < 500 for status in self.flood_by_status)
        return self.good_failed == 0 and self.server_errors == 0 and self.bad_accepted == 0 and flood_ok


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the server's base URL")
    parser.add_argument("--requests", type=int, default=300, help=f"requests in all (at most {MAX_REQUESTS})")
    parser.add_argument("--concurrency", type=int, default=32, help=f"requests in flight (at most {MAX_CONCURRENCY})")
    parser.add_argument("--stream-share", type=float, default=0.3, help="share of good requests that stream")
    parser.add_argument("--bad-share", type=float, default=0.1, help="share of deliberately bad requests")
    parser.add_argument("--max-tokens", type=int, default=16, help="max_tokens of the good requests")
    parser.add_argument("--flooders", type=int, default=0, help="clients flooding 30,001-item bodies meanwhile")
    parser.add_argument("--api-key", default=None, help="sent as Authorization: Bearer (the server's LLM_API_KEY)")
    parser.add_argument("--pid", type=int, default=None, help="the server's process id, for its memory")
    parser.add_argument("--timeout", type=float, default=120, help="seconds per request")
    parser.add_argument("--time-limit", type=float, default=600, help="seconds for the whole run")
    parser.add_argument("--seed", type=int, default=0, help="which requests stream or are bad")
    parser.add_argument("--allow-remote", action="store_true", help="allow a URL that is not this machine")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = parser.parse_args(argv)
    problems = [
        f"--requests must be 1..{MAX_REQUESTS}" * (not 1 <= args.requests <= MAX_REQUESTS),
        f"--concurrency must be 1..{MAX_CONCURRENCY}" * (not 1 <= args.concurrency <= MAX_CONCURRENCY),
        "--stream-share must be 0..1" * (not 0 <= args.stream_share <= 1),
        "--bad-share must be 0..1" * (not 0 <= args.bad_share <= 1),
        "--max-tokens must be at least 1" * (args.max_tokens < 1),
        f"--flooders must be 0..{MAX_FLOODERS}" * (not 0 <= args.flooders <= MAX_FLOODERS),
    ]
    if not args.allow_remote and not is_loopback(args.url):
        problems.append(f"--url {args.url} is not this machine (127.0.0.1, ::1, localhost); add --allow-remote")
    for problem in filter(None, problems):
        parser.error(problem)  # exit status 2
    return args


def is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def plan(args: argparse.Namespace) -> list[tuple[str, object, bool]]:
    """(kind, body, stream) per request, in sending order: kind "good" or the bad request's name."""
    rng = random.Random(args.seed)
    bad_count = round(args.requests * args.bad_share)
    bad_at = set(rng.sample(range(args.requests), bad_count))
    requests, next_bad = [], 0
    for i in range(args.requests):
        if i in bad_at:
            name, body = BAD_REQUESTS[next_bad % len(BAD_REQUESTS)]
            requests.append((name, body, False))
            next_bad += 1
            continue
        body = {"messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}], "max_tokens": args.max_tokens}
        requests.append(("good", body, rng.random() < args.stream_share))
    return requests


async def send(http: httpx.AsyncClient, kind: str, body: object, stream: bool) -> Outcome:
    """One request; a stream counts as complete only with its final `data: [DONE]`."""
    content = body if isinstance(body, bytes) else json.dumps(body | {"stream": True} if stream else body).encode()
    headers = {"Content-Type": "application/json"}
    started = time.perf_counter()
    try:
        async with http.stream("POST", CHAT, content=content, headers=headers) as response:
            text = (await response.aread()).decode("utf-8", "replace")
    except httpx.HTTPError:
        return Outcome(good=kind == "good", status=0, latency_s=time.perf_counter() - started, ok=False)
    latency = time.perf_counter() - started
    if kind != "good":
        return Outcome(good=False, status=response.status_code, latency_s=latency, ok=400 <= response.status_code < 500)
    complete = text.rstrip().endswith("data: [DONE]") if stream else True
    return Outcome(
        good=True, status=response.status_code, latency_s=latency, ok=response.status_code == 200 and complete
    )


async def run_load(args: argparse.Namespace, requests: list[tuple[str, object, bool]]) -> tuple[list[Outcome], float]:
    gate = asyncio.Semaphore(args.concurrency)
    auth = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    limits = httpx.Limits(max_connections=args.concurrency)

    async def one(http: httpx.AsyncClient, kind: str, body: object, stream: bool) -> Outcome:
        async with gate:
            return await send(http, kind, body, stream)

    started = time.perf_counter()
    # trust_env=False: a proxy from the environment must not sit between this script and a local server.
    async with (
        httpx.AsyncClient(
            base_url=args.url, headers=auth, timeout=args.timeout, limits=limits, trust_env=False
        ) as http,
        asyncio.timeout(args.time_limit),
    ):
        outcomes = await asyncio.gather(*(one(http, *request) for request in requests))
    return list(outcomes), time.perf_counter() - started


def flood(url: str, api_key: str | None, stop, answers) -> None:
    """One flooding client (run in its own process): the message-flood body, as fast as it is answered."""
    body = dict(BAD_REQUESTS)["message-flood"]
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {api_key}"} if api_key else {})
    statuses: Counter[str] = Counter()
    with httpx.Client(base_url=url, timeout=60, trust_env=False) as http:
        while not stop.is_set():
            try:
                statuses[str(http.post(CHAT, content=body, headers=headers).status_code)] += 1
            except httpx.HTTPError:
                statuses["0"] += 1
    answers.put(statuses)


def run_with_flooders(args: argparse.Namespace, requests: list) -> tuple[list[Outcome], float, Counter[str]]:
    """run_load while `--flooders` processes flood the server; their answers by status."""
    stop, answers = multiprocessing.Event(), multiprocessing.Queue()
    flooders = [
        multiprocessing.Process(target=flood, args=(args.url, args.api_key, stop, answers))
        for _ in range(args.flooders)
    ]
    for flooder in flooders:
        flooder.start()
    try:
        time.sleep(0.5 if flooders else 0)  # under way before the first good request
        outcomes, wall_s = asyncio.run(run_load(args, requests))
    finally:
        stop.set()
        statuses = sum((answers.get(timeout=90) for _ in flooders), Counter())
        for flooder in flooders:
            flooder.join()
    return outcomes, wall_s, statuses


def resident_mb(args: argparse.Namespace) -> tuple[float | None, str]:
    """The server's resident memory in MB, and where it was read."""
    try:
        metrics = httpx.get(f"{args.url}/metrics", timeout=10, trust_env=False).text
    except httpx.HTTPError:
        metrics = ""
    for line in metrics.splitlines():
        if line.startswith("process_resident_memory_bytes "):
            return float(line.split()[1]) / 2**20, "/metrics"
    pid = args.pid or listening_pid(args.url)
    if pid is None:
        return None, "unknown (give --pid)"
    import psutil  # lazily: only needed when /metrics lacks the figure

    try:
        return psutil.Process(pid).memory_info().rss / 2**20, f"pid {pid}"
    except psutil.Error:
        return None, f"pid {pid} not readable"


def listening_pid(url: str) -> int | None:
    """The process listening on the URL's port on this machine, if this user may see it."""
    import psutil

    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        connections = psutil.net_connections(kind="tcp")
    except psutil.Error:
        return None
    return next((c.pid for c in connections if c.status == psutil.CONN_LISTEN and c.laddr.port == port), None)


def summarize(args: argparse.Namespace, requests: list, outcomes: list[Outcome], wall_s: float, rss: tuple) -> Report:
    good = [o for o in outcomes if o.good]
    bad = [o for o in outcomes if not o.good]
    latencies = sorted(o.latency_s * 1000 for o in good) or [0.0]
    cuts = statistics.quantiles(latencies, n=100, method="inclusive") if len(latencies) > 1 else latencies * 99
    (before, source), (after, _) = rss
    return Report(
        requests=len(outcomes),
        concurrency=args.concurrency,
        wall_s=round(wall_s, 2),
        requests_per_s=round(len(outcomes) / wall_s, 1),
        good=len(good),
        bad=len(bad),
        good_failed=sum(not o.ok for o in good),
        bad_accepted=sum(200 <= o.status < 300 for o in bad),
        server_errors=sum(o.status >= 500 for o in outcomes),
        good_by_status=dict(sorted(Counter(str(o.status) for o in good).items())),
        bad_by_status=dict(sorted(Counter(str(o.status) for o in bad).items())),
        latency_ms={"p50": round(cuts[49], 1), "p95": round(cuts[94], 1), "p99": round(cuts[98], 1)},
        rss_mb_before=None if before is None else round(before, 1),
        rss_mb_after=None if after is None else round(after, 1),
        rss_source=source,
        bad_kinds=dict(Counter(kind for kind, _, _ in requests if kind != "good")),
    )


def print_report(report: Report) -> None:
    print(
        f"{report.requests} requests, {report.concurrency} at a time, in {report.wall_s} s: "
        f"{report.requests_per_s} requests/s"
    )
    print(f"good: {report.good}, by status {report.good_by_status}, failed {report.good_failed}")
    print(f"bad:  {report.bad}, by status {report.bad_by_status}, accepted {report.bad_accepted}")
    if report.flood_by_status:
        print(f"flood: {sum(report.flood_by_status.values())} requests, by status {report.flood_by_status}")
    print(f"5xx: {report.server_errors}")
    latency = report.latency_ms
    print(f"latency of good requests: p50 {latency['p50']} ms, p95 {latency['p95']} ms, p99 {latency['p99']} ms")
    print(f"server memory (RSS, {report.rss_source}): {report.rss_mb_before} MB before, {report.rss_mb_after} MB after")
    print("PASS" if report.passed else "FAIL: a good request failed, a 5xx, or a bad or flood request accepted")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    requests = plan(args)
    before = resident_mb(args)
    try:
        outcomes, wall_s, flood_statuses = run_with_flooders(args, requests)
    except TimeoutError:
        print(f"error: the run took longer than --time-limit {args.time_limit:g} s", file=sys.stderr)
        return 1
    report = summarize(args, requests, outcomes, wall_s, (before, resident_mb(args)))
    report.flood_by_status = dict(sorted(flood_statuses.items()))
    if args.json:
        print(json.dumps(asdict(report) | {"passed": report.passed}))
    else:
        print_report(report)
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
