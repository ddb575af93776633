"""Google Cloud: the training job as a Vertex AI CustomJob on a GPU machine, inputs and results in GCS.

    DRY_RUN=1 make train-cloud CONFIG=configs/gpu.yaml    # the cost check and every call below, nothing created

What `submit` does (`job_calls` lists it, in order):
1. uploads the staged inputs (clouds/jobs/staging.py) to gs://<GCS_BUCKET>/<project>/<run>/inputs/;
2. creates a CustomJob (google-cloud-aiplatform's `aiplatform_v1` types, so a misspelt field fails here, not at
   Google): one worker pool, a prebuilt PyTorch GPU training container
   (https://cloud.google.com/vertex-ai/docs/training/pre-built-containers), Scheduling(strategy=SPOT) unless
   CLOUD_SPOT=false (https://cloud.google.com/vertex-ai/docs/training/use-spot-vms) and `timeout` = the run-time
   cap, base_output_directory gs://<bucket>/<project>/<run> (Vertex sets AIP_MODEL_DIR = .../model and
   AIP_CHECKPOINT_DIR = .../checkpoints from it), labels made-by=<project>.

The container runs the staged launcher straight from the bucket through Cloud Storage FUSE, which Vertex mounts at
/gcs/<bucket> in every custom training container, and writes results and checkpoints there too: the results are in
the bucket as soon as the job ends, and a worker that Vertex restarts (a reclaimed spot VM, VM maintenance;
https://cloud.google.com/vertex-ai/docs/training/understanding-training-service) finds the checkpoints of the
stopped attempt in the same folder and resumes from the newest (clouds/entrypoint.py).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..jobs.job import JOB_VARIABLES, EntrypointOptions, JobSpec, JobStatus, check_cost, train_command
from ..jobs.staging import LAUNCHER, staged_files
from ..settings import DeploySettingsError, Var, resolve
from .deploy import PROJECT_ID

TARGET = "gcp"
# A machine type and its GPU, joined by "+": the key of PRICES["gcp"]. g2-standard-4 = 4 vCPU, 16 GB and one
# NVIDIA L4 (24 GB, bf16 as configs/gpu.yaml wants; about twice a T4's speed, so the run costs less in all).
# n1-standard-4+NVIDIA_TESLA_T4 is cheaper per hour (fp16 only).
DEFAULT_INSTANCE = "g2-standard-4+NVIDIA_L4"
# Prebuilt training containers are served from us-, europe- and asia-docker.pkg.dev; Python 3.11 (the project's
# requires-python must accept the container's Python: pick another image for a project made for 3.12+).
IMAGE = "{host}/vertex-ai/training/pytorch-gpu.2-4.py311:latest"
MADE_BY = "made-by"  # the label every job submit creates carries; cancel touches only jobs with it

VARIABLES = [
    PROJECT_ID,
    Var(
        "GCP_REGION",
        "the Vertex AI region of the job and the bucket, e.g. us-central1 (one with your GPU quota)",
        pattern=r"[a-z]+-[a-z]+\d+",
        rule="must be a region such as us-central1 or europe-west4",
    ),
    Var(
        "GCS_BUCKET",
        "the Cloud Storage bucket for the job's inputs, checkpoints and results (gcloud storage buckets create)",
        pattern=r"[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]",
        rule="must be a bucket name (3-63 lower-case letters, digits, dots, dashes, underscores), without gs://",
    ),
    Var(
        "GCP_TRAINING_IMAGE",
        "the training container: a prebuilt Vertex AI PyTorch GPU image, or your own",
        default="{image}",
        pattern=r"[\w.-]+(:\d+)?/[\w./-]+(:[\w.-]+|@sha256:[0-9a-f]{64})",
        rule="must be an image URI such as us-docker.pkg.dev/vertex-ai/training/pytorch-gpu.2-4.py311:latest",
    ),
]
INSTANCE_PATTERN = r"[a-z][a-z0-9]*-[a-z0-9-]+\+NVIDIA_[A-Z0-9_]+"


def settings(environ: dict[str, str], *, project: str) -> dict[str, str]:
    """The job settings (JOB_VARIABLES) and this target's, checked together: every problem in one message."""
    region = environ.get("GCP_REGION", "")
    host = {"europe": "europe-docker.pkg.dev", "asia": "asia-docker.pkg.dev"}.get(
        region.split("-")[0], "us-docker.pkg.dev"
    )
    values = resolve(
        [*JOB_VARIABLES, *VARIABLES],
        environ,
        project=project,
        default_instance=DEFAULT_INSTANCE,
        image=IMAGE.format(host=host),
    )
    if not re.fullmatch(INSTANCE_PATTERN, values["CLOUD_INSTANCE_TYPE"]):
        raise DeploySettingsError(
            f"CLOUD_INSTANCE_TYPE={values['CLOUD_INSTANCE_TYPE']} must be <machine type>+<accelerator>, e.g. "
            f"{DEFAULT_INSTANCE} or n1-standard-4+NVIDIA_TESLA_T4 (accelerator names as in the Vertex AI API)"
        )
    return {**values, "CLOUD_PROJECT": project}


def job_folder(spec: JobSpec, values: dict[str, str]) -> str:
    """gs://<bucket>/<project>/<run>: inputs/, model/ (results), checkpoints/ below it."""
    return f"gs://{values['GCS_BUCKET']}/{spec.project}/{spec.run_name}"


def _fuse(uri: str) -> str:
    """The Cloud Storage FUSE path of a gs:// URI inside the training container."""
    return "/gcs/" + uri.removeprefix("gs://")


def label(value: str) -> str:
    """A GCP label value: lower-case letters, digits, dashes and underscores, at most 63 characters."""
    return re.sub(r"[^a-z0-9_-]", "-", value.lower())[:63]


def build_custom_job(spec: JobSpec, values: dict[str, str]):  # -> aiplatform_v1.CustomJob
    """The CustomJob, from the SDK's own message types (an unknown field raises ValueError)."""
    from google.cloud import aiplatform_v1 as vertex
    from google.protobuf import duration_pb2

    machine, accelerator = spec.instance_type.split("+")
    bucket_folder = job_folder(spec, values)
    folder = _fuse(bucket_folder)
    options = EntrypointOptions(nproc=spec.gpu_count, output=f"{folder}/model", checkpoints=f"{folder}/checkpoints")
    command = train_command("config.yaml", [], options)
    # The staged run.sh is `python -m <package>.clouds.entrypoint --config config.yaml "$@"`: it gets the rest.
    arguments = command[command.index("config.yaml") + 1 :]
    strategy = vertex.Scheduling.Strategy.SPOT if spec.spot else vertex.Scheduling.Strategy.STANDARD

    def pool(replicas: int):
        return vertex.WorkerPoolSpec(
            machine_spec=vertex.MachineSpec(
                machine_type=machine,
                accelerator_type=vertex.AcceleratorType[accelerator],
                accelerator_count=spec.gpu_count,
            ),
            replica_count=replicas,
            container_spec=vertex.ContainerSpec(
                image_uri=values["GCP_TRAINING_IMAGE"], command=["bash", f"{folder}/inputs/{LAUNCHER}"], args=arguments
            ),
            disk_spec=vertex.DiskSpec(boot_disk_type="pd-ssd", boot_disk_size_gb=100),
        )

    # Vertex's layout for several machines: pool 0 holds the one chief, pool 1 the other workers.
    pools = [pool(1)] + ([pool(spec.instance_count - 1)] if spec.instance_count > 1 else [])
    return vertex.CustomJob(
        display_name=f"{spec.project}-{spec.run_name}"[:128],
        labels={MADE_BY: label(spec.project), "run": label(spec.run_name)},
        job_spec=vertex.CustomJobSpec(
            worker_pool_specs=pools,
            scheduling=vertex.Scheduling(strategy=strategy, timeout=duration_pb2.Duration(seconds=spec.max_runtime_s)),
            base_output_directory=vertex.GcsDestination(output_uri_prefix=bucket_folder),
        ),
    )


def job_calls(spec: JobSpec, values: dict[str, str]) -> list[tuple[str, str, dict[str, Any]]]:
    """(service, operation, arguments) of every call `submit` makes, in order."""
    folder = job_folder(spec, values)
    prefix = folder.removeprefix(f"gs://{values['GCS_BUCKET']}/")
    uploads = [
        (
            "storage",
            "upload_from_filename",
            {"bucket": values["GCS_BUCKET"], "blob": f"{prefix}/inputs/{name}", "filename": str(spec.staging / name)},
        )
        for name in staged_files(spec.staging)
    ]
    parent = f"projects/{values['GCP_PROJECT_ID']}/locations/{values['GCP_REGION']}"
    job = {"parent": parent, "custom_job": as_json(build_custom_job(spec, values))}
    return [*uploads, ("aiplatform", "create_custom_job", job)]


def as_json(job) -> dict[str, Any]:
    """The CustomJob as the REST API's JSON (set fields only, proto field names): what DRY_RUN prints and what
    `submit` parses back into the SDK type (CustomJob.from_json refuses an unknown field)."""
    from google.protobuf import json_format

    return json_format.MessageToDict(type(job).pb(job), preserving_proto_field_name=True)


# ---- clients (the tests replace these two functions with recording fakes) ---------------------------------


def job_client(values: dict[str, str]):  # -> aiplatform_v1.JobServiceClient
    """The Vertex AI job client of the region (application default credentials: `gcloud auth application-default
    login`, or the workload identity in CI)."""
    from google.cloud import aiplatform_v1 as vertex

    return vertex.JobServiceClient(client_options={"api_endpoint": f"{values['GCP_REGION']}-aiplatform.googleapis.com"})


def storage_client(values: dict[str, str]):  # -> google.cloud.storage.Client
    from google.cloud import storage

    return storage.Client(project=values["GCP_PROJECT_ID"])


# ---- the four operations ----------------------------------------------------------------------------------


def submit(spec: JobSpec, values: dict[str, str]) -> str:
    """Upload the inputs and create the job; returns its resource name (projects/.../customJobs/<id>)."""
    import json

    from google.cloud import aiplatform_v1 as vertex

    check_cost(spec, echo=lambda _line: None)  # the CLI printed it; a direct call is capped all the same
    calls = job_calls(spec, values)
    bucket = storage_client(values).bucket(values["GCS_BUCKET"])
    for _service, _operation, arguments in calls[:-1]:
        bucket.blob(arguments["blob"]).upload_from_filename(arguments["filename"])
    request = calls[-1][2]
    custom_job = vertex.CustomJob.from_json(json.dumps(request["custom_job"]))
    created = job_client(values).create_custom_job(parent=request["parent"], custom_job=custom_job)
    return created.name


def job_name(job_id: str, values: dict[str, str]) -> str:
    """The full resource name from a name or the bare numeric id `submit` printed."""
    if job_id.startswith("projects/"):
        return job_id
    return f"projects/{values['GCP_PROJECT_ID']}/locations/{values['GCP_REGION']}/customJobs/{job_id}"


# Vertex JobState names -> JobStatus states. QUEUED: waiting for quota or capacity (a spot job may wait long).
STATES = {
    "JOB_STATE_QUEUED": "pending",
    "JOB_STATE_PENDING": "pending",
    "JOB_STATE_RUNNING": "running",
    "JOB_STATE_UPDATING": "running",
    "JOB_STATE_PAUSED": "running",
    "JOB_STATE_CANCELLING": "stopping",
    "JOB_STATE_SUCCEEDED": "completed",
    "JOB_STATE_FAILED": "failed",
    "JOB_STATE_EXPIRED": "failed",
    "JOB_STATE_PARTIALLY_SUCCEEDED": "failed",
    "JOB_STATE_CANCELLED": "stopped",
}


def status(job_id: str, values: dict[str, str]) -> JobStatus:
    """The job's state and billed seconds (start to end, or to now while it runs). Its log lines are in Cloud
    Logging, not in this API: the message says how to follow them."""
    job = job_client(values).get_custom_job(name=job_name(job_id, values))
    state = STATES.get(job.state.name, "pending")
    started, ended = _time(job.start_time), _time(job.end_time)
    billed = int(((ended or datetime.now(UTC)) - started).total_seconds()) if started else None
    message = job.error.message if job.error and job.error.message else ""
    if not message and state in ("pending", "running"):
        message = (
            f"logs: gcloud ai custom-jobs stream-logs {job.name.rsplit('/', 1)[-1]} --region={values['GCP_REGION']}"
        )
    pool = job.job_spec.worker_pool_specs[0] if job.job_spec.worker_pool_specs else None
    instance = f"{pool.machine_spec.machine_type}+{pool.machine_spec.accelerator_type.name}" if pool else ""
    return JobStatus(state=state, message=message, billed_s=billed, instance_type=instance, region=values["GCP_REGION"])


def _time(value) -> datetime | None:
    """A proto timestamp (proto-plus gives a datetime; unset is None or the epoch) as an aware datetime."""
    if not value or value.timestamp() <= 0:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def download(job_id: str, values: dict[str, str], dest: Path) -> Path:
    """Copy the job's results (<base_output_directory>/model/) into `dest`; returns `dest`."""
    from ...errors import ProjectError

    job = job_client(values).get_custom_job(name=job_name(job_id, values))
    folder = job.job_spec.base_output_directory.output_uri_prefix
    bucket, _, prefix = folder.removeprefix("gs://").partition("/")
    model = f"{prefix.rstrip('/')}/model/"
    blobs = [blob for blob in storage_client(values).list_blobs(bucket, prefix=model) if not blob.name.endswith("/")]
    if not blobs:
        raise ProjectError(f"{job_id}: no results under gs://{bucket}/{model} (the job has not finished, or failed)")
    for blob in blobs:
        target = dest / blob.name.removeprefix(model)
        target.parent.mkdir(parents=True, exist_ok=True)
        blob.download_to_filename(str(target))
    return dest


def cancel(job_id: str, values: dict[str, str]) -> None:
    """Cancel the job, only when it carries this project's made-by label (another job is left alone)."""
    client = job_client(values)
    name = job_name(job_id, values)
    job = client.get_custom_job(name=name)
    owner = dict(job.labels).get(MADE_BY)
    if owner != label(values["CLOUD_PROJECT"]):
        raise DeploySettingsError(
            f"{job_id}: not a job of this project (label {MADE_BY}={owner!r}, expected "
            f"{label(values['CLOUD_PROJECT'])!r}); nothing was cancelled"
        )
    client.cancel_custom_job(name=name)
