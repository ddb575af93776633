"""Deploy to an Azure ML managed online endpoint: the azure-ai-ml entities built without credentials, dumped
to YAML and loaded back; the calls made on a recording client; the dry run; bad settings stopping early."""

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytest.importorskip("azure.ai.ml")

from azure.ai.ml import load_online_deployment, load_online_endpoint
from azure.core.exceptions import ResourceNotFoundError

from {{ cookiecutter.package_name }}.clouds.azure import deploy as azure
from {{ cookiecutter.package_name }}.clouds.settings import DeploySettingsError, shell_exports

ROOT = Path(__file__).parents[1]
PACKAGE = "{{ cookiecutter.package_name }}"
PROJECT = "{{ cookiecutter.project_slug }}"
SUBSCRIPTION = "7c1a7b5e-3f0e-4d8a-9b52-1f5e2d3c4b6a"
GOOD = {
    "AZURE_SUBSCRIPTION_ID": SUBSCRIPTION,
    "AZURE_RESOURCE_GROUP": "rg-llm",
    "AZURE_ML_WORKSPACE": "ws-llm",
    "AZURE_ACR_NAME": "llmregistry",
    "IMAGE_TAG": "v1",
}
ENDPOINT = PROJECT[:32].rstrip("-")
IMAGE = f"llmregistry.azurecr.io/{PROJECT}:v1"


def values(**overrides: str) -> dict[str, str]:
    return azure.settings({**GOOD, **overrides}, project=PROJECT, tag="unused")


def test_the_default_endpoint_name_fits_azures_limit():
    assert values()["AZURE_ENDPOINT_NAME"] == ENDPOINT and 3 <= len(ENDPOINT) <= 32


def script(name: str, **env: str) -> subprocess.CompletedProcess:
    """Run deploy/azure/<name> with only `env` set (no az login, no .env), this interpreter."""
    environment = {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", "/tmp"),
        "PYTHON": sys.executable,
        "PYTHONPATH": str(ROOT / "src"),
        "DEPLOY_ENV_FILE": os.devnull,
        **env,
    }
    command = ["bash", str(ROOT / "deploy" / "azure" / name)]
    return subprocess.run(command, capture_output=True, text=True, env=environment, timeout=120, check=False)


# ---- entities ----------------------------------------------------------------------------------------------


def test_endpoint_and_deployment_round_trip_through_yaml(tmp_path):
    assert azure.write_yaml(values(), tmp_path) == (tmp_path / "endpoint.yml", tmp_path / "deployment.yml")

    endpoint = load_online_endpoint(tmp_path / "endpoint.yml")
    assert endpoint.name == ENDPOINT and endpoint.auth_mode == "key"
    deployment = load_online_deployment(tmp_path / "deployment.yml")
    assert deployment.name == "blue" and deployment.endpoint_name == ENDPOINT
    assert deployment.instance_type == "Standard_DS3_v2" and deployment.instance_count == 1
    assert deployment.scale_settings.type == "default"  # managed deployments: autoscale is Azure Monitor's
    assert deployment.environment.image == IMAGE
    assert deployment.environment_variables == {"LLM_DEVICE": "cpu"}
    assert deployment.request_settings.request_timeout_ms == 90_000
    probe = deployment.readiness_probe
    assert probe.period * probe.failure_threshold >= 300, "minutes to load the model before the deployment fails"

    routes = yaml.safe_load((tmp_path / "deployment.yml").read_text())["environment"]["inference_config"]
    assert routes == {
        "liveness_route": {"path": "/health", "port": 8000},
        "readiness_route": {"path": "/ready", "port": 8000},
        "scoring_route": {"path": "/v1/chat/completions", "port": 8000},
    }


def test_the_routes_azure_calls_exist_on_the_port_the_image_listens_on():
    from {{ cookiecutter.package_name }}.serve.app import create_app

    paths = set(create_app().openapi()["paths"])
    config = azure.build_deployment(values()).environment.inference_config
    assert {route["path"] for route in config.values()} <= paths
    assert {route["port"] for route in config.values()} == {8000}
    assert "EXPOSE 8000" in (ROOT / "Dockerfile").read_text()


class Poller:
    def __init__(self, result=None, error: Exception | None = None):
        self._result, self._error = result, error

    def result(self):
        if self._error:
            raise self._error
        return self._result


# ---- autoscale (Azure Monitor, applied with the az CLI) ---------------------------------------------------


def test_autoscale_commands_cover_the_instance_range_and_cpu_rules():
    group = ["--resource-group", "rg-llm"]
    deployment = (
        f"/subscriptions/{SUBSCRIPTION}/resourceGroups/rg-llm/providers/Microsoft.MachineLearningServices"
        f"/workspaces/ws-llm/onlineEndpoints/{ENDPOINT}/deployments/blue"
    )
    rule = ["az", "monitor", "autoscale", "rule", "create", *group, "--autoscale-name", f"{ENDPOINT}-autoscale"]
    assert azure.autoscale_commands(values(AZURE_MAX_INSTANCES="3", AZURE_SCALE_OUT_CPU="80")) == [
        ["az", "monitor", "autoscale", "create", *group, "--name", f"{ENDPOINT}-autoscale", "--resource", deployment,
         "--min-count", "1", "--max-count", "3", "--count", "1", "--tags", "created-by=deploy/azure"],
        [*rule, "--condition", "CpuUtilizationPercentage > 80 avg 5m", "--scale", "out", "1", "--cooldown", "5"],
        [*rule, "--condition", "CpuUtilizationPercentage < 40 avg 5m", "--scale", "in", "1", "--cooldown", "15"],
    ]  # fmt: skip


def test_scaling_settings_have_safe_defaults_and_are_checked():
    exports = shell_exports(values(), azure.VARIABLES)
    for line in ("AZURE_INSTANCE_COUNT=1", "AZURE_MAX_INSTANCES=2", "AZURE_SCALE_OUT_CPU=70"):
        assert f"export {line}\n" in exports
    with pytest.raises(DeploySettingsError, match="AZURE_INSTANCE_COUNT=3 is above AZURE_MAX_INSTANCES=2"):
        values(AZURE_INSTANCE_COUNT="3")
    with pytest.raises(DeploySettingsError, match="AZURE_SCALE_OUT_CPU='100' must be a percentage from 20 to 99"):
        values(AZURE_SCALE_OUT_CPU="100")


@pytest.mark.parametrize(
    ("listed", "deleted"),
    [
        ([{"name": f"{ENDPOINT}-autoscale", "tags": {"created-by": "deploy/azure"}}], True),
        ([{"name": f"{ENDPOINT}-autoscale", "tags": {"owner": "someone else"}}], False),
        ([{"name": "other-autoscale", "tags": {"created-by": "deploy/azure"}}], False),
        ([], False),
    ],
    ids=["ours", "same-name-not-ours", "another-endpoints", "none"],
)
def test_remove_autoscale_deletes_only_the_setting_deploy_made(listed, deleted):
    ran: list[list[str]] = []

    def run(command: list[str]) -> str:
        ran.append(command)
        return json.dumps(listed) if command[3] == "list" else ""

    assert azure.remove_autoscale(values(), run=run) is deleted
    delete = ["az", "monitor", "autoscale", "delete", "--resource-group", "rg-llm", "--name", f"{ENDPOINT}-autoscale"]
    assert (delete in ran) is deleted and len(ran) == 1 + deleted


class RecordingOperations:
    def __init__(self, log: list, kind: str, missing: bool = False, tags: dict | None = None):
        self.log, self.kind, self.missing, self.tags = log, kind, missing, tags  # tags: those of an existing one

    def begin_create_or_update(self, entity):
        self.log.append((f"{self.kind}.create_or_update", entity.name, dict(getattr(entity, "traffic", None) or {})))
        return Poller(entity)

    def begin_delete(self, name):
        self.log.append((f"{self.kind}.delete", name, {}))
        return Poller(error=ResourceNotFoundError("gone") if self.missing else None)

    def get(self, name):
        self.log.append((f"{self.kind}.get", name, {}))
        if self.missing:
            raise ResourceNotFoundError("no such endpoint")
        endpoint = azure.build_endpoint(values())
        endpoint.tags = self.tags if self.tags is not None else endpoint.tags
        return endpoint


class RecordingMLClient:
    def __init__(self, missing: bool = False, tags: dict | None = None):
        self.log: list = []
        self.online_endpoints = RecordingOperations(self.log, "endpoints", missing, tags)
        self.online_deployments = RecordingOperations(self.log, "deployments", missing)


def test_deploy_creates_the_endpoint_then_the_deployment_then_moves_all_traffic():
    client = RecordingMLClient()
    azure.deploy(client, values())
    assert client.log == [
        ("endpoints.get", ENDPOINT, {}),
        ("endpoints.create_or_update", ENDPOINT, {}),
        ("deployments.create_or_update", "blue", {}),
        ("endpoints.create_or_update", ENDPOINT, {"blue": 100}),
        ("endpoints.get", ENDPOINT, {}),
    ]


def test_delete_removes_the_endpoint_and_is_harmless_when_it_is_gone():
    assert azure.delete(RecordingMLClient(), ENDPOINT) is True
    assert azure.delete(RecordingMLClient(missing=True), ENDPOINT) is False


def test_an_endpoint_that_deploy_did_not_create_is_neither_replaced_nor_deleted():
    """AZURE_ENDPOINT_NAME may name an existing endpoint: its deployment and traffic are not ours to change."""
    client = RecordingMLClient(tags={"owner": "someone else"})
    with pytest.raises(DeploySettingsError, match=f"AZURE_ENDPOINT_NAME={ENDPOINT}: that endpoint exists"):
        azure.deploy(client, values())
    assert azure.delete(client, ENDPOINT) is None
    assert [call for call, _, _ in client.log] == ["endpoints.get", "endpoints.get"], "nothing created or deleted"
    assert azure.build_endpoint(values()).tags == {"created-by": "deploy/azure"}


def test_teardown_of_an_endpoint_that_deploy_did_not_create_exits_kept(monkeypatch):
    from typer.testing import CliRunner

    client = RecordingMLClient(tags={"owner": "someone else"})
    monkeypatch.setattr(azure, "ml_client", lambda values: client)
    for name, value in GOOD.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("DEPLOY_ENV_FILE", os.devnull)
    result = CliRunner().invoke(azure.app, ["down", "--project", PROJECT, "--no-dry-run"])
    assert result.exit_code == azure.KEPT, result.output
    assert f"kept endpoint {ENDPOINT} and the image repository" in result.output
    assert [call for call, _, _ in client.log] == ["endpoints.get"], "nothing deleted"


def stand_in_python(folder: Path, *, down_status: int) -> Path:
    """An interpreter for teardown.sh whose `deploy.azure down` only exits with `down_status`."""
    python = folder / "python"
    script_text = f'if [[ "$3" == down ]]; then exit {down_status}; fi\nexec {sys.executable} "$@"\n'
    python.write_text(f"#!/usr/bin/env bash\n{script_text}")
    python.chmod(0o755)
    return python


def test_teardown_keeps_the_image_repository_when_the_endpoint_was_kept(tmp_path):
    """teardown.sh with `down` answering KEPT and a logging `az` on PATH: no repository deleted."""
    az_log = tmp_path / "az.log"
    (tmp_path / "az").write_text(f'#!/usr/bin/env bash\necho "$*" >> {az_log}\n')
    (tmp_path / "az").chmod(0o755)
    path = f"{tmp_path}{os.pathsep}{os.environ['PATH']}"
    kept = script("teardown.sh", PATH=path, PYTHON=str(stand_in_python(tmp_path, down_status=azure.KEPT)), **GOOD)
    assert kept.returncode == 0, kept.stderr
    assert not az_log.exists(), az_log.read_text()

    deleted = script("teardown.sh", PATH=path, PYTHON=str(stand_in_python(tmp_path, down_status=0)), **GOOD)
    assert deleted.returncode == 0, deleted.stderr
    assert az_log.read_text() == f"acr repository delete --name llmregistry --repository {PROJECT} --yes\n"


# ---- the scripts -------------------------------------------------------------------------------------------


@pytest.fixture
def dry_run_output():
    """build/azure/, where a dry run writes endpoint.yml and deployment.yml: removed after the test unless the
    project had it before (the tests leave a user's project as they found it)."""
    out = ROOT / "build" / "azure"
    made = [folder for folder in (out.parent, out) if not folder.exists()]
    yield out
    if made:
        shutil.rmtree(made[0], ignore_errors=True)


def test_dry_run_prints_the_whole_deploy_in_order(dry_run_output):
    result = script("deploy.sh", DRY_RUN="1", **GOOD)
    assert result.returncode == 0, result.stderr
    assert [line for line in result.stdout.splitlines() if line.startswith("+ ")] == [
        f"+ {sys.executable} -m {PACKAGE}.clouds.bundle --model models:/{PROJECT}@champion --fallback latest "
        "--out build/model",
        f"+ docker build --platform linux/amd64 --target bundled --tag {IMAGE} .",
        "+ az acr login --name llmregistry",
        f"+ docker push {IMAGE}",
        "+ ml_client.online_endpoints.begin_create_or_update(build/azure/endpoint.yml)",
        "+ ml_client.online_deployments.begin_create_or_update(build/azure/deployment.yml)",
        "+ ml_client.online_endpoints.begin_create_or_update(traffic={'blue': 100})",
        *(f"+ {shlex.join(command)}" for command in azure.autoscale_commands(values())),
    ]
    deployment = load_online_deployment(dry_run_output / "deployment.yml")
    assert deployment.environment.image == IMAGE


def test_dry_run_teardown_deletes_the_endpoint_and_the_image_repository():
    result = script("teardown.sh", DRY_RUN="1", **GOOD)
    assert result.returncode == 0, result.stderr
    assert [line for line in result.stdout.splitlines() if line.startswith("+ ")] == [
        f"+ az monitor autoscale delete --resource-group rg-llm --name {ENDPOINT}-autoscale",
        f"+ ml_client.online_endpoints.begin_delete(name={ENDPOINT!r})",
        f"+ az acr repository delete --name llmregistry --repository {PROJECT} --yes",
    ]


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({**GOOD, "AZURE_SUBSCRIPTION_ID": ""}, "AZURE_SUBSCRIPTION_ID is not set"),
        ({**GOOD, "AZURE_SUBSCRIPTION_ID": "00000000-0000-0000-0000-000000000000"}, "is a placeholder"),
        ({**GOOD, "AZURE_ACR_NAME": "REPLACE_ME"}, "AZURE_ACR_NAME='REPLACE_ME' is a placeholder"),
        ({**GOOD, "AZURE_RESOURCE_GROUP": "my group"}, "AZURE_RESOURCE_GROUP='my group' must be a resource group name"),
        ({**GOOD, "AZURE_ACR_NAME": "llmregistry.azurecr.io"}, "must be the registry name"),
    ],
)
def test_missing_or_placeholder_settings_stop_the_script_before_any_command(env, named):
    result = script("deploy.sh", **env)  # not a dry run: it would call az and Azure ML if it got that far
    assert result.returncode == 2
    assert named in result.stderr
    assert result.stdout == ""


# >>> llama_cpp


# ---- make deploy BACKEND=llama.cpp -------------------------------------------------------------------------
LLAMA_CPP = {"DEPLOY_BACKEND": "llama.cpp", "DEPLOY_GGUF_TYPE": "q8_0"}


def test_llama_cpp_dry_run_bundles_the_export_builds_llama_cpp_in_and_the_deployment_sets_the_backend(
    dry_run_output,
):
    result = script("deploy.sh", DRY_RUN="1", **GOOD, **LLAMA_CPP)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("+ ")]
    assert lines[0].endswith(f"--model models:/{PROJECT}@champion --fallback latest --out build/model --gguf q8_0")
    assert lines[1] == f"+ docker build --platform linux/amd64 --target bundled --tag {IMAGE} --build-arg LLAMA_CPP=1 ."
    deployment = load_online_deployment(dry_run_output / "deployment.yml")  # what `up` applies
    assert deployment.environment_variables == {
        "LLM_DEVICE": "cpu",
        "LLM_BACKEND": "llama.cpp",
        "LLM_GGUF_TYPE": "q8_0",
    }


def test_llama_cpp_deploy_of_a_run_without_its_export_stops_before_docker_and_az(deploy_without_export, tmp_path):
    result = script("deploy.sh", **GOOD, **LLAMA_CPP, **deploy_without_export)  # not a dry run
    assert result.returncode == 2, result.stdout + result.stderr
    run = deploy_without_export["MODEL"]
    assert f"{run}/model-q8_0.gguf: no such file" in result.stderr and "make export-gguf" in result.stderr
    assert not (tmp_path / "calls.log").exists() and result.stdout == ""


# <<< llama_cpp
