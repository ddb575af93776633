"""serve/vllm.py: the `vllm serve` command line, built once and shared by `serve-vllm` and docker-compose.yml.

vLLM cannot be installed here (no GPU, a multi-GB wheel), so the tests check the arguments it is given: the
exact lists, the model id and chat template against our server's, and the compose service's command.
"""

import json
import shlex
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from {{ cookiecutter.package_name }}.cli import app
from {{ cookiecutter.package_name }}.config import dump_config
from {{ cookiecutter.package_name }}.distributed.vllm import (
    VllmError,
    VllmTarget,
    printable,
    resolve_target,
    vllm_command,
    vllm_lora_rank,
)
from {{ cookiecutter.package_name }}.model.load import load_tokenizer
from {{ cookiecutter.package_name }}.serve.settings import Settings

ROOT = Path(__file__).parents[1]
ADAPTER = VllmTarget(
    model="org/base",
    tokenizer="outputs/run/adapter",
    served_name="shop",
    chat_template="outputs/run/adapter/chat_template.jinja",
    adapter_dir="outputs/run/adapter",
    lora_rank=12,
)
MERGED = VllmTarget(
    model="outputs/run/merged",
    tokenizer="outputs/run/merged",
    served_name="shop",
    chat_template="outputs/run/merged/chat_template.jinja",
    dtype="bfloat16",
)


def test_adapter_command_serves_the_adapter_under_our_model_id_and_the_base_under_another():
    assert vllm_command(ADAPTER, host="127.0.0.1", port=8000) == [
        "vllm", "serve", "org/base", "--tokenizer", "outputs/run/adapter",
        "--served-model-name", "shop-base", "--enable-lora",
        "--lora-modules", "shop=outputs/run/adapter", "--max-lora-rank", "16",
        "--chat-template", "outputs/run/adapter/chat_template.jinja", "--dtype", "auto",
        "--host", "127.0.0.1", "--port", "8000",
    ]  # fmt: skip


def test_merged_command_serves_the_folder_under_our_model_id_without_lora():
    assert vllm_command(MERGED, host="0.0.0.0", port=9000) == [
        "vllm", "serve", "outputs/run/merged", "--tokenizer", "outputs/run/merged",
        "--served-model-name", "shop",
        "--chat-template", "outputs/run/merged/chat_template.jinja", "--dtype", "bfloat16",
        "--host", "0.0.0.0", "--port", "9000",
    ]  # fmt: skip


def test_printed_command_names_the_key_variable_never_its_value():
    command = vllm_command(ADAPTER, host="127.0.0.1", port=8000)
    assert shlex.split(printable(command)) == command
    shown = printable(command, with_key=True)
    assert shown == 'VLLM_API_KEY="$LLM_API_KEY" ' + printable(command)


def test_the_api_key_reaches_vllm_in_its_environment_not_its_command_line(tmp_path, smoke_config, monkeypatch):
    """Issue 27 item 12: a command-line argument is visible to every user of the machine (`ps`); the
    environment is not. vLLM reads VLLM_API_KEY itself."""
    import importlib.util
    import os

    adapter = fake_run(tmp_path, smoke_config())
    monkeypatch.chdir(tmp_path)
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: object() if name == "vllm" else find_spec(name, *a)
    )
    execs = []
    monkeypatch.setattr(os, "execv", lambda program, argv: execs.append((argv, None)))
    monkeypatch.setattr(os, "execve", lambda program, argv, env: execs.append((argv, dict(env))))
    for key in ("s3cret", None):
        if key:
            monkeypatch.setenv("LLM_API_KEY", key)
        else:
            monkeypatch.delenv("LLM_API_KEY")
            monkeypatch.setenv("VLLM_API_KEY", "inherited")  # the same key as `serve`: none
        result = CliRunner().invoke(app, ["serve-vllm", "--model", str(adapter)])
        assert result.exit_code == 0, result.output
        argv, env = execs.pop()
        assert argv[:2] == ["vllm", "serve"] and "--api-key" not in argv and "s3cret" not in argv
        assert env is not None and env.get("VLLM_API_KEY") == key
        assert env["PATH"] == os.environ["PATH"]  # the rest of the environment is kept
        assert "s3cret" not in result.output


@pytest.mark.parametrize(("rank", "expected"), [(1, 1), (4, 8), (16, 16), (17, 32), (300, 320), (512, 512)])
def test_lora_rank_rounds_up_to_a_value_vllm_accepts(rank, expected):
    assert vllm_lora_rank(rank) == expected


def test_a_rank_above_vllms_largest_is_refused_with_the_fix():
    with pytest.raises(VllmError, match=r"lora\.r=600: .* up to 512; merge the adapter first"):
        vllm_lora_rank(600)


def fake_run(root: Path, config, *, r: int = 12) -> Path:
    """outputs/<run>/ with an adapter folder as `train` leaves it (weights are not read) and its config.yaml."""
    adapter = root / "outputs" / "run" / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text(json.dumps({"r": r, "base_model_name_or_path": "org/base"}))
    (adapter / "adapter_model.safetensors").write_bytes(b"")
    (adapter / "chat_template.jinja").write_text("the tokenizer's template (not rendered here)")
    dump_config(config, root / "outputs" / "run" / "config.yaml")
    return adapter


def test_resolve_target_names_the_model_as_our_server_does(tmp_path, smoke_config):
    adapter = fake_run(tmp_path, smoke_config("task.system_prompt=null", "model.dtype=bfloat16"))
    target = resolve_target(Settings(model=str(adapter.parent), _env_file=None))
    assert target == VllmTarget(
        model="org/base",
        tokenizer=str(adapter),
        served_name="{{ cookiecutter.project_slug }}",  # the config's project, as /v1/models lists it
        chat_template=str(adapter / "chat_template.jinja"),  # no system prompt: the tokenizer's own file
        adapter_dir=str(adapter),
        lora_rank=12,
        dtype="bfloat16",
    )
    renamed = resolve_target(Settings(model=str(adapter), served_model_name="shop", _env_file=None))
    assert renamed.served_name == "shop"


def test_merged_folder_takes_the_model_id_from_its_runs_config(tmp_path, smoke_config):
    adapter = fake_run(tmp_path, smoke_config())
    merged = adapter.parent / "merged"
    merged.mkdir()
    (merged / "config.json").write_text("{}")
    (merged / "chat_template.jinja").write_text("the merged tokenizer's template")
    target = resolve_target(Settings(model=str(merged), system_prompt="", _env_file=None))
    assert (target.model, target.tokenizer, target.adapter_dir) == (str(merged), str(merged), None)
    assert target.served_name == "{{ cookiecutter.project_slug }}"


def test_the_default_system_prompt_renders_the_prompt_our_server_renders(served_adapter):
    """Our server puts the training system prompt first when a request has none (routes/chat.py); vLLM
    gets the same through its chat template, and a request's own system message still wins."""
    target = resolve_target(Settings(model=str(served_adapter), _env_file=None))
    run_prompt = yaml.safe_load((served_adapter.parent / "config.yaml").read_text())["task"]["system_prompt"]
    assert run_prompt and target.chat_template.startswith("{" + "%- if messages")  # split: tests are Jinja-rendered
    tokenizer = load_tokenizer(served_adapter)
    user = [{"role": "user", "content": 'Order "A-1": 2 mugs\nship by Friday'}]
    own = [{"role": "system", "content": "Answer briefly."}, *user]
    for messages, as_served in ((user, [{"role": "system", "content": run_prompt}, *user]), (own, own)):
        ours = tokenizer.apply_chat_template(as_served, tokenize=False, add_generation_prompt=True)
        vllm = tokenizer.apply_chat_template(
            messages, chat_template=target.chat_template, tokenize=False, add_generation_prompt=True
        )
        assert vllm == ours


def test_compose_service_runs_the_command_vllm_command_builds():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    service = compose["services"]["vllm"]
    default = yaml.safe_load((ROOT / "configs" / "default.yaml").read_text(encoding="utf-8"))
    # The compose paths: the adapter mounted at /model/adapter, the hub base model, the default config's rank.
    assert any(volume.endswith(":/model/adapter:ro") for volume in service["volumes"])
    target = VllmTarget(
        model="{{ cookiecutter.base_model }}",
        tokenizer="/model/adapter",
        served_name=default["project"],
        chat_template="/model/adapter/chat_template.jinja",
        adapter_dir="/model/adapter",
        lora_rank=default["lora"]["r"],
        dtype=default["model"]["dtype"],
    )
    # The image's entrypoint is `vllm serve`; the key comes from VLLM_API_KEY, which vLLM reads itself.
    assert [str(part) for part in service["command"]] == vllm_command(target, host="0.0.0.0", port=8000)[2:]
    assert service["environment"]["VLLM_API_KEY"] == "${LLM_API_KEY:-}"


def test_cli_prints_the_command_with_the_key_hidden(tmp_path, smoke_config, monkeypatch):
    adapter = fake_run(tmp_path, smoke_config())
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LLM_API_KEY", "s3cret")
    result = CliRunner().invoke(app, ["serve-vllm", "--model", str(adapter), "--print", "--port", "8001"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f'VLLM_API_KEY="$LLM_API_KEY" vllm serve org/base --tokenizer {adapter} ')
    assert "--port 8001" in result.output and "s3cret" not in result.output and "--api-key" not in result.output


def test_cli_without_vllm_exits_2_with_the_install_hint(tmp_path, smoke_config, monkeypatch):
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed: the command would start it")
    adapter = fake_run(tmp_path, smoke_config())
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["serve-vllm", "--model", str(adapter)])
    assert result.exit_code == 2
    assert "vLLM is not installed here" in result.output and "make up-gpu" in result.output


def test_cli_with_no_trained_model_exits_2_naming_the_fix(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["serve-vllm", "--print"])
    assert result.exit_code == 2
    assert "no trained adapter under outputs/; run `train` first or pass --model" in result.output
