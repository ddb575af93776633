"""Request and response bodies: the subset of OpenAI's chat completions API this server implements.

Fields OpenAI defines but this server does not use (`frequency_penalty`, `logit_bias`, `user`, ...) are
accepted and ignored, as most OpenAI-compatible servers do; `n` must be 1 and `tools` are refused.
Request types are strict, as OpenAI's API is: `"stream": "yes"` or `"max_tokens": true` get 422 instead of
being coerced. Every limit is a Field constraint, so the OpenAPI schema states it.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, field_validator

# Limits that keep one request from hurting the others (each is stated in the OpenAPI schema):
MIN_TEMPERATURE = 0.01
"""Lowest temperature above 0: logits are divided by it in float32, and 1e-40 overflows them to inf (the
sampler then fails); at 0.01 logits of +-100 stay +-1e4, and sampling is already all but greedy."""
MIN_TOP_P = 1e-6
"""Lowest top_p: every nucleus this small is the top token alone (its probability is at least 1/vocabulary,
1e-6 for a million tokens), while 5e-324 (a valid float) rounds to 0 in float32 and kept no token."""
MAX_SEED = 2**63 - 1
"""Seeds are 0..2**63-1: what torch's generators take (64 bits) and what int64 clients can send."""
MAX_MESSAGES = 256
"""Messages per request. Counted before any message is validated: a 60 KB body of 30,001 invalid items costs
one error, not 30,001 (0.3 to 0.8 s of the event loop). More could not fit the default 1,024-token prompt anyway
(each message adds about 4 template tokens)."""
MAX_STOP_SEQUENCES = 4
MAX_STOP_CHARS = 256
"""Characters per stop sequence (OpenAI states none; 256 covers any end marker, and bounds the text
that is held back from a stream while it may still grow into a stop sequence)."""

# Strict: no coercion of strings, numbers and booleans into one another; attribute docstrings describe fields.
REQUEST_CONFIG = ConfigDict(strict=True, use_attribute_docstrings=True)


def _integral_float_as_int(value: object) -> object:
    # JSON Schema counts 1508.0 as an integer, and clients that hold every number as a float send it;
    # strict validation still refuses true, "5" and 2.5.
    return int(value) if isinstance(value, float) and value.is_integer() else value


# Bounds first, then the validator: that order keeps them JSON Schema's minimum/maximum in the schema.
TokenCount = Annotated[int, Field(ge=1), BeforeValidator(_integral_float_as_int)]
Seed = Annotated[int, Field(ge=0, le=MAX_SEED), BeforeValidator(_integral_float_as_int)]
OnlyOne = Annotated[int, Field(ge=1, le=1), BeforeValidator(_integral_float_as_int)]
StopSequence = Annotated[str, Field(min_length=1, max_length=MAX_STOP_CHARS)]
StopSequences = Annotated[list[StopSequence], Field(max_length=MAX_STOP_SEQUENCES)]
Temperature = Annotated[
    float,
    Field(ge=0, le=2),
    # The schema states the hole (0, MIN_TEMPERATURE) too, so a generated client refuses what the server does.
    WithJsonSchema(
        {"anyOf": [{"type": "number", "const": 0}, {"type": "number", "minimum": MIN_TEMPERATURE, "maximum": 2}]}
    ),
]


class TextPart(BaseModel):
    model_config = REQUEST_CONFIG

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = REQUEST_CONFIG

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
    model_config = REQUEST_CONFIG

    include_usage: bool = False
    """Send a last chunk with the token usage before [DONE]."""


class ChatCompletionRequest(BaseModel):
    model_config = REQUEST_CONFIG | ConfigDict(extra="ignore")

    model: str | None = None
    """The served model's name (see /v1/models); another name gets 404."""
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_tokens: TokenCount | None = None
    """Most tokens to generate; default and upper limit: the server's LLM_MAX_TOKENS (over it: 400)."""
    max_completion_tokens: TokenCount | None = None
    """OpenAI's newer name for max_tokens; wins when both are given."""
    temperature: Temperature = Field(
        1.0, description=f"0 decodes greedily; otherwise {MIN_TEMPERATURE} to 2 (OpenAI's range is 0-2)."
    )
    """0 is greedy (deterministic); OpenAI's default 1.0 samples."""
    top_p: float = Field(1.0, ge=MIN_TOP_P, le=1)
    """Sample from the smallest set of tokens whose probabilities add up to top_p."""
    stop: StopSequence | StopSequences | None = Field(
        None,
        description=f"Up to {MAX_STOP_SEQUENCES} sequences of 1 to {MAX_STOP_CHARS} characters each that end the "
        "answer; the sequence itself is not returned.",
    )
    seed: Seed | None = None
    """Makes sampling repeatable."""
    stream: bool = False
    """Send the answer as server-sent events (text/event-stream), chunk by chunk, ending with `data: [DONE]`."""
    stream_options: StreamOptions | None = None
    n: OnlyOne = 1
    """Answers per request; only 1 is served."""
    tools: None = None
    """Tool calls are not supported."""

    @field_validator("temperature")
    @classmethod
    def _check_temperature(cls, temperature: float) -> float:
        if 0 < temperature < MIN_TEMPERATURE:
            raise ValueError(f"temperature must be 0 (greedy) or at least {MIN_TEMPERATURE}")
        return temperature

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


class HealthStatus(BaseModel):
    status: Literal["ok", "failed"]
    error: str | None = None
    """Why loading the model failed (only with `failed`)."""


class ReadyStatus(BaseModel):
    status: Literal["ready", "loading", "failed"]
    model: str | None = None
    """The served model's name (only with `ready`)."""
    version: str | None = None
    error: str | None = None
    """Why loading the model failed (only with `failed`)."""


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
