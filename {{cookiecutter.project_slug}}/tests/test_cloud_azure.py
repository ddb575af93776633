"""Azure ML training target (clouds/azure/training.py): the command job through the SDK's YAML schema, and the four
operations against a recording fake MLClient whose methods bind to the real JobOperations signatures."""

import inspect
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from azure.ai.ml import load_job
from azure.ai.ml.operations import JobOperations

from {{ cookiecutter.package_name }}.clouds.azure import training as azure
from {{ cookiecutter.package_name }}.clouds.jobs.job import (
    PRICES,
    CostCapError,
    JobSpec,
    check_cost,
)
from {{ cookiecutter.package_name }}.clouds.settings import DeploySettingsError

ENVIRON = {
    "AZURE_SUBSCRIPTION_ID": "1b2c3d4e-0000-4a4a-8b8b-123456789abc",
    "AZURE_RESOURCE_GROUP": "shop-ml",
    "AZURE_ML_WORKSPACE": "shop-ml-ws",
}
RUN = "gpu-251130-070000"


class FakeJobs:
    """ml_client.jobs: records every call (bound to JobOperations' signature) and keeps the created jobs."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple, dict]] = []
        self.jobs: dict[str, object] = {}
        self.results: dict[str, bytes] = {}

    def _record(self, name: str, *args, **kwargs) -> None:
        inspect.signature(getattr(JobOperations, name)).bind(None, *args, **kwargs)
        self.calls.append((name, args, kwargs))

    def create_or_update(self, job, **kwargs):
        self._record("create_or_update", job, **kwargs)
        job.name = f"quiet_river_{len(self.jobs) + 1}"
        job._status = "Queued"  # read-only in the SDK: the service fills it in
        self.jobs[job.name] = job
        return job

    def get(self, name):
        self._record("get", name)
        return self.jobs[name]

    def begin_cancel(self, name, **kwargs):
        self._record("begin_cancel", name, **kwargs)
        self.jobs[name]._status = "CancelRequested"

    def download(self, name, **kwargs):
        self._record("download", name, **kwargs)
        folder = Path(kwargs["download_path"]) / "named-outputs" / kwargs["output_name"]
        for relative, content in self.results.items():
            (folder / relative).parent.mkdir(parents=True, exist_ok=True)
            (folder / relative).write_bytes(content)

    def stream(self, name):
        self._record("stream", name)


@pytest.fixture
def jobs(monkeypatch) -> FakeJobs:
    fake = FakeJobs()
    monkeypatch.setattr(azure, "ml_client", lambda values: SimpleNamespace(jobs=fake))
    return fake


@pytest.fixture
def staging(tmp_path) -> Path:
    folder = tmp_path / "staging"
    (folder / "data").mkdir(parents=True)
    for name in ("config.yaml", "run.sh", "project.tar.gz", "data/train.jsonl"):
        (folder / name).write_text(f"content of {name}\n")
    return folder


def make_spec(staging: Path, **changes) -> JobSpec:
    fields = dict(
        project="shop-assistant",
        run_name=RUN,
        config_name="gpu",
        target="azure",
        instance_type=azure.DEFAULT_INSTANCE,
        gpu_count=1,
        instance_count=1,
        spot=True,
        max_runtime_s=5400,
        max_cost_usd=5.0,
        staging=staging,
        region="",
    )
    return JobSpec(**{**fields, **changes})


def test_settings_name_every_missing_variable_and_refuse_a_bad_vm_size() -> None:
    with pytest.raises(DeploySettingsError) as missing:
        azure.settings({}, project="shop-assistant")
    for name in ("AZURE_SUBSCRIPTION_ID", "AZURE_RESOURCE_GROUP", "AZURE_ML_WORKSPACE"):
        assert f"{name} is not set" in str(missing.value)
    with pytest.raises(DeploySettingsError, match="CLOUD_INSTANCE_TYPE=nc4 must be an Azure VM size"):
        azure.settings({**ENVIRON, "CLOUD_INSTANCE_TYPE": "nc4"}, project="shop-assistant")
    values = azure.settings(ENVIRON, project="shop-assistant")
    assert (values["CLOUD_INSTANCE_TYPE"], values["AZURE_EXPERIMENT"]) == ("Standard_NC4as_T4_v3", "shop-assistant")
    assert values["AZURE_TRAINING_ENVIRONMENT"] == azure.ENVIRONMENT


def test_the_default_vm_has_a_sourced_price_and_the_cap_refuses_more(staging) -> None:
    price = PRICES["azure"][azure.DEFAULT_INSTANCE]
    assert price.source.startswith("https://azure.microsoft.com/") and price.checked
    assert check_cost(make_spec(staging, max_runtime_s=3600), echo=lambda _: None) == pytest.approx(0.526)
    with pytest.raises(CostCapError, match="Nothing was created"):
        check_cost(make_spec(staging, max_runtime_s=20 * 3600), echo=lambda _: None)


def test_the_job_is_serverless_spot_time_capped_and_tagged(staging) -> None:
    values = azure.settings(ENVIRON, project="shop-assistant")
    ((service, operation, arguments),) = azure.job_calls(make_spec(staging), values)
    assert (service, operation) == ("ml_client.jobs", "create_or_update")
    assert arguments["uploads"] == ["config.yaml", "data/train.jsonl", "project.tar.gz", "run.sh"]
    job = arguments["job"]
    assert (job["type"], job["queue_settings"], job["limits"]) == ("command", {"job_tier": "spot"}, {"timeout": 5400})
    assert "compute" not in job  # serverless: resources only
    assert job["resources"]["instance_type"] == "Standard_NC4as_T4_v3" and job["resources"]["instance_count"] == 1
    assert job["command"] == (
        f"bash {azure.STAGING}/run.sh --output {azure.RESULTS} --checkpoints {azure.CHECKPOINTS} --evaluate"
    )
    assert job["inputs"]["staging"] == {"mode": "ro_mount", "type": "uri_folder", "path": str(staging)}
    assert job["outputs"]["checkpoints"]["path"] == (
        f"azureml://datastores/workspaceblobstore/paths/shop-assistant/{RUN}/checkpoints/"
    )
    assert job["tags"] == {"made-by": "shop-assistant", "run": RUN}
    assert job["environment"] == azure.ENVIRONMENT
    on_demand = azure.job_calls(make_spec(staging, spot=False), values)[0][2]["job"]
    assert on_demand["queue_settings"] == {"job_tier": "standard"}


def test_the_job_round_trips_through_its_yaml_schema_and_a_wrong_key_fails(staging, tmp_path) -> None:
    values = azure.settings(ENVIRON, project="shop-assistant")
    document = azure.job_calls(make_spec(staging), values)[0][2]["job"]
    path = tmp_path / "job.yml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    loaded = load_job(path)
    assert (loaded.queue_settings.job_tier, loaded.limits.timeout) == ("spot", 5400)
    assert (loaded.resources.instance_type, loaded.resources.instance_count) == ("Standard_NC4as_T4_v3", 1)
    assert (loaded.command, loaded.environment) == (document["command"], azure.ENVIRONMENT)
    assert loaded.outputs["checkpoints"].path == document["outputs"]["checkpoints"]["path"]
    assert Path(loaded.inputs["staging"].path) == staging and loaded.tags == document["tags"]
    document["queue_setings"] = document.pop("queue_settings")  # a typo: the schema must refuse it
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    with pytest.raises(Exception, match="queue_setings"):
        load_job(path)


def test_submit_status_download_and_cancel_through_the_fake_client(staging, jobs, tmp_path) -> None:
    values = azure.settings(ENVIRON, project="shop-assistant")
    name = azure.submit(make_spec(staging), values)
    assert name == "quiet_river_1" and [call[0] for call in jobs.calls] == ["create_or_update"]
    assert jobs.jobs[name].queue_settings.job_tier == "spot"
    queued = azure.status(name, values)
    assert (queued.state, queued.billed_s, queued.instance_type) == ("pending", None, "Standard_NC4as_T4_v3")
    assert f"az ml job stream -n {name}" in queued.message
    for status, state in (("Running", "running"), ("Completed", "completed"), ("Failed", "failed")):
        jobs.jobs[name]._status = status
        assert azure.status(name, values).state == state
    with pytest.raises(Exception, match=r"holds no job\.json"):
        azure.download(name, values, tmp_path / "empty")
    jobs.results = {"job.json": b"{}", "reports/eval.json": b"{}", f"outputs/{RUN}/config.yaml": b"x"}
    folder = azure.download(name, values, tmp_path / "fetched")
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) == [
        "job.json",
        f"outputs/{RUN}/config.yaml",
        "reports/eval.json",
    ]
    assert jobs.calls[-1][2] == {"download_path": str(tmp_path / "fetched"), "output_name": "results"}
    with pytest.raises(DeploySettingsError, match="not a job of this project"):
        azure.cancel(name, azure.settings(ENVIRON, project="another-project"))
    assert "begin_cancel" not in [call[0] for call in jobs.calls]
    azure.cancel(name, values)
    assert jobs.calls[-1][:2] == ("begin_cancel", (name,))
