"""Cloud training on AWS: `cloud train` against moto (S3 + SageMaker in memory, no account): settings
refused before anything starts, the cost cap refusing with nothing created, the dry run's full sequence,
the upload and the training job (spot, time cap, checkpoints) end to end, status, download and cancel."""

import io
import json
import os
import tarfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

boto3 = pytest.importorskip("boto3")
moto = pytest.importorskip("moto")

from {{ cookiecutter.package_name }}.cli import app  # noqa: E402
from {{ cookiecutter.package_name }}.clouds.aws import training as aws  # noqa: E402
from {{ cookiecutter.package_name }}.clouds.jobs.job import (  # noqa: E402
    PRICES,
    EntrypointOptions,
    job_spec,
    train_command,
)
from {{ cookiecutter.package_name }}.clouds.jobs.staging import stage_inputs  # noqa: E402
from {{ cookiecutter.package_name }}.clouds.settings import DeploySettingsError  # noqa: E402
from {{ cookiecutter.package_name }}.config import dump_config  # noqa: E402

ROOT = Path(__file__).parents[1]
PROJECT = "{{ cookiecutter.project_slug }}"
REGION = "eu-west-1"
ROLE = "arn:aws:iam::111122223333:role/sagemaker-exec"
BUCKET = "my-training-bucket"
GOOD = {"AWS_REGION": REGION, "SAGEMAKER_ROLE_ARN": ROLE, "CLOUD_BUCKET": BUCKET}


@pytest.fixture
def aws_env(monkeypatch):
    """Fake credentials, no .env, no profile: moto answers every call."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.setenv(name, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("DEPLOY_ENV_FILE", os.devnull)
    for name in ("AWS_REGION", "SAGEMAKER_ROLE_ARN", "CLOUD_BUCKET", "DRY_RUN", "CLOUD_MAX_COST_USD", "CLOUD_SPOT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(ROOT)  # staging archives the project from where the command runs


@pytest.fixture
def config_file(tmp_path, smoke_config) -> Path:
    path = tmp_path / "gpu.yaml"
    dump_config(smoke_config("train.run_name=gpu-test"), path)
    return path


def cloud_train(config_file: Path, **env: str):
    return CliRunner().invoke(app, ["cloud", "train", "--config", str(config_file)], env=env)


def nothing_created() -> None:
    assert boto3.client("s3", region_name=REGION).list_buckets()["Buckets"] == []
    assert boto3.client("sagemaker", region_name=REGION).list_training_jobs()["TrainingJobSummaries"] == []


def test_missing_settings_are_named_together_and_exit_2(aws_env, config_file):
    with moto.mock_aws():
        result = cloud_train(config_file)
        nothing_created()
    assert result.exit_code == 2
    for name in ("AWS_REGION is not set", "SAGEMAKER_ROLE_ARN is not set", "CLOUD_BUCKET is not set"):
        assert name in result.output
    assert "nothing was created" in result.output


def test_a_cost_above_the_cap_is_refused_before_anything_is_created(aws_env, config_file):
    with moto.mock_aws():
        result = cloud_train(config_file, **GOOD, CLOUD_MAX_COST_USD="1", CLOUD_MAX_RUNTIME_H="2")
        nothing_created()
    assert result.exit_code == 2
    price = PRICES["aws"]["ml.g5.xlarge"]
    assert f"price: {price.describe()}" in result.output
    assert f"worst case: {2 * price.usd_per_hour:.2f} USD (2 h cap)" in result.output
    assert "is above CLOUD_MAX_COST_USD=1" in result.output
    assert not (ROOT / "outputs" / "cloud-jobs" / "gpu-test.json").exists()


def test_dry_run_prints_the_whole_sequence_and_creates_nothing(aws_env, config_file):
    with moto.mock_aws():
        result = cloud_train(config_file, **GOOD, DRY_RUN="1")
        nothing_created()
    assert result.exit_code == 0, result.output
    calls = [line for line in result.output.splitlines() if line.startswith("+ ")]
    bucket = json.dumps({"Bucket": BUCKET, "CreateBucketConfiguration": {"LocationConstraint": REGION}}, sort_keys=True)
    assert calls[0] == f"+ s3.create_bucket({bucket})"
    uploads = [json.loads(line.split("(", 1)[1][:-1]) for line in calls if line.startswith("+ s3.upload_file(")]
    keys = [upload["Key"] for upload in uploads]
    assert f"{PROJECT}/gpu-test/input/run.sh" in keys and f"{PROJECT}/gpu-test/input/project.tar.gz" in keys
    assert f"{PROJECT}/gpu-test/input/data/shop_extraction/train.jsonl" in keys
    [create] = [line for line in calls if line.startswith("+ sagemaker.create_training_job(")]
    job = json.loads(create.split("(", 1)[1][:-1])
    assert job["EnableManagedSpotTraining"] is True
    assert job["StoppingCondition"] == {"MaxRuntimeInSeconds": 3600, "MaxWaitTimeInSeconds": 7200}
    assert job["CheckpointConfig"] == {
        "S3Uri": f"s3://{BUCKET}/{PROJECT}/gpu-test/checkpoints/",
        "LocalPath": "/opt/ml/checkpoints",
    }
    assert job["ResourceConfig"]["InstanceType"] == "ml.g5.xlarge"
    assert calls[-2].startswith("+ wait: aws status every") and calls[-1].startswith("+ fetch: aws download")
    assert "worst case: 1.41 USD (1 h cap), cost cap: 5.00 USD" in result.output


def test_on_demand_has_no_spot_and_no_wait_time(tmp_path):
    values = aws.settings({**GOOD, "CLOUD_SPOT": "false"}, project=PROJECT)
    spec = job_spec(values, target="aws", project=PROJECT, run_name="r", config_name="gpu", staging=tmp_path)
    [(_, _, job)] = [call for call in aws.job_calls(spec, values) if call[1] == "create_training_job"]
    assert job["EnableManagedSpotTraining"] is False
    assert job["StoppingCondition"] == {"MaxRuntimeInSeconds": 3600}


@pytest.fixture
def staged(tmp_path, smoke_config):
    config = smoke_config("train.run_name=gpu-moto")
    return stage_inputs(config, Path("configs/gpu.yaml"), [], tmp_path / "staging", project_root=ROOT)


def test_submit_status_download_end_to_end(aws_env, staged, tmp_path):
    values = aws.settings(GOOD, project=PROJECT)
    spec = job_spec(values, target="aws", project=PROJECT, run_name="gpu-moto", config_name="gpu", staging=staged)
    assert spec.region == REGION  # read from AWS_REGION
    with moto.mock_aws():
        job_id = aws.submit(spec, values)
        s3, sagemaker = boto3.client("s3", region_name=REGION), boto3.client("sagemaker", region_name=REGION)
        keys = sorted(item["Key"] for item in s3.list_objects_v2(Bucket=BUCKET)["Contents"])
        staged_files = sorted(str(p.relative_to(staged)) for p in staged.rglob("*") if p.is_file())
        assert keys == [f"{PROJECT}/gpu-moto/input/{name}" for name in staged_files]
        assert {"Key": "created-by", "Value": "cloud/aws"} in s3.get_bucket_tagging(Bucket=BUCKET)["TagSet"]
        job = sagemaker.describe_training_job(TrainingJobName=job_id)
        assert job["EnableManagedSpotTraining"] is True
        assert job["StoppingCondition"] == {"MaxRuntimeInSeconds": 3600, "MaxWaitTimeInSeconds": 7200}
        assert job["CheckpointConfig"]["S3Uri"] == f"s3://{BUCKET}/{PROJECT}/gpu-moto/checkpoints/"
        assert job["AlgorithmSpecification"]["ContainerEntrypoint"] == ["bash", "/opt/ml/input/data/job/run.sh"]
        options = EntrypointOptions(output="/opt/ml/model", checkpoints="/opt/ml/checkpoints", config_name="gpu")
        assert job["AlgorithmSpecification"]["ContainerArguments"] == train_command("config.yaml", [], options)
        assert job["AlgorithmSpecification"]["TrainingImage"].startswith(f"763104351884.dkr.ecr.{REGION}.")
        status = aws.status(job_id, values)
        assert (status.state, status.instance_type, status.region) == ("completed", "ml.g5.xlarge", REGION)
        # What the entrypoint leaves in /opt/ml/model, as SageMaker uploads it: model.tar.gz under the output path.
        artifact = job["ModelArtifacts"]["S3ModelArtifacts"]
        assert artifact.startswith(f"s3://{BUCKET}/{PROJECT}/gpu-moto/output/")
        s3.put_object(Bucket=BUCKET, Key=artifact.split("/", 3)[3], Body=_model_tar({"job.json": b'{"run_name": "x"}'}))
        folder = aws.download(job_id, values, tmp_path / "fetched")
        assert json.loads((folder / "job.json").read_text()) == {"run_name": "x"}


def _model_tar(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_cancel_refuses_a_job_this_project_did_not_start(aws_env):
    values = aws.settings(GOOD, project=PROJECT)
    with moto.mock_aws():
        sagemaker = boto3.client("sagemaker", region_name=REGION)
        sagemaker.create_training_job(
            TrainingJobName="someone-elses",
            RoleArn=ROLE,
            AlgorithmSpecification={"TrainingImage": "img", "TrainingInputMode": "File"},
            OutputDataConfig={"S3OutputPath": "s3://other/out"},
            ResourceConfig={"InstanceType": "ml.g5.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 10},
            StoppingCondition={"MaxRuntimeInSeconds": 60},
        )
        with pytest.raises(DeploySettingsError, match="job someone-elses was not started by `cloud train`"):
            aws.cancel("someone-elses", values)


def test_cancel_stops_a_running_job_of_ours(aws_env, monkeypatch):
    """moto has no stop_training_job: a recording client answers for a job that is InProgress and tagged ours."""
    stopped = []

    class Recording:
        def describe_training_job(self, TrainingJobName):
            return {"TrainingJobArn": f"arn:{TrainingJobName}", "TrainingJobStatus": "InProgress"}

        def list_tags(self, ResourceArn):
            return {"Tags": [aws.CREATED_BY]}

        def stop_training_job(self, TrainingJobName):
            stopped.append(TrainingJobName)

    monkeypatch.setattr(aws, "_client", lambda service, values: Recording())
    aws.cancel("ours", aws.settings(GOOD, project=PROJECT))
    assert stopped == ["ours"]


def test_env_example_documents_every_setting_and_is_refused_as_it_is(aws_env, config_file, monkeypatch):
    from {{ cookiecutter.package_name }}.clouds.jobs.job import JOB_VARIABLES

    example = (ROOT / ".env.example").read_text(encoding="utf-8")
    assert [var.name for var in [*JOB_VARIABLES, *aws.VARIABLES] if f"{var.name}=" not in example] == []
    monkeypatch.setenv("DEPLOY_ENV_FILE", str(ROOT / ".env.example"))
    with moto.mock_aws():
        result = cloud_train(config_file)
        nothing_created()
    assert result.exit_code == 2
    assert "SAGEMAKER_ROLE_ARN=" in result.output and "is a placeholder" in result.output
    assert "CLOUD_BUCKET is not set" in result.output


def test_train_detached_then_status_through_the_cli(aws_env, config_file, tmp_path, monkeypatch):
    from {{ cookiecutter.package_name }}.clouds.jobs import cli as cloud_cli

    monkeypatch.setattr(cloud_cli, "JOB_RECORDS", tmp_path / "jobs")
    with moto.mock_aws():
        result = CliRunner().invoke(
            app, ["cloud", "train", "--config", str(config_file), "--detach"], env={**GOOD, "CLOUD_SPOT": "false"}
        )
        assert result.exit_code == 0, result.output
        assert "instance: ml.g5.xlarge (aws, eu-west-1), on-demand" in result.output
        assert "job: gpu-test" in result.output
        job = boto3.client("sagemaker", region_name=REGION).describe_training_job(TrainingJobName="gpu-test")
        assert job["EnableManagedSpotTraining"] is False
        status = CliRunner().invoke(app, ["cloud", "status", "gpu-test"], env=GOOD)
    assert status.exit_code == 0, status.output
    assert status.output.strip().endswith("gpu-test: completed (Completed), ml.g5.xlarge eu-west-1")
    record = json.loads((tmp_path / "jobs" / "gpu-test.json").read_text())
    assert record["usd_per_hour"] == PRICES["aws"]["ml.g5.xlarge"].usd_per_hour and record["spot"] is False


def test_status_of_an_unknown_job_names_it_and_exits_2(aws_env):
    with moto.mock_aws():
        result = CliRunner().invoke(app, ["cloud", "status", "no-such-job"], env=GOOD)
    assert result.exit_code == 2
    assert f"no SageMaker training job named no-such-job in {REGION}" in result.output
