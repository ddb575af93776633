"""Deploy to AWS: the dry run command by command, the SageMaker + ECR flow end to end against moto (in
memory, no account), teardown leaving nothing, and bad settings stopping everything before it starts."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

boto3 = pytest.importorskip("boto3")
moto = pytest.importorskip("moto")

from {{ cookiecutter.package_name }}.clouds.aws import deploy as aws  # noqa: E402
from {{ cookiecutter.package_name }}.clouds.settings import DeploySettingsError, shell_exports  # noqa: E402

ROOT = Path(__file__).parents[1]
PROJECT = "{{ cookiecutter.project_slug }}"
REGION = "eu-west-1"
ROLE = "arn:aws:iam::111122223333:role/sagemaker-exec"
GOOD = {"AWS_REGION": REGION, "SAGEMAKER_ROLE_ARN": ROLE, "IMAGE_TAG": "v1"}
REGISTRY = f"111122223333.dkr.ecr.{REGION}.amazonaws.com"
IMAGE = f"{REGISTRY}/{PROJECT}:v1"
VARIANT_RESOURCE = {
    "ServiceNamespace": "sagemaker",
    "ResourceId": f"endpoint/{PROJECT}/variant/AllTraffic",
    "ScalableDimension": "sagemaker:variant:DesiredInstanceCount",
}


def script(name: str, **env: str) -> subprocess.CompletedProcess:
    """Run deploy/aws/<name> with only `env` set (no AWS profile, no .env unless DEPLOY_ENV_FILE names one)."""
    environment = {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", "/tmp"),
        "PYTHON": sys.executable,
        "PYTHONPATH": str(ROOT / "src"),
        "DEPLOY_ENV_FILE": os.devnull,
        **env,
    }
    command = ["bash", str(ROOT / "deploy" / "aws" / name)]
    return subprocess.run(command, capture_output=True, text=True, env=environment, timeout=120, check=False)


def steps(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("+ ")]


def call(line: str) -> tuple[str, dict]:
    """`+ sagemaker.create_model({...})` -> ("sagemaker.create_model", {...})."""
    name, arguments = line[2:].split("({", 1)
    return name, json.loads("{" + arguments.removesuffix(")"))


# ---- dry run -----------------------------------------------------------------------------------------------


def test_dry_run_prints_the_whole_deploy_in_order():
    result = script("deploy.sh", DRY_RUN="1", **GOOD)
    assert result.returncode == 0, result.stderr
    lines = steps(result.stdout)
    assert lines[:5] == [
        f"+ {sys.executable} -m {{ cookiecutter.package_name }}.clouds.bundle "
        f"--model models:/{PROJECT}@champion --fallback latest --out build/model",
        f"+ docker build --platform linux/amd64 --target bundled --tag {IMAGE} .",
        "+ ecr.create_repository(" + json.dumps({"repositoryName": PROJECT}) + ")",
        f"+ aws ecr get-login-password --region {REGION} | docker login --username AWS --password-stdin {REGISTRY}",
        f"+ docker push {IMAGE}",
    ]
    [(model_call, model), (config_call, config), (endpoint_call, endpoint), (wait_call, wait), *scaling] = map(
        call, lines[5:]
    )
    assert model_call == "sagemaker.create_model"
    assert model == {
        "ModelName": f"{PROJECT}-v1",
        "ExecutionRoleArn": ROLE,
        "PrimaryContainer": {"Image": IMAGE, "Environment": {"PORT": "8080", "LLM_DEVICE": "cpu"}},
        "Tags": [aws.CREATED_BY],
    }
    assert config_call == "sagemaker.create_endpoint_config"
    [variant] = config["ProductionVariants"]
    assert variant["ModelName"] == f"{PROJECT}-v1" and variant["InstanceType"] == "ml.m5.xlarge"
    assert config["Tags"] == [aws.CREATED_BY]
    assert (endpoint_call, endpoint) == (
        "sagemaker.create_endpoint",
        {"EndpointName": PROJECT, "EndpointConfigName": f"{PROJECT}-v1", "Tags": [aws.CREATED_BY]},
    )
    assert wait_call == "sagemaker.get_waiter('endpoint_in_service').wait" and wait == {"EndpointName": PROJECT}
    assert variant["InitialInstanceCount"] == 1  # SAGEMAKER_MIN_INSTANCES
    assert scaling == [
        ("application-autoscaling.register_scalable_target", {**VARIANT_RESOURCE, "MinCapacity": 1, "MaxCapacity": 2}),
        (
            "application-autoscaling.put_scaling_policy",
            {
                "PolicyName": f"{PROJECT}-invocations",
                **VARIANT_RESOURCE,
                "PolicyType": "TargetTrackingScaling",
                "TargetTrackingScalingPolicyConfiguration": {
                    "TargetValue": 30.0,
                    "PredefinedMetricSpecification": {"PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"},
                    "ScaleOutCooldown": 60,
                    "ScaleInCooldown": 300,
                },
            },
        ),
    ]


def make_deploy(*variables: str) -> subprocess.CompletedProcess:
    """`DRY_RUN=1 make deploy VARIABLES` with GOOD settings, this interpreter's environment as the VENV."""
    return subprocess.run(
        ["make", "--no-print-directory", "deploy", f"VENV={Path(sys.executable).parents[1]}", *variables],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        env={**{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SAGEMAKER_", "DEPLOY_"))}, **GOOD}
        | {"DRY_RUN": "1", "PYTHONPATH": str(ROOT / "src"), "DEPLOY_ENV_FILE": os.devnull},
    )


def test_dry_run_of_make_deploy_prints_the_same_sequence():
    result = make_deploy()
    assert result.returncode == 0, result.stderr
    made, direct = steps(result.stdout), steps(script("deploy.sh", DRY_RUN="1", **GOOD).stdout)
    assert made[0].endswith(direct[0].split(" -m ")[1]) and made[1:] == direct[1:]


def test_dry_run_teardown_names_what_it_deletes():
    result = script("teardown.sh", DRY_RUN="1", **GOOD)
    assert result.returncode == 0, result.stderr
    assert [call(line) for line in steps(result.stdout)] == [
        ("application-autoscaling.delete_scaling_policy", {"PolicyName": f"{PROJECT}-invocations", **VARIANT_RESOURCE}),
        ("application-autoscaling.deregister_scalable_target", VARIANT_RESOURCE),
        ("sagemaker.delete_endpoint", {"EndpointName": PROJECT}),
        ("ecr.delete_repository", {"force": True, "repositoryName": PROJECT}),
    ]


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"SAGEMAKER_ROLE_ARN": ROLE}, "AWS_REGION is not set"),
        ({"AWS_REGION": REGION}, "SAGEMAKER_ROLE_ARN is not set"),
        ({**GOOD, "SAGEMAKER_ROLE_ARN": "arn:aws:iam::<account-id>:role/REPLACE_ME"}, "SAGEMAKER_ROLE_ARN="),
        ({**GOOD, "AWS_REGION": "Ireland"}, "AWS_REGION='Ireland' must be an AWS region name"),
    ],
)
def test_missing_or_placeholder_settings_stop_the_script_before_any_step(env, named):
    result = script("deploy.sh", **env)  # not a dry run: it would create things if it got that far
    assert result.returncode == 2
    assert named in result.stderr
    assert "nothing was created" in result.stderr
    assert steps(result.stdout) == [] and "docker" not in result.stdout + result.stderr


def test_the_example_env_file_is_refused_until_filled_in():
    result = script("deploy.sh", DEPLOY_ENV_FILE=str(ROOT / ".env.example"))
    assert result.returncode == 2
    assert "AWS_REGION is not set" in result.stderr
    assert "SAGEMAKER_ROLE_ARN='arn:aws:iam::<account-id>:role/REPLACE_ME' is a placeholder" in result.stderr


# ---- the flow against moto ---------------------------------------------------------------------------------


@pytest.fixture
def clients(monkeypatch):
    """ECR and SageMaker clients on moto's in-memory AWS; nothing leaves the process."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.setenv(name, "testing")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    with moto.mock_aws():
        yield boto3.client("ecr", region_name=REGION), boto3.client("sagemaker", region_name=REGION)


@pytest.fixture
def autoscaling(clients):
    """Application Auto Scaling on the same in-memory AWS."""
    return boto3.client("application-autoscaling", region_name=REGION)


def scaling_state(autoscaling) -> tuple[list, list]:
    """(scalable targets, scaling policies) of SageMaker in the region."""
    targets = autoscaling.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"]
    policies = autoscaling.describe_scaling_policies(ServiceNamespace="sagemaker")["ScalingPolicies"]
    return targets, policies


def push(ecr, repository: str, tag: str) -> None:
    """What `docker push` leaves in ECR: an image manifest under the tag."""
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {
            "mediaType": "application/vnd.docker.container.image.v1+json",
            "size": 7,
            "digest": "sha256:" + "a" * 64,
        },
        "layers": [],
    }
    ecr.put_image(repositoryName=repository, imageManifest=json.dumps(manifest), imageTag=tag)


def leftovers(ecr, sagemaker) -> dict[str, list]:
    return {
        "endpoints": sagemaker.list_endpoints()["Endpoints"],
        "endpoint_configs": sagemaker.list_endpoint_configs()["EndpointConfigs"],
        "models": sagemaker.list_models()["Models"],
        "repositories": ecr.describe_repositories()["repositories"],
    }


def test_deploy_reaches_in_service_scales_and_teardown_leaves_nothing(clients, autoscaling):
    ecr, sagemaker = clients
    values = aws.settings(GOOD, project=PROJECT)
    uri = aws.ensure_repository(ecr, values["ECR_REPOSITORY"])
    assert uri.endswith(f".dkr.ecr.{REGION}.amazonaws.com/{PROJECT}")
    assert aws.ensure_repository(ecr, values["ECR_REPOSITORY"]) == uri, "a second deploy reuses the repository"
    push(ecr, values["ECR_REPOSITORY"], values["IMAGE_TAG"])

    endpoint = aws.deploy_endpoint(sagemaker, values, autoscaling=autoscaling, delay_s=0, max_attempts=3)

    assert endpoint["EndpointStatus"] == "InService"
    [target], [policy] = scaling_state(autoscaling)
    assert target["ResourceId"] == VARIANT_RESOURCE["ResourceId"]
    assert (target["MinCapacity"], target["MaxCapacity"]) == (1, 2)
    assert policy["PolicyName"] == f"{PROJECT}-invocations" and policy["PolicyType"] == "TargetTrackingScaling"
    tracking = policy["TargetTrackingScalingPolicyConfiguration"]
    assert tracking["TargetValue"] == 30.0
    assert tracking["PredefinedMetricSpecification"]["PredefinedMetricType"] == "SageMakerVariantInvocationsPerInstance"
    assert endpoint["EndpointConfigName"] == f"{PROJECT}-v1"
    model = sagemaker.describe_model(ModelName=f"{PROJECT}-v1")
    assert model["PrimaryContainer"]["Image"] == IMAGE and model["ExecutionRoleArn"] == ROLE
    assert model["PrimaryContainer"]["Environment"]["PORT"] == "8080"
    config = sagemaker.describe_endpoint_config(EndpointConfigName=f"{PROJECT}-v1")
    assert config["ProductionVariants"][0]["InstanceType"] == "ml.m5.xlarge"

    deleted = aws.delete_endpoint(sagemaker, PROJECT, autoscaling=autoscaling, delay_s=0, max_attempts=3)
    assert aws.delete_repository(ecr, PROJECT)
    assert deleted == [
        f"scaling-policy:{PROJECT}-invocations",
        f"scalable-target:{VARIANT_RESOURCE['ResourceId']}",
        f"endpoint:{PROJECT}",
        f"endpoint-config:{PROJECT}-v1",
        f"model:{PROJECT}-v1",
    ]
    assert leftovers(ecr, sagemaker) == {"endpoints": [], "endpoint_configs": [], "models": [], "repositories": []}
    assert scaling_state(autoscaling) == ([], [])
    again = aws.delete_endpoint(sagemaker, PROJECT, autoscaling=autoscaling, delay_s=0, max_attempts=3)
    assert again == [], "teardown twice is harmless"
    assert not aws.delete_repository(ecr, PROJECT)


def test_teardown_keeps_a_repository_that_deploy_did_not_create(clients):
    """ECR_REPOSITORY may name a repository that existed before the first deploy: its images are not ours."""
    ecr, _ = clients
    ecr.create_repository(repositoryName="shared")
    push(ecr, "shared", "v0")
    assert aws.ensure_repository(ecr, "shared").endswith("/shared"), "deploy pushes to it as it is"
    assert aws.delete_repository(ecr, "shared") is None
    assert [image["imageTags"] for image in ecr.describe_images(repositoryName="shared")["imageDetails"]] == [["v0"]]


def test_teardown_keeps_other_endpoints_resources(clients):
    _, sagemaker = clients
    for name, tag in ((PROJECT, "v1"), (f"{PROJECT}-test", "v1")):
        values = aws.settings({**GOOD, "SAGEMAKER_ENDPOINT_NAME": name, "IMAGE_TAG": tag}, project=PROJECT)
        aws.deploy_endpoint(sagemaker, values, delay_s=0, max_attempts=3)
    aws.delete_endpoint(sagemaker, PROJECT, delay_s=0, max_attempts=3)
    assert [e["EndpointName"] for e in sagemaker.list_endpoints()["Endpoints"]] == [f"{PROJECT}-test"]
    assert [m["ModelName"] for m in sagemaker.list_models()["Models"]] == [f"{PROJECT}-test-v1"]


def test_bad_settings_create_nothing(clients, monkeypatch):
    """The CLI (what deploy.sh runs) exits 2 naming the variable; moto then holds no resource at all."""
    from typer.testing import CliRunner

    ecr, sagemaker = clients
    for name in ("AWS_REGION", "SAGEMAKER_ROLE_ARN", "IMAGE_TAG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DEPLOY_ENV_FILE", os.devnull)
    monkeypatch.setenv("SAGEMAKER_ROLE_ARN", "REPLACE_ME")
    for command in (["repository"], ["up"]):
        result = CliRunner().invoke(aws.app, [*command, "--project", PROJECT])
        assert result.exit_code == 2
        assert "AWS_REGION is not set" in result.output and "SAGEMAKER_ROLE_ARN='REPLACE_ME'" in result.output
    assert leftovers(ecr, sagemaker) == {"endpoints": [], "endpoint_configs": [], "models": [], "repositories": []}


def test_an_endpoint_that_deploy_did_not_create_is_neither_taken_over_nor_deleted(clients):
    """SAGEMAKER_ENDPOINT_NAME may name an endpoint serving something else: deploy refuses before creating
    anything, teardown keeps it with its config and model (all untagged)."""
    _, sagemaker = clients
    sagemaker.create_model(ModelName=f"{PROJECT}-prod", ExecutionRoleArn=ROLE, PrimaryContainer={"Image": IMAGE})
    variant = {"VariantName": "AllTraffic", "ModelName": f"{PROJECT}-prod", "InstanceType": "ml.m5.xlarge"}
    sagemaker.create_endpoint_config(
        EndpointConfigName=f"{PROJECT}-prod", ProductionVariants=[{**variant, "InitialInstanceCount": 1}]
    )
    sagemaker.create_endpoint(EndpointName=PROJECT, EndpointConfigName=f"{PROJECT}-prod")
    before = leftovers(*clients)

    with pytest.raises(DeploySettingsError, match=f"SAGEMAKER_ENDPOINT_NAME={PROJECT}: that endpoint exists"):
        aws.deploy_endpoint(sagemaker, aws.settings(GOOD, project=PROJECT), delay_s=0, max_attempts=3)
    assert aws.delete_endpoint(sagemaker, PROJECT, delay_s=0, max_attempts=3) == []
    assert leftovers(*clients) == before, "nothing created, nothing deleted"
    assert sagemaker.describe_endpoint(EndpointName=PROJECT)["EndpointConfigName"] == f"{PROJECT}-prod"


class RecordingSageMaker:
    """An endpoint that already exists (moto has no update_endpoint): records the calls made."""

    class Waiter:
        def wait(self, **kwargs):
            pass

    def __init__(self):
        self.calls = []
        self.arguments = {}

    def __getattr__(self, operation):
        def record(**kwargs):
            self.calls.append(operation)
            self.arguments[operation] = kwargs
            arn = f"arn:aws:sagemaker:{REGION}:123456789012:endpoint/{PROJECT}"
            # An endpoint an earlier deploy made: it carries deploy's tag.
            return {
                "EndpointName": PROJECT,
                "EndpointArn": arn,
                "EndpointStatus": "InService",
                "Tags": [aws.CREATED_BY],
            }

        return record

    def get_waiter(self, name):
        self.calls.append(f"wait:{name}")
        return self.Waiter()


def test_a_second_deploy_switches_the_existing_endpoint_to_the_new_config():
    sagemaker = RecordingSageMaker()
    aws.deploy_endpoint(sagemaker, aws.settings({**GOOD, "IMAGE_TAG": "v2"}, project=PROJECT))
    assert sagemaker.calls == [
        "describe_endpoint",
        "list_tags",
        "create_model",
        "create_endpoint_config",
        "update_endpoint",
        "wait:endpoint_in_service",
        "describe_endpoint",
    ]
    assert sagemaker.arguments["update_endpoint"] == {"EndpointName": PROJECT, "EndpointConfigName": f"{PROJECT}-v2"}


class RecordingAutoscaling:
    """Application Auto Scaling with deploy's target and policy registered: records the calls made."""

    def __init__(self):
        self.calls = []

    def describe_scaling_policies(self, **kwargs):
        return {"ScalingPolicies": [{"PolicyName": f"{PROJECT}-invocations"}]}

    def describe_scalable_targets(self, **kwargs):
        return {"ScalableTargets": [{"ResourceId": VARIANT_RESOURCE["ResourceId"]}]}

    def __getattr__(self, operation):
        return lambda **kwargs: self.calls.append(operation)


def test_a_second_deploy_detaches_scaling_for_the_update_and_attaches_it_again():
    sagemaker, autoscaling = RecordingSageMaker(), RecordingAutoscaling()
    aws.deploy_endpoint(sagemaker, aws.settings({**GOOD, "IMAGE_TAG": "v2"}, project=PROJECT), autoscaling=autoscaling)
    assert autoscaling.calls == [
        "delete_scaling_policy",
        "deregister_scalable_target",
        "register_scalable_target",
        "put_scaling_policy",
    ]
    assert sagemaker.calls[-3:] == ["update_endpoint", "wait:endpoint_in_service", "describe_endpoint"]


def test_scaling_settings_have_safe_defaults_and_min_above_max_is_refused():
    values = aws.settings(GOOD, project=PROJECT)
    exports = shell_exports(values, aws.VARIABLES)
    for line in ("SAGEMAKER_MIN_INSTANCES=1", "SAGEMAKER_MAX_INSTANCES=2", "SAGEMAKER_TARGET_INVOCATIONS=30"):
        assert f"export {line}\n" in exports
    with pytest.raises(DeploySettingsError, match="SAGEMAKER_MIN_INSTANCES=3 is above SAGEMAKER_MAX_INSTANCES=2"):
        aws.settings({**GOOD, "SAGEMAKER_MIN_INSTANCES": "3"}, project=PROJECT)
    with pytest.raises(DeploySettingsError, match="SAGEMAKER_MAX_INSTANCES='0' must be a whole number"):
        aws.settings({**GOOD, "SAGEMAKER_MAX_INSTANCES": "0"}, project=PROJECT)


def test_names_too_long_for_sagemaker_are_refused():
    with pytest.raises(DeploySettingsError, match="SAGEMAKER_ENDPOINT_NAME="):
        aws.settings({**GOOD, "SAGEMAKER_ENDPOINT_NAME": "e" * 48}, project=PROJECT)


# >>> llama_cpp


# ---- make deploy BACKEND=llama.cpp -------------------------------------------------------------------------
LLAMA_CPP = {"DEPLOY_BACKEND": "llama.cpp", "DEPLOY_GGUF_TYPE": "q8_0"}


def test_llama_cpp_dry_run_bundles_the_export_builds_llama_cpp_in_and_sets_the_backend():
    result = script("deploy.sh", DRY_RUN="1", **GOOD, **LLAMA_CPP)
    assert result.returncode == 0, result.stderr
    lines = steps(result.stdout)
    assert lines[0].endswith(f"--model models:/{PROJECT}@champion --fallback latest --out build/model --gguf q8_0")
    assert lines[1] == f"+ docker build --platform linux/amd64 --target bundled --tag {IMAGE} --build-arg LLAMA_CPP=1 ."
    model_call, model = call(lines[5])
    assert model_call == "sagemaker.create_model"
    assert model["PrimaryContainer"]["Environment"] == {
        "PORT": "8080",
        "LLM_DEVICE": "cpu",
        "LLM_BACKEND": "llama.cpp",
        "LLM_GGUF_TYPE": "q8_0",
    }
    made = make_deploy("BACKEND=llama.cpp", "TYPE=q8_0")  # the Makefile hands both on
    assert made.returncode == 0, made.stderr
    assert steps(made.stdout)[1:] == lines[1:] and steps(made.stdout)[0].endswith("--gguf q8_0")
    for bad, named in [("DEPLOY_BACKEND", "vllm"), ("DEPLOY_GGUF_TYPE", "q2_k")]:
        with pytest.raises(DeploySettingsError, match=f"{bad}='{named}' must be"):
            aws.settings({**GOOD, bad: named}, project=PROJECT)


def test_llama_cpp_deploy_of_a_run_without_its_export_stops_before_docker_and_aws(deploy_without_export, tmp_path):
    result = script("deploy.sh", **GOOD, **LLAMA_CPP, **deploy_without_export)  # not a dry run
    assert result.returncode == 2, result.stdout + result.stderr
    run = deploy_without_export["MODEL"]
    assert f"{run}/model-q8_0.gguf: no such file" in result.stderr
    assert f"make export-gguf RUN={run} TYPE=q8_0" in result.stderr
    assert not (tmp_path / "calls.log").exists() and steps(result.stdout) == []


# <<< llama_cpp
