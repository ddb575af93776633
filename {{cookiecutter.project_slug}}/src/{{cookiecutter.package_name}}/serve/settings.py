"""Server settings, read from LLM_* environment variables (or a .env file); `serve` options override them.

    LLM_API_KEY=change-me LLM_MAX_TOKENS=128 <project> serve --model outputs/<run>/adapter

Each field's docstring is its documentation; the variable is LLM_ + the field name in capitals.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="LLM_", env_file=".env", extra="ignore", use_attribute_docstrings=True, validate_default=True
    )

    model: str = "latest"
    """What to serve: a LoRA adapter folder (outputs/<run>/adapter), `latest` (the newest one under
    `output_dir`), or an MLflow model URI (models:/<name>@champion, runs:/<id>/model)."""
    output_dir: Path = Path("outputs")
    """Where `latest` looks for training runs."""
    config: Path | None = None
    """Project config whose `model` section (revision, dtype, trust_remote_code) is used when the adapter
    has no config.yaml beside it (e.g. one downloaded from MLflow). The run's own config.yaml wins."""
    # >>> llama_cpp
    backend: Literal["transformers", "llama.cpp"] = "transformers"
    """What generates: transformers (the adapter on its base) or llama.cpp (a GGUF file `export gguf` wrote;
    CPU, one request at a time; `model` may then name the .gguf file itself)."""
    gguf_type: Literal["f16", "q8_0", "q4_k_m"] = "q4_k_m"
    """With the llama.cpp backend and `model` naming a run: which export it serves, outputs/<run>/model-<type>.gguf."""
    llama_threads: int | None = Field(None, gt=0)
    """llama.cpp's threads, for generating and for reading the prompt; unset: every core this process may use
    (llama-cpp-python's own default is half of them for generating). Fewer leave cores to other work."""
    # <<< llama_cpp
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    """Where the model runs; `auto` picks CUDA, then Apple MPS, then CPU."""
    int8_decode: bool = False
    """On a CPU, decoding steps read int8 copies of the weights (serve/int8.py): faster answers, and a greedy
    answer may differ a little from the full-precision one (compare before you switch it on). CPU only."""
    served_model_name: str | None = None
    """The name clients put in `model` and /v1/models lists; default: the config's project name."""
    system_prompt: str | None = None
    """System message put first when a request has none; unset: the one training used (task.system_prompt of
    the run's config, or of `config` when the run has none); none when that is null."""

    max_prompt_tokens: int = Field(1024, gt=0)
    """Longest prompt accepted, in tokens after the chat template; longer prompts get 400."""
    max_tokens: int = Field(256, gt=0)
    """Most tokens one answer may generate; also the default when a request gives no max_tokens."""
    max_body_bytes: int = Field(65_536, gt=0)
    """Largest request body; bigger bodies get 413 before any parsing."""
    body_timeout_s: float = Field(30.0, gt=0)
    """Seconds a client may take to send its whole request body; then 408 (a stalled upload must not hold
    a request slot, or shutdown, forever)."""
    generation_timeout_s: float = Field(60.0, gt=0)
    """Seconds a request may take from arrival to its last token (queueing included); then 504."""
    max_batch_size: int = Field(8, gt=0)
    """Requests generated together in one forward pass. More raises throughput and each request's latency."""
    batch_wait_ms: float = Field(2.0, ge=0)
    """How long the batcher waits for more requests before starting a batch; 0 starts at once."""
    max_queue: int = Field(32, ge=0)
    """Requests that may wait for a free batch slot; more concurrent requests than max_batch_size +
    max_queue get 429 (with Retry-After) instead of an ever-growing queue."""
    shutdown_timeout_s: float = Field(90.0, gt=0)
    """Seconds `serve` lets in-flight requests finish after SIGTERM; then those still waiting for the model
    get 503 (a stream: a last error event). Keep it above generation_timeout_s so answers under way can
    finish, and below the platform's kill delay (stop_grace_period in docker-compose.yml)."""
    max_header_bytes: int = Field(16_384, gt=0)
    """Largest request head (request line and headers); bigger gets 431 while it is still arriving. Real
    clients send under 2 KB; nginx's default buffers take 8 KB a header line."""
    header_timeout_s: float = Field(10.0, gt=0)
    """Seconds a connection may take to send a whole request head, from its opening or its last answer;
    then it is closed (408 when part of a head arrived). Ends slow-header clients and silent connections."""
    refusal_delay_s: float = Field(0.1, ge=0, le=10)
    """Seconds a refused chat request (400, 401, 404, 413, 422) waits before its answer, off the event loop.
    A client that sends bad requests as fast as they are answered is held to a few a second a connection,
    so a flood cannot take the server from good requests; these never wait. 0 answers at once."""
    max_connections: int = Field(512, gt=0)
    """Open connections; one more gets 503 and is closed. Each costs a file handle and memory, and at most
    max_batch_size + max_queue requests are served at a time anyway."""

    api_key: SecretStr | None = None
    """When set, /v1/* requests need `Authorization: Bearer <api_key>` (401 otherwise)."""
    request_log: Path | None = Path("logs/requests.jsonl")
    """JSONL file with one record per chat request (the input of `monitor drift`); empty disables it."""
    log_texts: bool = False
    """Also log the last user message and the answer (redacted: e-mails, phone and card numbers)."""

    @field_validator("request_log", "config", "api_key", "served_model_name", "system_prompt", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # `LLM_API_KEY=` in a .env file means "no key", not "the empty key"; likewise for the other optionals.
        return None if isinstance(value, str) and not value.strip() else value
