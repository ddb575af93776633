"""Deploy to Google Cloud Run: the rendered Knative manifest checked field by field, the dry run command by
command, and bad settings stopping the script before any command."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from {{ cookiecutter.package_name }}.clouds.gcp import deploy as gcp
from {{ cookiecutter.package_name }}.clouds.settings import DeploySettingsError, shell_exports

ROOT = Path(__file__).parents[1]
PACKAGE = "{{ cookiecutter.package_name }}"
PROJECT = "{{ cookiecutter.project_slug }}"
GOOD = {"GCP_PROJECT_ID": "shop-demo-123", "GCP_REGION": "europe-west1", "IMAGE_TAG": "v1"}
IMAGE = f"europe-west1-docker.pkg.dev/shop-demo-123/{PROJECT}/{PROJECT}:v1"
WHERE = "--region europe-west1 --project shop-demo-123"


def script(name: str, **env: str) -> subprocess.CompletedProcess:
    """Run deploy/gcp/<name> with only `env` set (no gcloud config, no .env), this interpreter."""
    environment = {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", "/tmp"),
        "PYTHON": sys.executable,
        "PYTHONPATH": str(ROOT / "src"),
        "DEPLOY_ENV_FILE": os.devnull,
        **env,
    }
    command = ["bash", str(ROOT / "deploy" / "gcp" / name)]
    return subprocess.run(command, capture_output=True, text=True, env=environment, timeout=120, check=False)


def steps(output: str) -> list[str]:
    return [line[2:] for line in output.splitlines() if line.startswith("+ ")]


# ---- the manifest ------------------------------------------------------------------------------------------


def test_manifest_is_a_knative_service_with_image_port_resources_scaling_and_probes(tmp_path):
    values = gcp.settings({**GOOD, "CLOUD_RUN_MAX_INSTANCES": "3"}, project=PROJECT, tag="unused")
    manifest = yaml.safe_load(gcp.write_manifest(values, tmp_path / "service.yaml").read_text())

    assert manifest["apiVersion"] == "serving.knative.dev/v1" and manifest["kind"] == "Service"
    assert manifest["metadata"]["name"] == PROJECT
    assert manifest["metadata"]["labels"]["cloud.googleapis.com/location"] == "europe-west1"
    template = manifest["spec"]["template"]
    annotations = template["metadata"]["annotations"]
    assert annotations["autoscaling.knative.dev/minScale"] == "0"  # scale to zero: nothing billed when idle
    assert annotations["autoscaling.knative.dev/maxScale"] == "3"
    assert all(isinstance(value, str) for value in annotations.values()), "Kubernetes annotations are strings"
    [container] = template["spec"]["containers"]
    assert container["image"] == IMAGE
    assert container["ports"] == [{"name": "http1", "containerPort": 8080}]
    assert container["resources"]["limits"] == {"cpu": "2", "memory": "4Gi"}
    assert {"name": "PORT"} not in [{"name": e["name"]} for e in container["env"]], "Cloud Run sets PORT itself"
    startup, liveness = container["startupProbe"], container["livenessProbe"]
    assert startup["httpGet"] == {"path": "/ready", "port": 8080}  # traffic only once the model is loaded
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 240, "a few minutes to load the model"
    assert liveness["httpGet"] == {"path": "/health", "port": 8080}
    assert template["spec"]["containerConcurrency"] == 8  # CLOUD_RUN_CONCURRENCY: the server's batch size
    assert template["spec"]["timeoutSeconds"] <= 3600
    assert manifest["spec"]["traffic"] == [{"percent": 100, "latestRevision": True}]


def test_concurrency_setting_reaches_the_manifest_and_bad_values_are_refused():
    values = gcp.settings({**GOOD, "CLOUD_RUN_CONCURRENCY": "16"}, project=PROJECT, tag="x")
    assert gcp.service_manifest(values)["spec"]["template"]["spec"]["containerConcurrency"] == 16
    assert "export CLOUD_RUN_CONCURRENCY=16\n" in shell_exports(values, gcp.VARIABLES)
    with pytest.raises(DeploySettingsError, match="CLOUD_RUN_CONCURRENCY='0' must be a whole number from 1 to 999"):
        gcp.settings({**GOOD, "CLOUD_RUN_CONCURRENCY": "0"}, project=PROJECT, tag="x")


def test_manifest_probes_are_routes_the_server_has():
    from {{ cookiecutter.package_name }}.serve.app import create_app

    paths = set(create_app().openapi()["paths"])
    [container] = gcp.service_manifest(gcp.settings(GOOD, project=PROJECT, tag="x"))["spec"]["template"]["spec"][
        "containers"
    ]
    assert {container["startupProbe"]["httpGet"]["path"], container["livenessProbe"]["httpGet"]["path"]} <= paths


def test_more_minimum_than_maximum_instances_is_refused():
    env = {**GOOD, "CLOUD_RUN_MIN_INSTANCES": "3", "CLOUD_RUN_MAX_INSTANCES": "1"}
    with pytest.raises(DeploySettingsError, match="CLOUD_RUN_MIN_INSTANCES=3 is above CLOUD_RUN_MAX_INSTANCES=1"):
        gcp.settings(env, project=PROJECT, tag="x")


# ---- the scripts -------------------------------------------------------------------------------------------


def test_dry_run_prints_the_whole_deploy_in_order():
    result = script("deploy.sh", DRY_RUN="1", **GOOD)
    assert result.returncode == 0, result.stderr
    assert steps(result.stdout) == [
        f"{sys.executable} -m {PACKAGE}.clouds.bundle --model models:/{PROJECT}@champion --fallback latest "
        "--out build/model",
        f"docker build --platform linux/amd64 --target bundled --tag {IMAGE} .",
        f"gcloud artifacts repositories create {PROJECT} --repository-format docker --location europe-west1 "
        "--project shop-demo-123 --labels created-by=deploy-gcp",
        "gcloud auth configure-docker europe-west1-docker.pkg.dev --quiet",
        f"docker push {IMAGE}",
        f"{sys.executable} -m {PACKAGE}.clouds.gcp.deploy manifest --project {PROJECT} --out build/service.yaml",
        f"gcloud run services replace build/service.yaml {WHERE}",
        f"gcloud run services describe {PROJECT} {WHERE} --format value(status.url)",
    ]


def test_dry_run_opens_the_service_to_everyone_only_when_asked():
    result = script("deploy.sh", DRY_RUN="1", CLOUD_RUN_ALLOW_UNAUTHENTICATED="true", **GOOD)
    binding = f"gcloud run services add-iam-policy-binding {PROJECT} --member allUsers --role roles/run.invoker"
    assert f"{binding} {WHERE}" in steps(result.stdout)
    assert not any("allUsers" in step for step in steps(script("deploy.sh", DRY_RUN="1", **GOOD).stdout))


def test_dry_run_teardown_deletes_service_and_repository():
    result = script("teardown.sh", DRY_RUN="1", **GOOD)
    assert result.returncode == 0, result.stderr
    assert steps(result.stdout) == [
        f"gcloud run services delete {PROJECT} {WHERE} --quiet",
        f"gcloud artifacts repositories delete {PROJECT} --location europe-west1 --project shop-demo-123 --quiet",
    ]


def fake_gcloud(tmp_path: Path, label: str) -> tuple[str, Path]:
    """A `gcloud` on PATH that logs its arguments and describes the repository with `label` as created-by."""
    log = tmp_path / "gcloud.log"
    gcloud = tmp_path / "gcloud"
    lines = ["#!/bin/sh", f'echo "$*" >> {log}', f'case "$*" in *"repositories describe"*) echo "{label}";; esac']
    gcloud.write_text("\n".join(lines) + "\n", encoding="utf-8")
    gcloud.chmod(0o755)
    return f"{tmp_path}{os.pathsep}{os.environ['PATH']}", log


@pytest.mark.parametrize(("label", "deleted"), [("deploy-gcp", True), ("", False)])
def test_teardown_deletes_the_repository_only_when_deploy_created_it(tmp_path, label, deleted):
    """GAR_REPOSITORY may name a repository that existed before the first deploy: its images are not ours."""
    path, log = fake_gcloud(tmp_path, label)
    result = script("teardown.sh", PATH=path, **GOOD)
    assert result.returncode == 0, result.stderr
    calls = log.read_text(encoding="utf-8").splitlines()
    assert f"run services delete {PROJECT} {WHERE} --quiet" in calls
    assert any(call.startswith("artifacts repositories delete") for call in calls) is deleted
    assert ("kept Artifact Registry repository" in result.stdout) is not deleted


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"GCP_PROJECT_ID": "shop-demo-123"}, "GCP_REGION is not set"),
        ({**GOOD, "GCP_PROJECT_ID": "your-project-id"}, "GCP_PROJECT_ID='your-project-id' is a placeholder"),
        ({**GOOD, "CLOUD_RUN_MEMORY": "lots"}, "CLOUD_RUN_MEMORY='lots' must be a size"),
        ({**GOOD, "CLOUD_RUN_MIN_INSTANCES": "5"}, "CLOUD_RUN_MIN_INSTANCES=5 is above CLOUD_RUN_MAX_INSTANCES=2"),
    ],
)
@pytest.mark.parametrize("name", ["deploy.sh", "teardown.sh"])
def test_missing_or_placeholder_settings_stop_the_script_before_any_command(name, env, named):
    result = script(name, **env)  # not a dry run: it would run gcloud if it got that far
    assert result.returncode == 2
    assert named in result.stderr
    assert steps(result.stdout) == [] and result.stdout == ""


# >>> llama_cpp


# ---- make deploy BACKEND=llama.cpp -------------------------------------------------------------------------
LLAMA_CPP = {"DEPLOY_BACKEND": "llama.cpp", "DEPLOY_GGUF_TYPE": "q8_0"}


def test_llama_cpp_dry_run_bundles_the_export_builds_llama_cpp_in_and_the_service_sets_the_backend():
    result = script("deploy.sh", DRY_RUN="1", **GOOD, **LLAMA_CPP)
    assert result.returncode == 0, result.stderr
    lines = steps(result.stdout)
    assert lines[0].endswith(f"--model models:/{PROJECT}@champion --fallback latest --out build/model --gguf q8_0")
    assert lines[1] == f"docker build --platform linux/amd64 --target bundled --tag {IMAGE} --build-arg LLAMA_CPP=1 ."
    values = gcp.settings({**GOOD, **LLAMA_CPP}, project=PROJECT, tag="x")
    [container] = gcp.service_manifest(values)["spec"]["template"]["spec"]["containers"]
    assert container["env"] == [
        {"name": "LLM_DEVICE", "value": "cpu"},
        {"name": "LLM_BACKEND", "value": "llama.cpp"},
        {"name": "LLM_GGUF_TYPE", "value": "q8_0"},
    ]
    [container] = gcp.service_manifest(gcp.settings(GOOD, project=PROJECT, tag="x"))["spec"]["template"]["spec"][
        "containers"
    ]
    assert container["env"] == [{"name": "LLM_DEVICE", "value": "cpu"}], "transformers: the image's own default"


def test_llama_cpp_deploy_of_a_run_without_its_export_stops_before_docker_and_gcloud(deploy_without_export, tmp_path):
    result = script("deploy.sh", **GOOD, **LLAMA_CPP, **deploy_without_export)  # not a dry run
    assert result.returncode == 2, result.stdout + result.stderr
    run = deploy_without_export["MODEL"]
    assert f"{run}/model-q8_0.gguf: no such file" in result.stderr and "make export-gguf" in result.stderr
    assert not (tmp_path / "calls.log").exists() and steps(result.stdout) == []


# <<< llama_cpp
