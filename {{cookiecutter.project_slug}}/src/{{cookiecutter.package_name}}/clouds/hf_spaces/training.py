"""Hugging Face Jobs: the training job as a Docker job on a Hub GPU flavor (the hf-spaces bake's cloud target).

    DRY_RUN=1 make train-cloud CONFIG=configs/gpu.yaml    # the cost check and every call below, nothing created

What `submit` does (`job_calls` lists it, in order; huggingface_hub's Jobs API,
https://huggingface.co/docs/huggingface_hub/guides/jobs):
1. creates (or reuses) a private dataset repo <HF_JOBS_REPO> for the job's files;
2. uploads the staged inputs (clouds/jobs/staging.py) to <run>/inputs/ in it;
3. `run_job` on the flavor CLOUD_INSTANCE_TYPE with `timeout` = the run-time cap, HF_TOKEN passed as a job
   secret (never in the command, the environment or a log), labels made-by=<project> and run=<run>. The job's
   command downloads the inputs, runs the staged launcher, and pushes the results to <run>/output/ of the repo,
   where `download` fetches them.

Hugging Face Jobs has no spot or preemptible tier: every job is on-demand (CLOUD_SPOT is ignored, and the cost
check says so), so no checkpoint has to outlive the job; checkpoints stay on the job's own disk.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

from ...errors import ProjectError
from ..jobs.job import JOB_VARIABLES, EntrypointOptions, JobSpec, JobStatus, check_cost, train_command
from ..jobs.staging import LAUNCHER
from ..settings import DeploySettingsError, Var, resolve

TARGET = "hf-jobs"
DEFAULT_INSTANCE = "t4-small"  # the cheapest GPU flavor: 1x T4 16 GB (fp16), 4 vCPU, 15 GB; gpu.yaml's 0.5B model fits
# A Docker Hub image with CUDA and a torch the project's range accepts; its Python (3.11) must satisfy the project's
# requires-python.
IMAGE = "pytorch/pytorch:2.7.1-cuda12.8-cudnn9-runtime"
MADE_BY = "made-by"
TOKEN_PLACEHOLDER = "<HF_TOKEN: from the settings, never printed>"
WORK = "/job"  # the job's scratch folder: inputs, checkpoints, output

VARIABLES = [
    Var(
        "HF_TOKEN",
        "a Hugging Face access token with write access (https://huggingface.co/settings/tokens); Jobs need "
        "a PRO account or an organisation with credits",
        pattern=r"hf_\w{20,}",
        rule="must be a Hugging Face token (hf_...)",
        secret=True,
    ),
    Var(
        "HF_JOBS_NAMESPACE",
        "the Hub user or organisation the jobs run under (and are billed to)",
        pattern=r"[A-Za-z0-9][\w.-]{0,95}",
        rule="must be a user or organisation name",
    ),
    Var(
        "HF_JOBS_REPO",
        "the private dataset repo that carries the job's inputs and results: <name> (under HF_JOBS_NAMESPACE) or "
        "<owner>/<name>",
        default="{project}-cloud-runs",
        pattern=r"([A-Za-z0-9][\w.-]{0,95}/)?[A-Za-z0-9][\w.-]{0,95}",
        rule="must be <name> or <owner>/<name>",
    ),
    Var(
        "HF_JOBS_IMAGE",
        "the job's Docker image: CUDA + PyTorch, Python the project accepts",
        default=IMAGE,
        pattern=r"[\w./:-]+",
        rule="must be a Docker image reference such as " + IMAGE,
    ),
]


def settings(environ: dict[str, str], *, project: str) -> dict[str, str]:
    """The job settings (JOB_VARIABLES) and this target's, checked together: every problem in one message.
    CLOUD_SPOT is set to false: Hugging Face Jobs has no spot tier."""
    from huggingface_hub import JobHardware

    values = resolve([*JOB_VARIABLES, *VARIABLES], environ, project=project, default_instance=DEFAULT_INSTANCE)
    flavors = [flavor.value for flavor in JobHardware]
    if values["CLOUD_INSTANCE_TYPE"] not in flavors:
        raise DeploySettingsError(
            f"CLOUD_INSTANCE_TYPE={values['CLOUD_INSTANCE_TYPE']} is not a Jobs flavor; one of: {', '.join(flavors)}"
        )
    repo = values["HF_JOBS_REPO"]
    if "/" not in repo:
        repo = f"{values['HF_JOBS_NAMESPACE']}/{repo}"
    return {**values, "HF_JOBS_REPO": repo, "CLOUD_SPOT": "false", "CLOUD_PROJECT": project}


def job_script(spec: JobSpec, values: dict[str, str]) -> str:
    """The job's shell script: fetch the inputs, run the launcher, push the results (the `hf` CLI reads HF_TOKEN)."""
    repo, run = shlex.quote(values["HF_JOBS_REPO"]), spec.run_name
    options = EntrypointOptions(nproc=spec.gpu_count, output=f"{WORK}/output", checkpoints=f"{WORK}/checkpoints")
    command = train_command("config.yaml", [], options)
    # The staged run.sh is `python -m <package>.clouds.entrypoint --config config.yaml "$@"`: it gets the rest.
    arguments = shlex.join(command[command.index("config.yaml") + 1 :])
    return "\n".join(
        [
            "set -euo pipefail",
            "pip install --quiet --no-cache-dir 'huggingface_hub>=1.0'",
            f"hf download {repo} --repo-type dataset --include {shlex.quote(run + '/inputs/*')} --local-dir {WORK}",
            f"bash {WORK}/{run}/inputs/{LAUNCHER} {arguments}",
            f"hf upload {repo} {WORK}/output {shlex.quote(run + '/output')} --repo-type dataset"
            f" --commit-message {shlex.quote('results of ' + run)}",
        ]
    )


def job_calls(spec: JobSpec, values: dict[str, str]) -> list[tuple[str, str, dict[str, Any]]]:
    """(service, operation, arguments) of every HfApi call `submit` makes, in order. The token is a placeholder
    here (this is what DRY_RUN prints); `submit` passes the real one as the job's secret."""
    repo = values["HF_JOBS_REPO"]
    return [
        ("hf_api", "create_repo", {"repo_id": repo, "repo_type": "dataset", "private": True, "exist_ok": True}),
        (
            "hf_api",
            "upload_folder",
            {
                "repo_id": repo,
                "repo_type": "dataset",
                "folder_path": str(spec.staging),
                "path_in_repo": f"{spec.run_name}/inputs",
                "commit_message": f"inputs of {spec.run_name}",
            },
        ),
        (
            "hf_api",
            "run_job",
            {
                "image": values["HF_JOBS_IMAGE"],
                "command": ["bash", "-c", job_script(spec, values)],
                "env": {"PYTHONUNBUFFERED": "1", "HF_HUB_DISABLE_TELEMETRY": "1"},
                "secrets": {"HF_TOKEN": TOKEN_PLACEHOLDER},
                "flavor": spec.instance_type,
                "timeout": spec.max_runtime_s,
                "labels": {MADE_BY: spec.project, "run": spec.run_name},
                "namespace": values["HF_JOBS_NAMESPACE"],
            },
        ),
    ]


def hf_api(values: dict[str, str]):  # -> HfApi (the tests replace this function with a recording fake)
    from huggingface_hub import HfApi

    return HfApi(token=values["HF_TOKEN"])


def submit(spec: JobSpec, values: dict[str, str]) -> str:
    """Create the repo, upload the inputs, start the job; returns the job id."""
    check_cost(spec, echo=lambda _line: None)  # the CLI printed it; a direct call is capped all the same
    api = hf_api(values)
    info = None
    for _service, operation, arguments in job_calls(spec, values):
        if operation == "run_job":
            arguments = {**arguments, "secrets": {"HF_TOKEN": values["HF_TOKEN"]}}
        info = getattr(api, operation)(**arguments)
    return info.id


# Job stages -> JobStatus states. SCHEDULING: waiting for the flavor's hardware.
STATES = {
    "SCHEDULING": "pending",
    "RUNNING": "running",
    "COMPLETED": "completed",
    "ERROR": "failed",
    "CANCELED": "stopped",
    "DELETED": "stopped",
}
_LINES_SEEN: dict[str, int] = {}  # job id -> log lines already returned: each status call returns the new ones


def status(job_id: str, values: dict[str, str]) -> JobStatus:
    """The job's stage, its running seconds (Jobs bill while starting and running) and its new log lines."""
    api = hf_api(values)
    info = api.inspect_job(job_id=job_id, namespace=values["HF_JOBS_NAMESPACE"])
    stage = str(getattr(info.status.stage, "value", info.status.stage))
    lines = list(api.fetch_job_logs(job_id=job_id, namespace=values["HF_JOBS_NAMESPACE"]))
    seen = _LINES_SEEN.get(job_id, 0)
    _LINES_SEEN[job_id] = len(lines)
    billed = info.durations.running_secs if info.durations else None
    flavor = str(getattr(info.flavor, "value", info.flavor or ""))
    return JobStatus(
        state=STATES.get(stage, "pending"),
        message=info.status.message or info.url,
        billed_s=billed,
        instance_type=flavor,
        region="",
        log_lines=lines[seen:],
    )


def download(job_id: str, values: dict[str, str], dest: Path) -> Path:
    """The job's results (<run>/output/ of the repo) into `dest`; returns the folder holding them."""
    api = hf_api(values)
    info = api.inspect_job(job_id=job_id, namespace=values["HF_JOBS_NAMESPACE"])
    run = (info.labels or {}).get("run", "")
    if not re.fullmatch(r"[\w.-]+", run):
        raise ProjectError(f"{job_id}: no `run` label; not a job `cloud train` started")
    api.snapshot_download(
        repo_id=values["HF_JOBS_REPO"], repo_type="dataset", allow_patterns=[f"{run}/output/*"], local_dir=str(dest)
    )
    folder = dest / run / "output"
    if not (folder / "job.json").is_file():
        raise ProjectError(
            f"{job_id}: no results in {values['HF_JOBS_REPO']}/{run}/output (the job did not finish: `cloud status`)"
        )
    return folder


def cancel(job_id: str, values: dict[str, str]) -> None:
    """Cancel the job, only when it carries this project's made-by label (another job is left alone)."""
    api = hf_api(values)
    info = api.inspect_job(job_id=job_id, namespace=values["HF_JOBS_NAMESPACE"])
    owner = (info.labels or {}).get(MADE_BY)
    if owner != values["CLOUD_PROJECT"]:
        raise DeploySettingsError(
            f"{job_id}: not a job of this project (label {MADE_BY}={owner!r}, expected {values['CLOUD_PROJECT']!r}); "
            "nothing was cancelled"
        )
    api.cancel_job(job_id=job_id, namespace=values["HF_JOBS_NAMESPACE"])
