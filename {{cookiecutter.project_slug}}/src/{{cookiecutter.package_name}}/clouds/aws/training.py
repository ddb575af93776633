"""AWS: the job is a SageMaker training job in the AWS PyTorch training container; inputs, checkpoints and
outputs in S3 (deploy/aws/README.md, "Train in the cloud", has the prerequisites and costs).

    s3://<CLOUD_BUCKET>/<project>/<job>/input/...        the staged folder (staging.py), one file per object
    s3://<CLOUD_BUCKET>/<project>/<job>/checkpoints/     /opt/ml/checkpoints, synced while training (spot resume)
    s3://<CLOUD_BUCKET>/<project>/<job>/output/<job>/output/model.tar.gz   /opt/ml/model: what `fetch` imports

The API: boto3 SageMaker `create_training_job` (AlgorithmSpecification.ContainerEntrypoint / ContainerArguments,
EnableManagedSpotTraining, StoppingCondition.MaxRuntimeInSeconds / MaxWaitTimeInSeconds, CheckpointConfig),
per the SageMaker API reference "CreateTrainingJob" and "Managed Spot Training" in the SageMaker developer
guide. The container runs run.sh from the input channel, which installs the project and runs the entrypoint.
Every function takes plain values; the clients are made from AWS_REGION, so moto's mock_aws covers them in tests.
"""

from __future__ import annotations

import tarfile
from pathlib import Path
from typing import Any

from ..jobs.job import JOB_VARIABLES, EntrypointOptions, JobSpec, JobStatus, check_cost, train_command
from ..jobs.staging import LAUNCHER, staged_files
from ..settings import DeploySettingsError, Var, resolve

TARGET = "aws"
# The cheapest single-GPU training instance with bf16 and memory for configs/gpu.yaml (0.5B model, batch 16,
# 512 tokens): 1x A10G 24 GB. ml.g4dn.xlarge (T4 16 GB) is cheaper but has no bf16: fp16 only.
DEFAULT_INSTANCE = "ml.g5.xlarge"
# AWS Deep Learning Container for PyTorch training (GPU, SageMaker flavour), listed in
# github.com/aws/deep-learning-containers/blob/master/available_images.md; 763104351884 is the DLC account of
# most regions (that page lists the exceptions).
DEFAULT_IMAGE = (
    "763104351884.dkr.ecr.{AWS_REGION}.amazonaws.com/pytorch-training:2.6.0-gpu-py312-cu126-ubuntu22.04-sagemaker"
)
CREATED_BY = {"Key": "created-by", "Value": "cloud/aws"}
CHANNEL = "job"  # the input channel: SageMaker downloads it to /opt/ml/input/data/job/
INPUT_DIR, MODEL_DIR, CHECKPOINT_DIR = f"/opt/ml/input/data/{CHANNEL}", "/opt/ml/model", "/opt/ml/checkpoints"
VOLUME_GB = 50  # the base model, the container's pip cache and checkpoints

VARIABLES = [
    Var(
        "AWS_REGION",
        "the AWS region of the training job and the bucket, e.g. us-east-1",
        pattern=r"[a-z]{2}(-gov|-iso[a-z]*)?-[a-z]+-\d",
        rule="must be an AWS region name such as us-east-1",
    ),
    Var(
        "SAGEMAKER_ROLE_ARN",
        "the IAM role the training job runs as: it reads and writes CLOUD_BUCKET and writes CloudWatch logs "
        "(see deploy/aws/README.md)",
        pattern=r"arn:aws(-[a-z]+)?:iam::\d{12}:role/[\w+=,.@/-]+",
        rule="must be an IAM role ARN: arn:aws:iam::<12-digit account id>:role/<name>",
    ),
    Var(
        "CLOUD_BUCKET",
        "the S3 bucket for the job's inputs, checkpoints and outputs (created, tagged, when missing)",
        pattern=r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]",
        rule="must be an S3 bucket name: 3-63 lower-case letters, digits, dots and dashes",
    ),
    Var(
        "SAGEMAKER_TRAINING_IMAGE",
        "the training container image",
        default=DEFAULT_IMAGE,
        pattern=r"\S+\.dkr\.ecr\.\S+/\S+:\S+",
        rule="must be an ECR image URI such as 763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-training:<tag>",
    ),
]


def settings(environ: dict[str, str], *, project: str) -> dict[str, str]:
    """JOB_VARIABLES and this target's variables, checked together (every problem in one message)."""
    return resolve([*JOB_VARIABLES, *VARIABLES], environ, project=project, default_instance=DEFAULT_INSTANCE)


def job_name(spec: JobSpec) -> str:
    """The training job's name: the run name, cut to SageMaker's 63 characters of letters, digits and dashes."""
    cleaned = "".join(c if c.isalnum() else "-" for c in spec.run_name).strip("-")
    return cleaned[:63].rstrip("-")


def job_calls(spec: JobSpec, values: dict[str, str]) -> list[tuple[str, str, dict[str, Any]]]:
    """Every call `submit` makes, in order: the bucket (only when missing), one upload per staged file, the job."""
    bucket, name = values["CLOUD_BUCKET"], job_name(spec)
    prefix = f"{spec.project}/{name}"
    calls: list[tuple[str, str, dict[str, Any]]] = [
        ("s3", "create_bucket", _bucket_kwargs(bucket, spec.region)),
        ("s3", "put_bucket_tagging", {"Bucket": bucket, "Tagging": {"TagSet": [CREATED_BY]}}),
    ]
    for relative in staged_files(spec.staging):
        upload = {"Filename": str(spec.staging / relative), "Bucket": bucket, "Key": f"{prefix}/input/{relative}"}
        calls.append(("s3", "upload_file", upload))
    calls.append(("sagemaker", "create_training_job", _training_job(spec, values, name=name, prefix=prefix)))
    return calls


def _bucket_kwargs(bucket: str, region: str) -> dict[str, Any]:
    # us-east-1 refuses a LocationConstraint naming itself; every other region requires one.
    if region == "us-east-1":
        return {"Bucket": bucket}
    return {"Bucket": bucket, "CreateBucketConfiguration": {"LocationConstraint": region}}


def _training_job(spec: JobSpec, values: dict[str, str], *, name: str, prefix: str) -> dict[str, Any]:
    bucket = values["CLOUD_BUCKET"]
    options = EntrypointOptions(
        nproc=spec.gpu_count, output=MODEL_DIR, checkpoints=CHECKPOINT_DIR, config_name=spec.config_name
    )
    command = train_command("config.yaml", [], options)
    stopping: dict[str, int] = {"MaxRuntimeInSeconds": spec.max_runtime_s}
    if spec.spot:
        # Billed time stays under MaxRuntime; MaxWait (>= MaxRuntime) adds the time spent waiting for spot capacity.
        stopping["MaxWaitTimeInSeconds"] = 2 * spec.max_runtime_s
    return {
        "TrainingJobName": name,
        "RoleArn": values["SAGEMAKER_ROLE_ARN"],
        "AlgorithmSpecification": {
            "TrainingImage": values["SAGEMAKER_TRAINING_IMAGE"],
            "TrainingInputMode": "File",
            "ContainerEntrypoint": ["bash", f"{INPUT_DIR}/{LAUNCHER}"],
            "ContainerArguments": command,
        },
        "InputDataConfig": [
            {
                "ChannelName": CHANNEL,
                "DataSource": {
                    "S3DataSource": {
                        "S3DataType": "S3Prefix",
                        "S3Uri": f"s3://{bucket}/{prefix}/input/",
                        "S3DataDistributionType": "FullyReplicated",
                    }
                },
                "InputMode": "File",
            }
        ],
        "OutputDataConfig": {"S3OutputPath": f"s3://{bucket}/{prefix}/output"},
        "ResourceConfig": {
            "InstanceType": spec.instance_type,
            "InstanceCount": spec.instance_count,
            "VolumeSizeInGB": VOLUME_GB,
        },
        "StoppingCondition": stopping,
        "EnableManagedSpotTraining": spec.spot,
        "CheckpointConfig": {"S3Uri": f"s3://{bucket}/{prefix}/checkpoints/", "LocalPath": CHECKPOINT_DIR},
        "Environment": {"PYTHONUNBUFFERED": "1", "HF_HUB_DISABLE_TELEMETRY": "1"},
        "Tags": [CREATED_BY, {"Key": "project", "Value": spec.project}, {"Key": "run", "Value": spec.run_name}],
    }


def _client(service: str, values: dict[str, str]):
    import boto3

    return boto3.client(service, region_name=values["AWS_REGION"])


def submit(spec: JobSpec, values: dict[str, str]) -> str:
    """Check the cost cap, create the bucket when missing, upload the staged files, create the job; its name."""
    from botocore.exceptions import ClientError

    check_cost(spec, echo=lambda _line: None)  # the CLI printed it; a direct call is capped all the same
    s3, sagemaker = _client("s3", values), _client("sagemaker", values)
    bucket_exists = True
    try:
        s3.head_bucket(Bucket=values["CLOUD_BUCKET"])
    except ClientError:
        bucket_exists = False
    for service, operation, kwargs in job_calls(spec, values):
        if service == "s3" and operation in ("create_bucket", "put_bucket_tagging") and bucket_exists:
            continue  # a bucket of yours: used as it is, never re-tagged
        client = s3 if service == "s3" else sagemaker
        getattr(client, operation)(**kwargs)
    return job_name(spec)


_STATES = {"Completed": "completed", "Failed": "failed", "Stopping": "stopping", "Stopped": "stopped"}
_PENDING = {"Starting", "Pending", "LaunchingMLInstances", "PreparingTrainingStack", "Downloading"}
_LOG_TOKENS: dict[str, dict[str, str]] = {}  # job -> stream -> next token: each status call returns new lines


def _describe(sagemaker, job_id: str, values: dict[str, str]) -> dict[str, Any]:
    """describe_training_job; an unknown job is a clear error (exit 2), not a traceback."""
    from botocore.exceptions import ClientError

    try:
        return sagemaker.describe_training_job(TrainingJobName=job_id)
    except ClientError as err:
        if err.response["Error"]["Code"] in ("ValidationException", "ResourceNotFound"):
            raise DeploySettingsError(
                f"no SageMaker training job named {job_id} in {values['AWS_REGION']} (AWS_REGION); "
                "`cloud train --detach` prints the name"
            ) from None
        raise


def status(job_id: str, values: dict[str, str]) -> JobStatus:
    """The job's state (pending while SageMaker gets an instance), billed seconds and new log lines."""
    job = _describe(_client("sagemaker", values), job_id, values)
    secondary = job.get("SecondaryStatus", "")
    state = _STATES.get(job["TrainingJobStatus"]) or ("pending" if secondary in _PENDING else "running")
    message = job.get("FailureReason") or secondary
    return JobStatus(
        state=state,
        message=message,
        billed_s=job.get("BillableTimeInSeconds"),
        instance_type=job.get("ResourceConfig", {}).get("InstanceType", ""),
        region=values["AWS_REGION"],
        log_lines=_new_log_lines(job_id, values),
    )


def _new_log_lines(job_id: str, values: dict[str, str]) -> list[str]:
    """CloudWatch lines of the job's streams (/aws/sagemaker/TrainingJobs, <job>/algo-N-...) since the last call."""
    from botocore.exceptions import ClientError

    logs, group = _client("logs", values), "/aws/sagemaker/TrainingJobs"
    tokens = _LOG_TOKENS.setdefault(job_id, {})
    try:
        streams = logs.describe_log_streams(logGroupName=group, logStreamNamePrefix=f"{job_id}/")["logStreams"]
    except ClientError:  # no log group yet: the instance has not started
        return []
    lines: list[str] = []
    for stream in sorted(item["logStreamName"] for item in streams):
        since = {"nextToken": tokens[stream]} if stream in tokens else {"startFromHead": True}
        page = logs.get_log_events(logGroupName=group, logStreamName=stream, **since)
        lines += [event["message"] for event in page["events"]]
        tokens[stream] = page["nextForwardToken"]
    return lines


def download(job_id: str, values: dict[str, str], dest: Path) -> Path:
    """The job's model.tar.gz (what the entrypoint wrote to /opt/ml/model), unpacked into dest/<job>/."""
    job = _describe(_client("sagemaker", values), job_id, values)
    if job["TrainingJobStatus"] != "Completed":
        raise DeploySettingsError(
            f"job {job_id} is {job['TrainingJobStatus']} ({job.get('FailureReason') or job.get('SecondaryStatus')}): "
            "only a completed job has results to fetch. Its log: `cloud status`"
        )
    uri = job["ModelArtifacts"]["S3ModelArtifacts"]
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    folder = dest / job_id
    folder.mkdir(parents=True, exist_ok=True)
    archive = dest / f"{job_id}.tar.gz"
    _client("s3", values).download_file(bucket, key, str(archive))
    with tarfile.open(archive) as tar:
        tar.extractall(folder, filter="data")  # "data": no absolute paths, links or devices from the archive
    archive.unlink()
    return folder


def cancel(job_id: str, values: dict[str, str]) -> None:
    """Stop the job, only when this project made it (tag created-by=cloud/aws)."""
    sagemaker = _client("sagemaker", values)
    job = _describe(sagemaker, job_id, values)
    tags = sagemaker.list_tags(ResourceArn=job["TrainingJobArn"]).get("Tags", [])
    if CREATED_BY not in tags:
        raise DeploySettingsError(
            f"job {job_id} was not started by `cloud train` (no tag {CREATED_BY['Key']}={CREATED_BY['Value']}); "
            "it was left running. Stop it in the SageMaker console if it is yours"
        )
    if job["TrainingJobStatus"] in ("InProgress",):
        sagemaker.stop_training_job(TrainingJobName=job_id)
