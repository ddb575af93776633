"""Vertex AI training target (clouds/gcp/training.py) against recording fakes of the job and storage clients.

No test reaches Google: the fakes bind every call to the real client methods' signatures (a wrong argument
name fails), and the job is google-cloud-aiplatform's own CustomJob message (a wrong field name fails).
"""

import inspect
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from google.cloud import aiplatform_v1 as vertex
from google.cloud import storage
from google.protobuf import json_format

from {{ cookiecutter.package_name }}.clouds.gcp import training as gcp
from {{ cookiecutter.package_name }}.clouds.jobs.job import (
    PRICES,
    CostCapError,
    JobSpec,
    check_cost,
)
from {{ cookiecutter.package_name }}.clouds.settings import DeploySettingsError

ENVIRON = {"GCP_PROJECT_ID": "shop-ml-123", "GCP_REGION": "europe-west4", "GCS_BUCKET": "shop-ml-runs"}
RUN = "gpu-251130-070000"


def bound(method, *args, **kwargs) -> None:
    """Fail like the real client would on an unknown or missing argument."""
    inspect.signature(method).bind(None, *args, **kwargs)


class FakeBlob:
    def __init__(self, store: "FakeStorage", bucket: str, name: str) -> None:
        self.store, self.bucket, self.name = store, bucket, name

    def upload_from_filename(self, filename, **kwargs) -> None:
        bound(storage.Blob.upload_from_filename, filename, **kwargs)
        self.store.objects[(self.bucket, self.name)] = Path(filename).read_bytes()
        self.store.calls.append(("upload", self.bucket, self.name))

    def download_to_filename(self, filename, **kwargs) -> None:
        bound(storage.Blob.download_to_filename, filename, **kwargs)
        Path(filename).write_bytes(self.store.objects[(self.bucket, self.name)])


class FakeBucket:
    def __init__(self, store: "FakeStorage", name: str) -> None:
        self.store, self.name = store, name

    def blob(self, blob_name, **kwargs) -> FakeBlob:
        bound(storage.Bucket.blob, blob_name, **kwargs)
        return FakeBlob(self.store, self.name, blob_name)


class FakeStorage:
    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], bytes] = {}
        self.calls: list[tuple] = []

    def bucket(self, bucket_name, **kwargs) -> FakeBucket:
        bound(storage.Client.bucket, bucket_name, **kwargs)
        return FakeBucket(self, bucket_name)

    def list_blobs(self, bucket_or_name, **kwargs) -> list[FakeBlob]:
        bound(storage.Client.list_blobs, bucket_or_name, **kwargs)
        prefix = kwargs.get("prefix", "")
        names = sorted(name for bucket, name in self.objects if bucket == bucket_or_name and name.startswith(prefix))
        return [FakeBlob(self, bucket_or_name, name) for name in names]


class FakeJobService:
    """Records create/get/cancel; keeps the created jobs like Vertex does."""

    def __init__(self) -> None:
        self.jobs: dict[str, vertex.CustomJob] = {}
        self.calls: list[tuple[str, dict]] = []

    def create_custom_job(self, **kwargs) -> vertex.CustomJob:
        bound(vertex.JobServiceClient.create_custom_job, **kwargs)
        self.calls.append(("create_custom_job", kwargs))
        job = vertex.CustomJob(kwargs["custom_job"])  # a copy, as the service returns
        job.name = f"{kwargs['parent']}/customJobs/{len(self.jobs) + 1}"
        job.state = vertex.JobState.JOB_STATE_QUEUED
        self.jobs[job.name] = job
        return job

    def get_custom_job(self, **kwargs) -> vertex.CustomJob:
        bound(vertex.JobServiceClient.get_custom_job, **kwargs)
        self.calls.append(("get_custom_job", kwargs))
        return self.jobs[kwargs["name"]]

    def cancel_custom_job(self, **kwargs) -> None:
        bound(vertex.JobServiceClient.cancel_custom_job, **kwargs)
        self.calls.append(("cancel_custom_job", kwargs))
        self.jobs[kwargs["name"]].state = vertex.JobState.JOB_STATE_CANCELLING


@pytest.fixture
def staging(tmp_path) -> Path:
    folder = tmp_path / "staging"
    (folder / "data" / "shop").mkdir(parents=True)
    for name in ("config.yaml", "run.sh", "project.tar.gz", "data/shop/train.jsonl"):
        (folder / name).write_text(f"content of {name}\n")
    return folder


@pytest.fixture
def fakes(monkeypatch) -> tuple[FakeJobService, FakeStorage]:
    service, store = FakeJobService(), FakeStorage()
    monkeypatch.setattr(gcp, "job_client", lambda values: service)
    monkeypatch.setattr(gcp, "storage_client", lambda values: store)
    return service, store


def make_spec(staging: Path, **changes) -> JobSpec:
    fields = dict(
        project="shop-assistant",
        run_name=RUN,
        config_name="gpu",
        target="gcp",
        instance_type=gcp.DEFAULT_INSTANCE,
        gpu_count=1,
        instance_count=1,
        spot=True,
        max_runtime_s=5400,
        max_cost_usd=5.0,
        staging=staging,
        region="europe-west4",
    )
    return JobSpec(**{**fields, **changes})


def test_settings_name_every_missing_variable_and_pick_the_regional_image() -> None:
    with pytest.raises(DeploySettingsError) as missing:
        gcp.settings({}, project="shop-assistant")
    for name in ("GCP_PROJECT_ID", "GCP_REGION", "GCS_BUCKET"):
        assert f"{name} is not set" in str(missing.value)
    with pytest.raises(DeploySettingsError, match="GCS_BUCKET='gs://x' must be a bucket name"):
        gcp.settings({**ENVIRON, "GCS_BUCKET": "gs://x"}, project="shop-assistant")
    with pytest.raises(DeploySettingsError, match=r"CLOUD_INSTANCE_TYPE=g2-standard-4 must be <machine type>\+"):
        gcp.settings({**ENVIRON, "CLOUD_INSTANCE_TYPE": "g2-standard-4"}, project="shop-assistant")
    values = gcp.settings(ENVIRON, project="shop-assistant")
    assert values["GCP_TRAINING_IMAGE"] == "europe-docker.pkg.dev/vertex-ai/training/pytorch-gpu.2-4.py311:latest"
    assert values["CLOUD_INSTANCE_TYPE"] == "g2-standard-4+NVIDIA_L4"
    assert (values["CLOUD_SPOT"], values["CLOUD_MAX_RUNTIME_H"], values["CLOUD_PROJECT"]) == (
        "true",
        "1",
        "shop-assistant",
    )


def test_the_default_machine_has_a_sourced_price_under_the_default_cap(staging) -> None:
    price = PRICES["gcp"][gcp.DEFAULT_INSTANCE]
    assert price.source.startswith("https://cloud.google.com/vertex-ai/pricing") and price.checked
    assert check_cost(make_spec(staging, max_runtime_s=3600), echo=lambda line: None) == pytest.approx(
        price.usd_per_hour
    )
    with pytest.raises(CostCapError, match="above CLOUD_MAX_COST_USD=1"):
        check_cost(make_spec(staging, max_runtime_s=2 * 3600, max_cost_usd=1.0), echo=lambda line: None)


def test_job_calls_upload_every_staged_file_then_create_a_spot_job_with_a_time_cap(staging) -> None:
    values = gcp.settings(ENVIRON, project="shop-assistant")
    calls = gcp.job_calls(make_spec(staging), values)
    prefix = f"shop-assistant/{RUN}/inputs"
    assert [(service, op, args["blob"]) for service, op, args in calls[:-1]] == [
        ("storage", "upload_from_filename", f"{prefix}/{name}")
        for name in ("config.yaml", "data/shop/train.jsonl", "project.tar.gz", "run.sh")
    ]
    service, operation, arguments = calls[-1]
    assert (service, operation, arguments["parent"]) == (
        "aiplatform",
        "create_custom_job",
        "projects/shop-ml-123/locations/europe-west4",
    )
    assert arguments["custom_job"]["job_spec"]["scheduling"] == {"strategy": "SPOT", "timeout": "5400s"}
    job = vertex.CustomJob.from_json(json.dumps(arguments["custom_job"]))
    assert job.job_spec.scheduling.strategy == vertex.Scheduling.Strategy.SPOT
    assert job.job_spec.scheduling.timeout.total_seconds() == 5400
    assert job.job_spec.base_output_directory.output_uri_prefix == f"gs://shop-ml-runs/shop-assistant/{RUN}"
    assert dict(job.labels) == {"made-by": "shop-assistant", "run": RUN}
    (pool,) = job.job_spec.worker_pool_specs
    assert (pool.machine_spec.machine_type, pool.machine_spec.accelerator_type.name) == ("g2-standard-4", "NVIDIA_L4")
    assert (pool.machine_spec.accelerator_count, pool.replica_count) == (1, 1)
    fuse = f"/gcs/shop-ml-runs/shop-assistant/{RUN}"
    assert list(pool.container_spec.command) == ["bash", f"{fuse}/inputs/run.sh"]
    assert list(pool.container_spec.args) == [
        "--output",
        f"{fuse}/model",
        "--checkpoints",
        f"{fuse}/checkpoints",
        "--evaluate",
    ]
    on_demand = gcp.job_calls(make_spec(staging, spot=False), values)[-1][2]["custom_job"]
    assert on_demand["job_spec"]["scheduling"]["strategy"] == "STANDARD"


def test_the_printed_job_parses_back_into_the_sdk_type_and_a_wrong_field_fails(staging) -> None:
    values = gcp.settings(ENVIRON, project="shop-assistant")
    printed = gcp.job_calls(make_spec(staging), values)[-1][2]["custom_job"]
    assert vertex.CustomJob.from_json(json.dumps(printed)) == gcp.build_custom_job(make_spec(staging), values)
    printed["job_spec"]["scheduling"]["stratgy"] = printed["job_spec"]["scheduling"].pop("strategy")  # a typo
    with pytest.raises(json_format.ParseError, match='no field named "stratgy"'):
        vertex.CustomJob.from_json(json.dumps(printed))


def test_submit_uploads_then_creates_and_returns_the_job_name(staging, fakes) -> None:
    service, store = fakes
    values = gcp.settings(ENVIRON, project="shop-assistant")
    name = gcp.submit(make_spec(staging), values)
    assert name == "projects/shop-ml-123/locations/europe-west4/customJobs/1"
    assert store.objects[("shop-ml-runs", f"shop-assistant/{RUN}/inputs/run.sh")] == b"content of run.sh\n"
    assert len(store.calls) == 4 and [call[0] for call in service.calls] == ["create_custom_job"]


def test_status_maps_states_and_bills_start_to_end(staging, fakes) -> None:
    service, _ = fakes
    values = gcp.settings(ENVIRON, project="shop-assistant")
    name = gcp.submit(make_spec(staging), values)
    queued = gcp.status(name.rsplit("/", 1)[-1], values)  # the bare id works too
    assert (queued.state, queued.billed_s, queued.instance_type) == ("pending", None, "g2-standard-4+NVIDIA_L4")
    assert "gcloud ai custom-jobs stream-logs 1 --region=europe-west4" in queued.message
    job = service.jobs[name]
    job.state = vertex.JobState.JOB_STATE_SUCCEEDED
    job.start_time = datetime(2026, 11, 30, 7, 0, 0, tzinfo=UTC)
    job.end_time = datetime(2026, 11, 30, 7, 12, 30, tzinfo=UTC)
    done = gcp.status(name, values)
    assert (done.state, done.billed_s, done.region) == ("completed", 750, "europe-west4")
    job.state = vertex.JobState.JOB_STATE_FAILED
    job.error.message = "Out of memory"
    assert (gcp.status(name, values).state, gcp.status(name, values).message) == ("failed", "Out of memory")


def test_download_copies_the_model_folder_and_refuses_an_empty_one(staging, fakes, tmp_path) -> None:
    _, store = fakes
    values = gcp.settings(ENVIRON, project="shop-assistant")
    name = gcp.submit(make_spec(staging), values)
    with pytest.raises(Exception, match="no results under gs://shop-ml-runs/shop-assistant/"):
        gcp.download(name, values, tmp_path / "empty")
    model = f"shop-assistant/{RUN}/model"
    for relative in ("job.json", "reports/eval.json", f"outputs/{RUN}/adapter/adapter_config.json"):
        store.objects[("shop-ml-runs", f"{model}/{relative}")] = relative.encode()
    store.objects[("shop-ml-runs", f"shop-assistant/{RUN}/checkpoints/x")] = b"not copied"
    dest = gcp.download(name, values, tmp_path / "job")
    files = sorted(str(path.relative_to(dest)) for path in dest.rglob("*") if path.is_file())
    assert files == ["job.json", f"outputs/{RUN}/adapter/adapter_config.json", "reports/eval.json"]
    assert (dest / "reports" / "eval.json").read_text() == "reports/eval.json"


def test_cancel_touches_only_jobs_labelled_by_this_project(staging, fakes) -> None:
    service, _ = fakes
    values = gcp.settings(ENVIRON, project="shop-assistant")
    name = gcp.submit(make_spec(staging), values)
    other = gcp.settings(ENVIRON, project="another-project")
    with pytest.raises(DeploySettingsError, match="not a job of this project"):
        gcp.cancel(name, other)
    assert "cancel_custom_job" not in [call[0] for call in service.calls]
    gcp.cancel(name, values)
    assert service.calls[-1] == ("cancel_custom_job", {"name": name})
