"""The API under generated input: schemathesis sends requests built from the OpenAPI schema (valid ones and
deliberately broken ones) to the app in-process, and checks every answer against that same schema.

    pytest tests/test_robustness.py

A failure here means either a 5xx (a request hurt the server) or an answer the schema does not describe (a
client generated from /openapi.json would break on it). Fix the server or the schema, and add a regression
test to tests/test_serve.py for the case schemathesis printed (it prints the request to reproduce it).
Examples are derandomized (the same requests every run) and bounded per operation.
"""

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.python import asgi

from {{ cookiecutter.package_name }}.serve.app import create_app
from {{ cookiecutter.package_name }}.serve.settings import Settings

# 30 per operation keeps the whole file at about 10 s on 2 CPU cores; the probe of issue 18 ran 84,591.
EXAMPLES_PER_OPERATION = 30
# Generated prompts are answered with at most this many tokens: the point is the answers' shape, not their text.
FUZZ_MAX_TOKENS = 4
# Answers a schema-valid request may get: 400 only for a prompt over LLM_MAX_PROMPT_TOKENS (a limit in tokens,
# which no JSON schema can state; see only_context_length_400), 404 for an unknown model name, 413 for a body
# over LLM_MAX_BODY_BYTES, 429 when the queue is full.
VALID_REQUEST_STATUSES = ["2XX", "400", "404", "413", "429"]
# Every operation of the schema: (path, method, whether it takes input that can be invalid).
OPERATIONS = [
    ("/v1/chat/completions", "POST", True),
    ("/v1/models", "GET", False),
    ("/v1/models/{model_id}", "GET", False),  # any string is a valid model id (an unknown one gets 404)
    ("/health", "GET", False),
    ("/ready", "GET", False),
]
# >>> aws
OPERATIONS += [("/invocations", "POST", True), ("/ping", "GET", False)]  # SageMaker's container contract
# <<< aws


def fuzz_settings(tmp_dir, **overrides) -> Settings:
    """Server settings deaf to the developer's LLM_* variables, with short answers."""
    with pytest.MonkeyPatch.context() as env:
        for name in [name for name in os.environ if name.startswith("LLM_")]:
            env.delenv(name)
        # Refusals answered at once: these tests send hundreds; test_serve's pacing test sets its own.
        fields = {
            "device": "cpu",
            "request_log": tmp_dir / "requests.jsonl",
            "max_tokens": FUZZ_MAX_TOKENS,
            "refusal_delay_s": 0,
        }
        return Settings(_env_file=None, **(fields | overrides))


@pytest.fixture(scope="module")
def api_schema(served_adapter, served_model, tmp_path_factory) -> Iterator[schemathesis.BaseSchema]:
    """The schema of a started app around the session's tiny model, loaded as schemathesis loads it (the
    app's lifespan runs in schemathesis's own event loop until the module's tests end)."""
    app = create_app(fuzz_settings(tmp_path_factory.mktemp("fuzz"), model=str(served_adapter)), loaded=served_model)
    # An explicit config: a schemathesis.toml in the working folder must not change what is checked.
    config = schemathesis.Config.from_dict(
        {"checks": {"positive_data_acceptance": {"expected-statuses": VALID_REQUEST_STATUSES}}}
    )
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=config)
    with asgi.get_client(app) as client:
        # The preloaded model is handed to the engine by a task the lifespan starts: wait for it.
        for _ in range(500):
            if client.get("/ready").status_code == 200:
                break
        assert client.get("/ready").status_code == 200, client.get("/ready").text
    yield schema
    asgi.shutdown_lifespans()  # stops the engine's thread; otherwise it runs until the process exits


def fuzz(operation, mode: GenerationMode) -> None:
    """Send EXAMPLES_PER_OPERATION generated requests to `operation`, checking each answer."""

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        derandomize=True,  # a fixed seed: the same requests on every run, so a failure reproduces
        deadline=None,  # the first request can be slow on a busy machine; time is not what is checked
        database=None,  # no .hypothesis/ folder in the project
        suppress_health_check=list(HealthCheck),
    )
    def call(case) -> None:
        # All of schemathesis's checks: no 5xx; status codes, content types, headers and bodies as documented;
        # invalid requests refused and valid ones accepted.
        case.call_and_validate(additional_checks=[only_context_length_400])

    call()


def only_context_length_400(ctx, response, case) -> None:
    """A 400 to a schema-valid request must be the prompt's length: any other 400 means the schema allows
    what the server refuses."""
    if case.meta.generation.mode.is_positive and response.status_code == 400:
        assert response.json()["error"]["code"] == "context_length_exceeded", response.text


@pytest.mark.parametrize(("path", "method"), [(path, method) for path, method, _ in OPERATIONS])
def test_valid_generated_requests_get_documented_answers_and_no_5xx(api_schema, path, method):
    fuzz(api_schema[path][method], GenerationMode.POSITIVE)


@pytest.mark.parametrize(("path", "method"), [(path, method) for path, method, has_input in OPERATIONS if has_input])
def test_invalid_generated_requests_are_refused_with_documented_4xx(api_schema, path, method):
    fuzz(api_schema[path][method], GenerationMode.NEGATIVE)


def test_every_operation_of_the_schema_is_fuzzed(api_schema):
    documented = {(path, method.upper()) for path, item in api_schema.raw_schema["paths"].items() for method in item}
    assert documented == {(path, method) for path, method, _ in OPERATIONS}


def test_the_schema_is_valid_openapi_and_documents_every_error_in_openai_shape(api_schema):
    api_schema.validate()  # against the OpenAPI 3.1 meta-schema: what client generators read
    raw = api_schema.raw_schema
    chat = raw["paths"]["/v1/chat/completions"]["post"]["responses"]
    assert set(chat) == {"200", "400", "404", "408", "413", "422", "429", "500", "503", "504"}
    error_ref = {"$ref": "#/components/schemas/ErrorResponse"}
    assert all(chat[status]["content"]["application/json"]["schema"] == error_ref for status in set(chat) - {"200"})
    assert set(chat["200"]["content"]) == {"application/json", "text/event-stream"}
    assert set(chat["429"]["headers"]) == {"Retry-After"} and set(chat["503"]["headers"]) == {"Retry-After"}
    # >>> aws
    assert raw["paths"]["/invocations"]["post"]["responses"] == chat  # SageMaker's route answers the same
    # <<< aws
    assert set(raw["paths"]["/v1/models/{model_id}"]["get"]["responses"]) == {"200", "404", "503"}
    # FastAPI's own 422 body ({"detail": [...]}) is not what this server answers: it is gone.
    assert "HTTPValidationError" not in raw["components"]["schemas"]
    assert set(raw["components"]["schemas"]["ErrorDetail"]["required"]) == {"message", "type", "param", "code"}
    # No key configured: no bearer scheme, no 401 anywhere.
    assert "securitySchemes" not in raw["components"]
    assert not [op for path in raw["paths"].values() for op in path.values() if "security" in op or "401" in op]


def test_the_schema_states_the_request_limits_exactly(api_schema):
    request = api_schema.raw_schema["components"]["schemas"]["ChatCompletionRequest"]["properties"]
    # 2**63-1 exactly: FastAPI's own schema rounded it to the float 2**63, which the server refuses.
    assert request["seed"]["anyOf"][0] == {"type": "integer", "minimum": 0, "maximum": 2**63 - 1}
    string_stop, list_stop, _ = request["stop"]["anyOf"]
    assert string_stop == {"type": "string", "minLength": 1, "maxLength": 256}
    assert list_stop["maxItems"] == 4 and list_stop["items"] == string_stop
    assert request["temperature"]["anyOf"] == [
        {"type": "number", "const": 0},
        {"type": "number", "minimum": 0.01, "maximum": 2},
    ]
    assert request["top_p"]["minimum"] == 1e-6
    # max_tokens is bounded by this server's LLM_MAX_TOKENS, under both of its names.
    for name in ("max_tokens", "max_completion_tokens"):
        assert request[name]["anyOf"][0] == {"type": "integer", "minimum": 1, "maximum": FUZZ_MAX_TOKENS}


def test_the_bearer_scheme_and_401_are_documented_only_with_an_api_key(served_adapter, tmp_path):
    raw = create_app(fuzz_settings(tmp_path, model=str(served_adapter), api_key="k")).openapi()
    assert raw["components"]["securitySchemes"] == {"HTTPBearer": {"type": "http", "scheme": "bearer"}}
    for path in [path for path, method, _ in OPERATIONS if method == "POST"]:
        operation = raw["paths"][path]["post"]
        assert operation["security"] == [{"HTTPBearer": []}] and "401" in operation["responses"]
    assert "401" not in raw["paths"]["/health"]["get"]["responses"]  # health stays open to probes
    schemathesis.openapi.from_dict(raw).validate()  # valid OpenAPI 3.1 with a key too (raises otherwise)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--url", "http://example.com:8000"], "is not this machine"),
        (["--requests", "0"], "--requests must be 1..100000"),
        (["--bad-share", "1.5"], "--bad-share must be 0..1"),
    ],
)
def test_the_load_script_refuses_remote_urls_and_bad_arguments_before_sending_anything(args, message):
    script = Path(__file__).parents[1] / "scripts" / "load_test.py"
    result = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and message in result.stderr, result.stderr
