"""Shared fixtures: the example data, a tiny model, one smoke training run and one model loaded for serving
(each made once per session), and the helpers of tests that start real servers (`free_port`,
`wait_until_ready`).

Training once per session (not once per test) keeps the whole suite at about two minutes on 2 CPU cores.
Helpers are fixtures, not importable functions: a test file imports nothing from conftest.
"""

import hashlib
import json
import os
import re
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

# No test may reach the Hugging Face Hub: set before transformers / huggingface_hub are imported.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Tests track into a scratch SQLite store (artifacts beside it), never the project's own mlflow.db.
os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{Path(tempfile.mkdtemp(prefix='mlflow-tests-')) / 'mlflow.db'}"
# Hypothesis (under schemathesis) caches what it learns in ./.hypothesis/ even without an example database.
os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", tempfile.mkdtemp(prefix="hypothesis-tests-"))

from {{ cookiecutter.package_name }}.config import Config, load_config
from {{ cookiecutter.package_name }}.data.shop_example import synthesize

CONFIGS = Path(__file__).parents[1] / "configs"


@pytest.fixture(scope="session")
def workdir(tmp_path_factory) -> Path:
    """A scratch project folder holding the shipped example data (1,200 rows, as `data synth` writes it)."""
    root = tmp_path_factory.mktemp("project")
    synthesize(root / "data" / "shop_extraction", n=1200, seed=0)
    return root


@pytest.fixture(scope="session")
def synth_dir(workdir) -> Path:
    """The example dataset inside `workdir` (train/validation/test.jsonl). Read it; never write to it."""
    return workdir / "data" / "shop_extraction"


@pytest.fixture(scope="session")
def smoke_config(workdir) -> Callable[..., Config]:
    """configs/smoke.yaml with every path inside `workdir`; call it with extra key=value overrides."""

    def make(*overrides: str, root: Path = workdir) -> Config:
        paths = [
            f"data.path={workdir / 'data' / 'shop_extraction'}",
            f"model.base_model={workdir / 'models' / 'tiny-chat'}",
            f"train.output_dir={root / 'outputs'}",
            f"eval.report_dir={root / 'reports'}",
            "tracking.enabled=false",  # MLflow logging costs seconds per run; tests that check it turn it on
        ]
        return load_config(CONFIGS / "smoke.yaml", [*paths, *overrides])

    return make


@pytest.fixture(scope="session")
def plain_chat_template() -> str:
    """The project's ChatML template without its generation markers, like most hub models' templates."""
    from {{ cookiecutter.package_name }}.model.load import CHAT_TEMPLATE

    # Character classes keep the Jinja tag delimiters out of this (cookiecutter-rendered) file.
    return re.sub(r"[{]%-?\s*(end)?generation\s*-?%[}]", "", CHAT_TEMPLATE.read_text())


@pytest.fixture(scope="session")
def tiny_model(workdir, smoke_config) -> Path:
    """The tiny offline model, built once from the training data exactly as `train` builds it."""
    from {{ cookiecutter.package_name }}.data.dataset import load_splits
    from {{ cookiecutter.package_name }}.model.load import build_tiny_model

    config = smoke_config()
    texts = [m["content"] for row in load_splits(config.data)["train"]["messages"] for m in row]
    return build_tiny_model(config.model.base_model, corpus_texts=texts, seed=config.train.seed)


@pytest.fixture(scope="session")
def tiny_model_digest(tiny_model) -> str:
    """SHA-256 of the tiny model's weights file before any training touched anything."""
    return hashlib.sha256((tiny_model / "model.safetensors").read_bytes()).hexdigest()


@pytest.fixture(scope="session")
def smoke_run(smoke_config, tiny_model_digest) -> Path:
    """One smoke training run (configs/smoke.yaml); returns its folder outputs/smoke-<time>/."""
    from {{ cookiecutter.package_name }}.train.sft import train

    return train(smoke_config("tracking.enabled=true"), config_name="smoke")


@pytest.fixture(scope="session")
def smoke_report(smoke_config, smoke_run) -> dict:
    """reports/eval.json of the smoke run, as `evaluate` returns it."""
    from {{ cookiecutter.package_name }}.evaluate.evaluate import evaluate

    report = evaluate(smoke_config("tracking.enabled=true"), adapter_dir=smoke_run / "adapter")
    if os.environ.get("SMOKE_REPORT_COPY"):  # the template's suite checks the smoke figures its docs quote
        Path(os.environ["SMOKE_REPORT_COPY"]).write_text(json.dumps(report), encoding="utf-8")
    return report


@pytest.fixture(scope="session")
def served_adapter(workdir, smoke_config, tiny_model) -> Path:
    """An untrained LoRA adapter on the tiny model, saved like a run (adapter/ + config.yaml beside it):
    what the serving tests need, in a second instead of a training run. Its LoRA B weights are random,
    not zero, so merging changes the model's outputs as a trained adapter's would."""
    import torch
    from peft import get_peft_model

    from {{ cookiecutter.package_name }}.config import dump_config
    from {{ cookiecutter.package_name }}.data.dataset import load_splits, with_recorded_system_prompt
    from {{ cookiecutter.package_name }}.model.load import load_base_model, load_tokenizer, lora_config

    config = smoke_config()
    config = with_recorded_system_prompt(config, load_splits(config.data)["train"]["messages"])  # as `train` does
    run_dir = workdir / "serving" / "untrained"
    peft_config = lora_config(config.lora)
    peft_config.init_lora_weights = False
    torch.manual_seed(0)
    model = get_peft_model(load_base_model(config.model, device="cpu"), peft_config)
    model.save_pretrained(run_dir / "adapter")
    load_tokenizer(tiny_model).save_pretrained(run_dir / "adapter")
    dump_config(config, run_dir / "config.yaml")
    return run_dir / "adapter"


@pytest.fixture(scope="session")
def served_model(served_adapter):
    """`served_adapter` loaded as the server loads it (LoRA merged, eval mode), once per session: build apps
    around it with `create_app(settings, loaded=served_model)`. Tests that patch its `generate` must undo
    it (the `monkeypatch` fixture does), as every later test shares this object."""
    from {{ cookiecutter.package_name }}.serve.loader import load_for_serving
    from {{ cookiecutter.package_name }}.serve.settings import Settings

    with pytest.MonkeyPatch.context() as env:
        for name in [name for name in os.environ if name.startswith("LLM_")]:
            env.delenv(name)  # the developer's LLM_* variables must not change what the tests serve
        settings = Settings(_env_file=None, model=str(served_adapter), device="cpu", request_log=None)
    return load_for_serving(settings)


@pytest.fixture(scope="session")
def free_port() -> Callable[[], int]:
    """Call it for a TCP port on 127.0.0.1 that nothing listens on, for a server the test starts."""

    def pick() -> int:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            return probe.getsockname()[1]

    return pick


@pytest.fixture(scope="session")
def wait_until_ready() -> Callable[..., None]:
    """Call it as `wait_until_ready(url, process=server, output=log_file, timeout_s=60)`: returns once GET
    `url` answers 200; fails, showing the process's output file, if the process exits first or the
    deadline passes."""
    # No proxy: a server on this machine must be asked directly, whatever http_proxy says.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def answers_200(url: str) -> bool:
        try:
            with opener.open(url, timeout=2) as response:
                return response.status == 200
        except OSError:  # not listening yet, or an HTTP error status (e.g. 503 while loading)
            return False

    def wait(url: str, *, process: subprocess.Popen, output: Path | None = None, timeout_s: float = 60) -> None:
        def shown() -> str:
            return output.read_text() if output is not None and output.exists() else "(output not kept)"

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"the server exited with code {process.returncode}:\n{shown()}")
            if answers_200(url):
                return
            time.sleep(0.2)
        pytest.fail(f"{url} did not answer 200 within {timeout_s} s:\n{shown()}")

    return wait


@pytest.fixture(scope="session")
def head_rows_of_one_step() -> Callable:
    """`(trainer) -> (rows, batch, loss)`: the loss of the trainer's first training batch, with the number of rows
    its LM head projected at each call (a forward hook): the answer-tokens-only head projects only answer tokens."""

    def run(trainer):
        rows: list[int] = []
        head = trainer.model.get_base_model().get_output_embeddings()
        hook = head.register_forward_hook(lambda module, args, output: rows.append(args[0].shape[0]))
        batch = next(iter(trainer.get_train_dataloader()))
        try:
            loss = trainer.compute_loss(trainer.model, batch)
        finally:
            hook.remove()
        return rows, batch, loss

    return run


# >>> llama_cpp


@pytest.fixture
def deploy_without_export(served_adapter, tmp_path) -> dict[str, str]:
    """For a deploy script run with DEPLOY_BACKEND=llama.cpp (not a dry run): MODEL, a run holding the served
    adapter and no GGUF export, and a PATH on which docker and the clouds' CLIs only log their calls to
    tmp_path/calls.log. The bundle step must refuse the run before any of them is called."""
    import shutil

    run, tools = tmp_path / "run", tmp_path / "bin"
    shutil.copytree(served_adapter, run / "adapter")
    tools.mkdir()
    for tool in ("docker", "aws", "gcloud", "az"):
        (tools / tool).write_text(f'#!/bin/sh\necho "{tool} $*" >> {tmp_path}/calls.log\n', encoding="utf-8")
        (tools / tool).chmod(0o755)
    return {"MODEL": str(run), "PATH": f"{tools}{os.pathsep}{os.environ['PATH']}"}


# <<< llama_cpp
