"""Serve a baked project's champion model and send it one chat request, as the last step of `make demo`.

    python scripts/demo_request.py .cache/demo/<slug>

Starts `<slug> serve --model models:/<slug>@champion` on a free 127.0.0.1 port inside the project,
waits for /ready, asks one question through the official `openai` client, prints the answer and the
server's request count from /metrics, and stops the server.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

QUESTION = "Hi, I ordered 2 blenders (order A12345) and one arrived broken. I need a replacement fast!"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_ready(url: str, server: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"the server exited with code {server.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/ready", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    sys.exit(f"the server was not ready after {timeout_s} s")


def main(project: Path) -> None:
    import openai

    project = project.resolve()  # the server runs inside the project, so every path must be absolute
    slug = project.name
    python = project / ".venv" / "bin" / "python"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [str(python), "-m", slug.replace("-", "_"), "serve", "--model", f"models:/{slug}@champion"]
    server = subprocess.Popen([*command, "--port", str(port)], cwd=project, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        wait_ready(url, server)
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="not-needed")
        reply = client.chat.completions.create(
            model=slug, messages=[{"role": "user", "content": QUESTION}], max_tokens=64, temperature=0
        )
        with urllib.request.urlopen(f"{url}/metrics") as response:
            counted = [line for line in response.read().decode().splitlines() if line.startswith("llm_requests_total")]
        print(f"\nasked:   {QUESTION}\nanswer:  {reply.choices[0].message.content}")
        print(f"usage:   {reply.usage.prompt_tokens} prompt + {reply.usage.completion_tokens} completion tokens")
        print(f"metrics: {'; '.join(counted)}")
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
