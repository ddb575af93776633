"""Request and response bodies: the subset of OpenAI's chat completions API this server implements.

Fields OpenAI defines but this server does not use (`frequency_penalty`, `logit_bias`, `user`, ...) are
accepted and ignored, as most OpenAI-compatible servers do; `n` must be 1 and `tools` are refused.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# Limits that keep one request from hurting the others (each is stated in the OpenAPI schema):
MIN_TEMPERATURE = 0.01
"""Lowest temperature above 0: logits are divided by it in float32, and 1e-40 overflows them to inf (the
sampler then fails); at 0.01 logits of +-100 stay +-1e4, and sampling is already all but greedy."""
MIN_TOP_P = 1e-6
"""Lowest top_p: every nucleus this small is the top token alone (its probability is at least 1/vocabulary,
1e-6 for a million tokens), while 5e-324 (a valid float) rounds to 0 in float32 and kept no token."""
MAX_SEED = 2**63 - 1
"""Seeds are 0..2**63-1: what torch's generators take (64 bits) and what int64 clients can send."""
MAX_STOP_SEQUENCES = 4
MAX_STOP_CHARS = 256
"""Characters per stop sequence (OpenAI states none; 256 covers any end marker, and bounds the text
that is held back from a stream while it may still grow into a stop sequence)."""


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    """`developer` is OpenAI's newer name for `system` and is treated as such."""
    content: str | list[TextPart]
    """Text, or a list of text parts (joined); images and audio are not supported."""

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(part.text for part in self.content)

    def for_template(self) -> dict[str, str]:
        """The message as chat templates expect it."""
        return {"role": "system" if self.role == "developer" else self.role, "content": self.text()}


class StreamOptions(BaseModel):
    include_usage: bool = False
    """Send a last chunk with the token usage before [DONE]."""


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    """The served model's name (see /v1/models); another name gets 404."""
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    """Most tokens to generate; default and upper limit: the server's LLM_MAX_TOKENS."""
    max_completion_tokens: int | None = Field(None, ge=1)
    """OpenAI's newer name for max_tokens; wins when both are given."""
    temperature: float = Field(
        1.0, ge=0, le=2, description=f"0 decodes greedily; otherwise {MIN_TEMPERATURE} to 2 (OpenAI's range is 0-2)."
    )
    """0 is greedy (deterministic); OpenAI's default 1.0 samples."""
    top_p: float = Field(1.0, ge=MIN_TOP_P, le=1)
    stop: str | list[str] | None = Field(
        None,
        description=f"Up to {MAX_STOP_SEQUENCES} sequences of 1 to {MAX_STOP_CHARS} characters each.",
    )
    """Up to 4 sequences that end the answer; the sequence itself is not returned."""
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    """Makes sampling repeatable."""
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: Literal[1] = 1
    tools: None = None

    @field_validator("temperature")
    @classmethod
    def _check_temperature(cls, temperature: float) -> float:
        if 0 < temperature < MIN_TEMPERATURE:
            raise ValueError(f"temperature must be 0 (greedy) or at least {MIN_TEMPERATURE}")
        return temperature

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, stop: str | list[str] | None) -> str | list[str] | None:
        stops = [stop] if isinstance(stop, str) else stop or []
        if len(stops) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences")
        if any(not s for s in stops):
            raise ValueError("stop sequences must not be empty")
        if any(len(s) > MAX_STOP_CHARS for s in stops):
            raise ValueError(f"stop sequences must be at most {MAX_STOP_CHARS} characters")
        return stop

    def stop_sequences(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    """Unix time, seconds."""
    model: str
    choices: list[Choice]
    usage: Usage


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    finish_reason: Literal["stop", "length"] | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "local"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
