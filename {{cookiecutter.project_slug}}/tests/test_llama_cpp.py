"""The llama_cpp extra: GGUF export of the tiny model (once per session), served and scored with llama.cpp.

Needs llama-cpp-python and llama.cpp's converter (`make llama-cpp`; LLAMA_CPP_DIR names another converter
folder); without them these tests skip, saying so.
"""

import dataclasses
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import openai
import pytest
import yaml
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from {{ cookiecutter.package_name }}.cli import app
from {{ cookiecutter.package_name }}.config import load_config
from {{ cookiecutter.package_name }}.export.gguf import DEFAULT_LLAMA_CPP_DIR, LLAMA_CPP_DIR, Export, export_gguf
from {{ cookiecutter.package_name }}.registry import resolve_model_source
from {{ cookiecutter.package_name }}.serve.app import create_app
from {{ cookiecutter.package_name }}.serve.settings import Settings

CONVERTER = Path(os.environ.get(LLAMA_CPP_DIR) or DEFAULT_LLAMA_CPP_DIR)
llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed: run `make llama-cpp`")
pytestmark = pytest.mark.skipif(
    not (CONVERTER / "convert_hf_to_gguf.py").is_file(),
    reason=f"llama.cpp's converter is not in {CONVERTER}: run `make llama-cpp` or set {LLAMA_CPP_DIR}",
)
runner = CliRunner()
HELLO = [{"role": "user", "content": "Where is my order B11688?"}]
SRC = Path(__file__).parents[1] / "src"


@pytest.fixture(scope="session")
def run_dir(served_adapter) -> Path:
    """The served adapter's run folder (adapter/ + config.yaml), with the q8_0 export inside, made once."""
    run = served_adapter.parent
    config = load_config(run / "config.yaml")
    export_gguf(Export(source=resolve_model_source(str(run)), config=config, quant="q8_0", out_dir=run))
    return run


@pytest.fixture(scope="session")
def gguf_file(run_dir) -> Path:
    return run_dir / "model-q8_0.gguf"


@pytest.fixture(scope="session")
def llm(gguf_file):
    return llama_cpp.Llama(str(gguf_file), n_ctx=512, verbose=False, logits_all=True)


def settings_for(model: Path, **fields) -> Settings:
    with pytest.MonkeyPatch.context() as env:
        for name in [name for name in os.environ if name.startswith("LLM_")]:
            env.delenv(name)
        defaults = {"model": str(model), "device": "cpu", "request_log": None, "refusal_delay_s": 0}
        return Settings(_env_file=None, **(defaults | fields))


def test_export_writes_one_gguf_with_template_system_prompt_task_and_a_modelfile(run_dir, gguf_file):
    import gguf

    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    fields = {name: field.contents() for name, field in gguf.GGUFReader(gguf_file).fields.items()}
    assert fields["general.file_type"] == 7  # llama.cpp's MOSTLY_Q8_0
    assert fields["finetune.system_prompt"] == config["task"]["system_prompt"]
    assert json.loads(fields["finetune.task"]) == config["task"]
    assert fields["finetune.run"] == run_dir.name
    template = fields["tokenizer.chat_template"]  # without the training-only generation tags
    assert "<|im_start|>" in template and not re.search(r"[{]%-?\s*(end)?generation", template)
    modelfile = (run_dir / "model-q8_0.Modelfile").read_text()
    assert "FROM ./model-q8_0.gguf\n" in modelfile and f'SYSTEM """{config["task"]["system_prompt"]}"""' in modelfile
    assert 'PARAMETER stop "<|im_end|>"' in modelfile
    assert not [path for path in run_dir.iterdir() if path.name.startswith(".export-")]  # the scratch folder went


def test_llama_cpp_tokenizes_like_the_run_tokenizer(llm, served_adapter):
    """The converter was told that the tiny tokenizer's pre-tokenizer is GPT-2's: llama.cpp then splits as ours does."""
    from {{ cookiecutter.package_name }}.model.load import load_tokenizer

    tokenizer = load_tokenizer(served_adapter)
    for text in ["Where is my order B11688?", "  two  spaces, ünïcödé, 12345 and 'quotes' 're\n", '{"intent": "x"}']:
        ours = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == ours, text


def test_llama_cpp_next_token_logits_match_the_merged_model(llm, served_model):
    """The merged, converted and 8-bit model computes what the transformers model computes, up to rounding."""
    import numpy as np
    import torch

    ids = served_model.tokenizer.apply_chat_template(HELLO, add_generation_prompt=True, return_dict=True)["input_ids"]
    with torch.no_grad():
        expected = served_model.model(torch.tensor([ids])).logits[0].float().numpy()
    llm.reset()
    llm.eval(ids)
    got = np.asarray(llm.scores[: len(ids)])
    assert np.corrcoef(got.ravel(), expected.ravel())[0, 1] > 0.995  # the LoRA update left out: 0.32
    # 8-bit weights move each logit a little: wherever our top token leads by more than that, llama.cpp's agrees.
    error = np.abs(got - expected).max()
    top_two = np.sort(expected, axis=-1)[:, -2:]
    clear = top_two[:, 1] - top_two[:, 0] > 2 * error
    assert clear.any() and (got.argmax(-1) == expected.argmax(-1))[clear].all()


def test_llama_cpp_backend_serves_the_same_model_id_prompt_tokens_and_stop_rules(gguf_file, served_adapter):
    for backend, model in (("transformers", served_adapter), ("llama.cpp", gguf_file)):
        with TestClient(create_app(settings_for(model, backend=backend))) as client:
            while client.get("/ready").status_code != 200:
                time.sleep(0.05)
            [listed] = client.get("/v1/models").json()["data"]
            body = {"messages": HELLO, "max_tokens": 5, "stop": ["\u0000never"]}
            answer = client.post("/v1/chat/completions", json=body).json()
            stream = client.post("/v1/chat/completions", json=body | {"stream": True}).text
            seen = (listed["id"], answer["usage"]["prompt_tokens"], answer["choices"][0]["finish_reason"])
            if backend == "transformers":
                reference = seen
            else:
                assert seen == reference  # same id, same prompt token count, max_tokens ends both
                assert answer["usage"]["completion_tokens"] == 5
                assert stream.rstrip().endswith("data: [DONE]")


def test_serve_backend_llama_cpp_answers_the_official_openai_client(gguf_file, tmp_path, free_port, wait_until_ready):
    port = free_port()
    environment = {name: value for name, value in os.environ.items() if not name.startswith("LLM_")}
    environment |= {"HF_HUB_OFFLINE": "1", "LLM_API_KEY": "k", "LLM_REQUEST_LOG": str(tmp_path / "requests.jsonl")}
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "{{ cookiecutter.package_name }}", "serve", "--backend", "llama.cpp"]
    log = tmp_path / "server.log"
    with log.open("w") as output:
        server = subprocess.Popen(
            [*command, "--model", str(gguf_file), "--port", str(port)],
            cwd=tmp_path,
            env=environment,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until_ready(f"http://127.0.0.1:{port}/ready", process=server, output=log)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k", max_retries=0, timeout=30)
        [model] = client.models.list().data
        answer = client.chat.completions.create(model=model.id, messages=HELLO, max_tokens=8, temperature=0)
        pieces = client.chat.completions.create(
            model=model.id, messages=HELLO, max_tokens=8, temperature=0, stream=True
        )
        assert "".join(chunk.choices[0].delta.content or "" for chunk in pieces) == answer.choices[0].message.content
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="wrong", max_retries=0).models.list()
        assert "serving" in log.read_text() and str(gguf_file) in log.read_text()
        assert len((tmp_path / "requests.jsonl").read_text().splitlines()) == 2
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_evaluate_gguf_scores_the_same_rows_paired_with_the_adapter(run_dir, gguf_file, tmp_path):
    from {{ cookiecutter.package_name }}.evaluate.evaluate import evaluate
    from {{ cookiecutter.package_name }}.evaluate.gguf import evaluate_gguf
    from {{ cookiecutter.package_name }}.report.quantization import END, START, update_readme

    settings = [f"eval.report_dir={tmp_path}", "eval.max_samples=6", "eval.few_shot=0", "eval.max_new_tokens=24"]
    config = load_config(run_dir / "config.yaml", settings)  # the run's own config, on 6 rows
    evaluate(config, adapter_dir=run_dir / "adapter")
    report = evaluate_gguf(config, path=gguf_file)
    assert set(report["lines"]) == {"adapter", "q8_0"}
    q8 = report["lines"]["q8_0"]
    assert set(q8["metrics"]["field_accuracy"]) >= {"estimate", "low", "high"}
    assert q8["tokens_per_s"] > 0 and report["lines"]["adapter"]["tokens_per_s"] > 0
    assert json.loads((tmp_path / "quantization.json").read_text()) == report
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n<!-- results:start -->\n<!-- results:end -->\n{START}\nold\n{END}\nend\n")
    assert update_readme(report, metric="field_accuracy", readme=readme)
    text = readme.read_text()
    assert "| q8_0 (llama.cpp) |" in text and "old" not in text and text.endswith(f"{END}\nend\n")


def test_the_export_is_logged_to_the_models_mlflow_run(run_dir, gguf_file, tmp_path):
    from {{ cookiecutter.package_name }}.export.gguf import log_export
    from {{ cookiecutter.package_name }}.tracking import client

    mlflow = client()  # the session's own store (tests/conftest.py sets MLFLOW_TRACKING_URI)
    # Artifacts under tmp_path: MLflow's default is ./mlruns, i.e. inside the project the tests run in.
    experiment = mlflow.create_experiment(f"export-{time.time_ns()}", artifact_location=tmp_path.as_uri())
    run_id = mlflow.create_run(experiment).info.run_id
    source = dataclasses.replace(resolve_model_source(str(run_dir)), run_id=run_id)
    assert log_export(source, gguf_file).startswith(f"MLflow: logged to run {run_id}")
    logged = sorted(artifact.path for artifact in mlflow.list_artifacts(run_id, "gguf"))
    assert logged == ["gguf/model-q8_0.Modelfile", "gguf/model-q8_0.gguf"]


def test_a_registered_versions_export_folder_holds_its_adapter_and_config(run_dir, tmp_path):
    from {{ cookiecutter.package_name }}.export.gguf import copy_run_folder

    source = dataclasses.replace(resolve_model_source(str(run_dir)), uri="models:/x/1")  # as fetch_model gives it
    folder = copy_run_folder(source, tmp_path / "x-v1")
    assert {"adapter_model.safetensors", "tokenizer.json"} <= {path.name for path in (folder / "adapter").iterdir()}
    assert not (folder / "config.yaml").exists()  # this version has no MLflow run to take its config from
    assert resolve_model_source(str(folder)).adapter_dir == folder / "adapter"


# ---- refusals: exit 2, the reason and the fix, nothing written -------------------------------------------


def copy_run(run_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "outputs" / run_dir.name
    shutil.copytree(run_dir, copy)
    return copy


def test_export_refuses_a_base_model_the_converter_does_not_support(run_dir, tmp_path, tiny_model):
    base = tmp_path / "odd-base"
    shutil.copytree(tiny_model, base)
    config = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(json.dumps(config | {"architectures": ["NoSuchModelForCausalLM"]}))
    run = copy_run(run_dir, tmp_path)
    adapter_config = json.loads((run / "adapter" / "adapter_config.json").read_text())
    adapter_config["base_model_name_or_path"] = str(base)
    (run / "adapter" / "adapter_config.json").write_text(json.dumps(adapter_config))
    before = sorted(run.iterdir())
    result = runner.invoke(app, ["export", "gguf", "--model", str(run), "--type", "f16"])
    assert result.exit_code == 2, result.output
    assert "NoSuchModelForCausalLM) is not supported by llama.cpp's converter" in result.output
    assert sorted(run.iterdir()) == before


def test_export_refuses_without_llama_cpp_and_keeps_an_existing_file(run_dir, tmp_path, monkeypatch):
    run = copy_run(run_dir, tmp_path)
    before = (run / "model-q8_0.gguf").read_bytes()
    result = runner.invoke(app, ["export", "gguf", "--model", str(run), "--type", "q8_0"])
    assert result.exit_code == 2 and "exists; pass --force" in result.output
    monkeypatch.setenv(LLAMA_CPP_DIR, str(tmp_path / "nowhere"))
    result = runner.invoke(app, ["export", "gguf", "--model", str(run), "--type", "f16"])
    assert result.exit_code == 2 and "run `make llama-cpp`" in result.output
    monkeypatch.setenv(LLAMA_CPP_DIR, str(CONVERTER))
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # what an environment without the build sees
    for command in (["export", "gguf", "--model", str(run), "--type", "q4_k_m"], ["serve", "--backend", "llama.cpp"]):
        result = runner.invoke(app, [*command, "--model", str(run)] if command[0] == "serve" else command)
        assert result.exit_code == 2, result.output
        assert "llama-cpp-python is not installed" in result.output and "make llama-cpp" in result.output
    assert (run / "model-q8_0.gguf").read_bytes() == before and not (run / "model-q4_k_m.gguf").exists()


def test_a_converter_that_fails_midway_leaves_nothing_behind(run_dir, tmp_path, monkeypatch):
    broken = tmp_path / "llama.cpp"  # a converter that dies after it started (the tiny model's patch applies)
    (broken / "conversion").mkdir(parents=True)
    (broken / "conversion" / "__init__.py").write_text("")
    (broken / "conversion" / "base.py").write_text("class TextModel:\n    pass\n")
    (broken / "convert_hf_to_gguf.py").write_text("import sys\nsys.exit('unsupported tensor blk.0.x')\n")
    monkeypatch.setenv(LLAMA_CPP_DIR, str(broken))
    run = copy_run(run_dir, tmp_path)
    before = sorted(run.iterdir())
    result = runner.invoke(app, ["export", "gguf", "--model", str(run), "--type", "f16"])
    assert result.exit_code == 1 and "converter failed" in result.output and "unsupported tensor" in result.output
    assert sorted(run.iterdir()) == before  # no model-f16.gguf, no Modelfile, no scratch folder


def test_a_gguf_of_another_task_is_refused_for_serving_and_evaluation(run_dir, tmp_path):
    from {{ cookiecutter.package_name }}.serve.llama_cpp import load_gguf_for_serving

    run = copy_run(run_dir, tmp_path)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["task"]["fields"] = ["something_else"]
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(Exception, match="exported for another task") as refused:
        load_gguf_for_serving(settings_for(run / "model-q8_0.gguf", backend="llama.cpp"))
    assert getattr(refused.value, "exit_code", None) == 2
    result = runner.invoke(app, ["evaluate", "--gguf", str(run / "model-q8_0.gguf")])
    assert result.exit_code == 2 and "exported for another task" in result.output
    assert not (tmp_path / "reports").exists()


def test_llama_threads_reach_llama_cpp_and_a_bad_value_is_named(gguf_file):
    from {{ cookiecutter.package_name }}.serve.llama_cpp import load_gguf_for_serving

    for threads, expected in ((1, 1), (None, len(os.sched_getaffinity(0)))):  # unset: every core it may use
        llm = load_gguf_for_serving(settings_for(gguf_file, backend="llama.cpp", llama_threads=threads)).model.llm
        assert (llm.n_threads, llm.n_threads_batch) == (expected, expected)
        assert (llm.context_params.n_threads, llm.context_params.n_threads_batch) == (expected, expected)
    result = runner.invoke(
        app, ["serve", "--model", str(gguf_file), "--backend", "llama.cpp"], env={"LLM_LLAMA_THREADS": "0"}
    )
    assert result.exit_code == 2 and "LLM_LLAMA_THREADS: Input should be greater than 0 (got '0')" in result.output


# ---- deploying with llama.cpp (make deploy BACKEND=llama.cpp): the bundle; each cloud in tests/test_deploy_*.py ---


def bundle(*args: str):
    """`python -m <package>.clouds.bundle ARGS`, the bundle step of deploy/<cloud>/deploy.sh."""
    import typer

    from {{ cookiecutter.package_name }}.clouds.bundle import main

    command = typer.Typer()
    command.command()(main)
    return runner.invoke(command, list(args))


def test_the_deploy_bundle_carries_the_export_and_serves_it_with_llama_cpp(run_dir, gguf_file, tmp_path):
    from {{ cookiecutter.package_name }}.model.generate import chat_ids
    from {{ cookiecutter.package_name }}.serve.llama_cpp import load_gguf_for_serving

    out = tmp_path / "model"  # mounted where it was written, as /app/model in the image
    result = bundle("--model", str(run_dir), "--out", str(out), "--mount-dir", str(out), "--gguf", "q8_0")
    assert result.exit_code == 0, result.output
    assert (out / "model-q8_0.gguf").read_bytes() == gguf_file.read_bytes()
    # The image's LLM_MODEL=/app/model with LLM_BACKEND=llama.cpp, LLM_GGUF_TYPE=q8_0: the bundled file, same answers.
    bundled = load_gguf_for_serving(settings_for(out, backend="llama.cpp", gguf_type="q8_0"))
    original = load_gguf_for_serving(settings_for(gguf_file, backend="llama.cpp"))
    assert bundled.model.path == out / "model-q8_0.gguf" and bundled.name == original.name
    ids = chat_ids(original.tokenizer, HELLO, add_generation_prompt=True)
    first = [list(itertools.islice(loaded.model.tokens(ids), 4)) for loaded in (original, bundled)]
    assert first[0] == first[1]


def test_deploying_a_run_without_its_export_is_refused_before_anything_is_bundled(run_dir, tmp_path):
    from {{ cookiecutter.package_name }}.clouds.llama_cpp import exported_gguf

    out = tmp_path / "model"
    result = bundle("--model", str(run_dir), "--out", str(out), "--gguf", "q4_k_m")  # only q8_0 was exported
    assert result.exit_code == 2, result.output
    assert f"{run_dir}/model-q4_k_m.gguf: no such file" in result.output
    assert f"make export-gguf RUN={run_dir} TYPE=q4_k_m" in result.output and not out.exists()
    # A registered version's export is in outputs/<name>-v<version>/ (export gguf --model models:/...).
    version = dataclasses.replace(resolve_model_source(str(run_dir)), uri="models:/shop/3", name="shop", version="3")
    with pytest.raises(
        Exception, match=r"outputs/shop-v3/model-f16\.gguf: no such file.*--model models:/shop/3 --type f16"
    ):
        exported_gguf(version, "f16")


def test_the_champions_export_logged_to_its_mlflow_run_is_fetched_for_the_bundle(run_dir, gguf_file, tmp_path):
    """`make deploy` bundles models:/<project>@champion: `make export-gguf` of its run logged the file to MLflow."""
    from {{ cookiecutter.package_name }}.clouds.llama_cpp import exported_gguf
    from {{ cookiecutter.package_name }}.export.gguf import log_export
    from {{ cookiecutter.package_name }}.tracking import client

    mlflow = client()
    experiment = mlflow.create_experiment(f"deploy-{time.time_ns()}", artifact_location=tmp_path.as_uri())
    source = dataclasses.replace(resolve_model_source(str(run_dir)), run_id=mlflow.create_run(experiment).info.run_id)
    log_export(source, gguf_file)
    name = f"shop{time.time_ns()}"
    champion = dataclasses.replace(source, uri=f"models:/{name}/3", name=name, version="3")  # as fetch_model gives it
    with pytest.MonkeyPatch.context() as env:
        env.chdir(tmp_path)  # outputs/ of this test, not of the project
        fetched = exported_gguf(champion, "q8_0")
        assert fetched == Path(f"outputs/{name}-v3/model-q8_0.gguf")
        assert fetched.read_bytes() == gguf_file.read_bytes()
        with pytest.raises(Exception, match=r"model-f16\.gguf: no such file"):  # never exported: nothing fetched
            exported_gguf(champion, "f16")
        assert [path.name for path in fetched.parent.iterdir()] == ["model-q8_0.gguf"]
