"""Hugging Face Jobs target (clouds/hf_spaces/training.py) against a recording fake HfApi: every call is bound to the
installed huggingface_hub's own method signature, so a renamed or missing argument fails here."""

import inspect
import shlex
from pathlib import Path

import pytest
from huggingface_hub import HfApi, JobInfo

from {{ cookiecutter.package_name }}.clouds.hf_spaces import training as hf_jobs
from {{ cookiecutter.package_name }}.clouds.jobs.job import (
    PRICES,
    CostCapError,
    JobSpec,
    check_cost,
    job_spec,
)
from {{ cookiecutter.package_name }}.clouds.settings import DeploySettingsError

TOKEN = "hf_" + "a" * 30
ENVIRON = {"HF_TOKEN": TOKEN, "HF_JOBS_NAMESPACE": "ada"}
RUN = "gpu-251130-070000"


def job_info(job_id: str, stage: str, **fields) -> JobInfo:
    """A JobInfo as the Hub's API returns it (camelCase keys)."""
    owner = {"id": "1", "name": "ada", "type": "user"}
    status = {"stage": stage, "message": None}
    return JobInfo(id=job_id, status=status, owner=owner, endpoint="https://huggingface.co", **fields)


class FakeHfApi:
    """Records each call after binding it to HfApi's real signature; keeps jobs, logs and repo files."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict]] = []
        self.jobs: dict[str, JobInfo] = {}
        self.logs: list[str] = []
        self.repo_files: dict[str, bytes] = {}

    def _record(self, name: str, **kwargs) -> None:
        inspect.signature(getattr(HfApi, name)).bind(None, **kwargs)
        self.calls.append((name, kwargs))

    def create_repo(self, **kwargs):
        self._record("create_repo", **kwargs)

    def upload_folder(self, **kwargs):
        self._record("upload_folder", **kwargs)

    def run_job(self, **kwargs) -> JobInfo:
        self._record("run_job", **kwargs)
        info = job_info(f"job{len(self.jobs) + 1}", "SCHEDULING", labels=kwargs["labels"], flavor=kwargs["flavor"])
        self.jobs[info.id] = info
        return info

    def inspect_job(self, **kwargs) -> JobInfo:
        self._record("inspect_job", **kwargs)
        return self.jobs[kwargs["job_id"]]

    def fetch_job_logs(self, **kwargs):
        self._record("fetch_job_logs", **kwargs)
        return iter(list(self.logs))

    def cancel_job(self, **kwargs) -> None:
        self._record("cancel_job", **kwargs)

    def snapshot_download(self, **kwargs) -> str:
        self._record("snapshot_download", **kwargs)
        prefix = kwargs["allow_patterns"][0].removesuffix("*")
        for name, content in self.repo_files.items():
            if name.startswith(prefix):
                (Path(kwargs["local_dir"]) / name).parent.mkdir(parents=True, exist_ok=True)
                (Path(kwargs["local_dir"]) / name).write_bytes(content)
        return kwargs["local_dir"]


@pytest.fixture
def api(monkeypatch) -> FakeHfApi:
    fake = FakeHfApi()
    monkeypatch.setattr(hf_jobs, "hf_api", lambda values: fake)
    return fake


@pytest.fixture
def staging(tmp_path) -> Path:
    folder = tmp_path / "staging"
    folder.mkdir()
    for name in ("config.yaml", "run.sh", "project.tar.gz"):
        (folder / name).write_text(f"content of {name}\n")
    return folder


def make_spec(staging: Path, **overrides) -> JobSpec:
    values = hf_jobs.settings({**ENVIRON, **overrides}, project="shop-assistant")
    return job_spec(
        values,
        target=hf_jobs.TARGET,
        project="shop-assistant",
        run_name=RUN,
        config_name="gpu",
        staging=staging,
    )


def test_settings_name_missing_variables_refuse_unknown_flavors_and_turn_spot_off() -> None:
    with pytest.raises(DeploySettingsError) as missing:
        hf_jobs.settings({}, project="shop-assistant")
    assert "HF_TOKEN is not set" in str(missing.value) and "HF_JOBS_NAMESPACE is not set" in str(missing.value)
    assert "HF_JOBS_REPO" not in str(missing.value)  # its default needs no namespace to be valid
    custom = hf_jobs.settings({**ENVIRON, "HF_JOBS_REPO": "team/runs"}, project="shop-assistant")
    assert custom["HF_JOBS_REPO"] == "team/runs"
    with pytest.raises(DeploySettingsError, match=r"HF_TOKEN=\(hidden\) must be a Hugging Face token"):
        hf_jobs.settings({**ENVIRON, "HF_TOKEN": "secret-value"}, project="shop-assistant")
    with pytest.raises(DeploySettingsError, match=r"CLOUD_INSTANCE_TYPE=t4 is not a Jobs flavor; one of: .*t4-small"):
        hf_jobs.settings({**ENVIRON, "CLOUD_INSTANCE_TYPE": "t4"}, project="shop-assistant")
    values = hf_jobs.settings({**ENVIRON, "CLOUD_SPOT": "true"}, project="shop-assistant")
    assert (values["HF_JOBS_REPO"], values["CLOUD_INSTANCE_TYPE"]) == ("ada/shop-assistant-cloud-runs", "t4-small")
    assert values["CLOUD_SPOT"] == "false"  # no spot tier on Hugging Face Jobs


def test_every_default_flavor_price_is_sourced_and_the_cap_refuses_more(staging) -> None:
    price = PRICES["hf-jobs"][hf_jobs.DEFAULT_INSTANCE]
    assert price.source == "https://huggingface.co/docs/hub/jobs-pricing" and price.usd_per_hour == 0.40
    lines: list[str] = []
    assert check_cost(make_spec(staging), echo=lines.append) == pytest.approx(0.40)
    assert "t4-small (hf-jobs, ), on-demand" in lines[0]
    with pytest.raises(CostCapError, match="above CLOUD_MAX_COST_USD=5"):
        check_cost(make_spec(staging, CLOUD_INSTANCE_TYPE="a100-large", CLOUD_MAX_RUNTIME_H="3"), echo=lines.append)


def test_job_calls_bind_to_the_installed_hf_api_and_never_show_the_token(staging) -> None:
    values = hf_jobs.settings(ENVIRON, project="shop-assistant")
    calls = hf_jobs.job_calls(make_spec(staging), values)
    assert [operation for _, operation, _ in calls] == ["create_repo", "upload_folder", "run_job"]
    for _, operation, arguments in calls:
        inspect.signature(getattr(HfApi, operation)).bind(None, **arguments)
    assert calls[0][2] == {
        "repo_id": "ada/shop-assistant-cloud-runs",
        "repo_type": "dataset",
        "private": True,
        "exist_ok": True,
    }
    assert calls[1][2]["path_in_repo"] == f"{RUN}/inputs" and calls[1][2]["folder_path"] == str(staging)
    run = calls[2][2]
    assert (run["flavor"], run["timeout"], run["namespace"]) == ("t4-small", 3600, "ada")
    assert run["labels"] == {"made-by": "shop-assistant", "run": RUN}
    assert run["secrets"] == {"HF_TOKEN": hf_jobs.TOKEN_PLACEHOLDER} and TOKEN not in repr(calls)
    script = run["command"][2].splitlines()
    assert script[2] == (
        f"hf download ada/shop-assistant-cloud-runs --repo-type dataset --include '{RUN}/inputs/*' --local-dir /job"
    )
    assert shlex.split(script[3]) == [
        "bash",
        f"/job/{RUN}/inputs/run.sh",
        "--output",
        "/job/output",
        "--checkpoints",
        "/job/checkpoints",
        "--evaluate",
    ]
    assert script[4].startswith(f"hf upload ada/shop-assistant-cloud-runs /job/output {RUN}/output --repo-type dataset")


def test_submit_passes_the_real_token_only_as_a_secret(staging, api) -> None:
    job_id = hf_jobs.submit(make_spec(staging), hf_jobs.settings(ENVIRON, project="shop-assistant"))
    assert job_id == "job1" and [name for name, _ in api.calls] == ["create_repo", "upload_folder", "run_job"]
    run = api.calls[-1][1]
    assert run["secrets"] == {"HF_TOKEN": TOKEN}
    assert TOKEN not in repr({key: value for key, value in run.items() if key != "secrets"})


def test_status_maps_stages_and_returns_only_new_log_lines(staging, api) -> None:
    values = hf_jobs.settings(ENVIRON, project="shop-assistant")
    job_id = hf_jobs.submit(make_spec(staging), values)
    api.logs = ["installing", "step 10 loss 1.9"]
    first = hf_jobs.status(job_id, values)
    assert (first.state, first.instance_type) == ("pending", "t4-small")
    assert first.log_lines == ["installing", "step 10 loss 1.9"]
    api.logs.append("step 20 loss 1.2")
    labels = api.jobs[job_id].labels
    api.jobs[job_id] = job_info(job_id, "COMPLETED", labels=labels, flavor="t4-small", durations={"runningSecs": 642})
    done = hf_jobs.status(job_id, values)
    assert (done.state, done.log_lines, done.billed_s) == ("completed", ["step 20 loss 1.2"], 642)
    api.jobs[job_id] = job_info(job_id, "ERROR", labels=labels)
    assert hf_jobs.status(job_id, values).state == "failed"


def test_download_fetches_the_run_output_and_refuses_a_job_without_results(staging, api, tmp_path) -> None:
    values = hf_jobs.settings(ENVIRON, project="shop-assistant")
    job_id = hf_jobs.submit(make_spec(staging), values)
    with pytest.raises(Exception, match=f"no results in ada/shop-assistant-cloud-runs/{RUN}/output"):
        hf_jobs.download(job_id, values, tmp_path / "empty")
    api.repo_files = {
        f"{RUN}/inputs/config.yaml": b"not fetched",
        f"{RUN}/output/job.json": b"{}",
        f"{RUN}/output/reports/eval.json": b"{}",
    }
    folder = hf_jobs.download(job_id, values, tmp_path / "fetched")
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) == [
        "job.json",
        "reports/eval.json",
    ]
    assert not (tmp_path / "fetched" / RUN / "inputs").exists()


def test_cancel_touches_only_jobs_labelled_by_this_project(staging, api) -> None:
    values = hf_jobs.settings(ENVIRON, project="shop-assistant")
    job_id = hf_jobs.submit(make_spec(staging), values)
    with pytest.raises(DeploySettingsError, match="not a job of this project"):
        hf_jobs.cancel(job_id, hf_jobs.settings(ENVIRON, project="another-project"))
    assert "cancel_job" not in [name for name, _ in api.calls]
    hf_jobs.cancel(job_id, values)
    assert api.calls[-1] == ("cancel_job", {"job_id": job_id, "namespace": "ada"})
