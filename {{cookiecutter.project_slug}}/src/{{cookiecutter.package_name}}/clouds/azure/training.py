"""Azure: the training job as an Azure ML command job on serverless GPU compute (no cluster to create or delete).

    DRY_RUN=1 make train-cloud CONFIG=configs/gpu.yaml    # the cost check and the job below, nothing created

The job is an `azure-ai-ml` CommandJob built from the settings alone (no credentials, no network), so the tests
dump it to YAML and load it back through the SDK's job schema. What `submit` sends
(https://learn.microsoft.com/azure/machine-learning/how-to-use-serverless-compute):
- input `staging`: the staged folder (clouds/jobs/staging.py); `create_or_update` uploads it to the workspace's
  default datastore first, and the job mounts it read-only;
- command `bash ${{inputs.staging}}/run.sh --output ${{outputs.results}} --checkpoints ${{outputs.checkpoints}}`;
- serverless compute: `resources` (instance type and count) and no `compute`; `queue_settings.job_tier` "spot"
  (low priority: cheaper, may be preempted) unless CLOUD_SPOT=false ("standard");
- `limits.timeout` = the run-time cap: Azure stops the job then;
- a curated PyTorch environment (ACPT: Azure Container for PyTorch, CUDA included), the project installed by run.sh;
- output `checkpoints` at a fixed datastore folder per project and run (read-write mount): a restarted job, or a
  new job submitted with the same train.run_name, finds the checkpoints there and resumes (clouds/entrypoint.py);
- output `results`: what `download` fetches (the job's named output);
- tag made-by=<project>: `cancel` stops only jobs that carry it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ...errors import ProjectError
from ..jobs.job import JOB_VARIABLES, EntrypointOptions, JobSpec, JobStatus, check_cost, train_command
from ..jobs.staging import LAUNCHER, staged_files
from ..settings import DeploySettingsError, Var, resolve
from .deploy import WORKSPACE_VARIABLES

TARGET = "azure"
# The cheapest GPU VM of Azure ML serverless compute: 1x T4 16 GB (fp16; gpu.yaml's 0.5B model fits), 4 vCPU.
DEFAULT_INSTANCE = "Standard_NC4as_T4_v3"
# A curated environment from the `azureml` registry (az ml environment list --registry-name azureml); its Python
# must satisfy the project's requires-python.
ENVIRONMENT = "azureml://registries/azureml/environments/acpt-pytorch-2.8-cuda12.6/labels/latest"
MADE_BY = "made-by"
# The command's references to the job's inputs and outputs (Azure ML expression syntax, filled in by Azure).
STAGING, RESULTS, CHECKPOINTS = "${{inputs.staging}}", "${{outputs.results}}", "${{outputs.checkpoints}}"

VARIABLES = [
    *WORKSPACE_VARIABLES,
    Var(
        "AZURE_TRAINING_ENVIRONMENT",
        "the job's environment: a curated PyTorch GPU environment, or your own (azureml:<name>@latest)",
        default=ENVIRONMENT,
        pattern=r"azureml:\S+",
        rule="must be an environment reference such as " + ENVIRONMENT,
    ),
    Var(
        "AZURE_EXPERIMENT",
        "the experiment the jobs are grouped under in Azure ML studio",
        default="{project}",
        pattern=r"[\w.-]{1,255}",
        rule="must be letters, digits, _ . and -",
    ),
]


def settings(environ: dict[str, str], *, project: str) -> dict[str, str]:
    """The job settings (JOB_VARIABLES) and this target's, checked together: every problem in one message."""
    values = resolve([*JOB_VARIABLES, *VARIABLES], environ, project=project, default_instance=DEFAULT_INSTANCE)
    if not re.fullmatch(r"Standard_\w+", values["CLOUD_INSTANCE_TYPE"]):
        raise DeploySettingsError(
            f"CLOUD_INSTANCE_TYPE={values['CLOUD_INSTANCE_TYPE']} must be an Azure VM size such as {DEFAULT_INSTANCE}"
        )
    return {**values, "CLOUD_PROJECT": project}


def checkpoint_folder(spec: JobSpec) -> str:
    """The datastore folder of the run's checkpoints: the same for every job of one project and run name."""
    return f"azureml://datastores/workspaceblobstore/paths/{spec.project}/{spec.run_name}/checkpoints/"


def build_job(spec: JobSpec, values: dict[str, str]):  # -> azure.ai.ml.entities.CommandJob
    """The command job (serverless compute, spot queue, time limit, made-by tag), built offline."""
    from azure.ai.ml import Input, Output
    from azure.ai.ml.entities import CommandJob, CommandJobLimits, JobResourceConfiguration, QueueSettings

    options = EntrypointOptions(nproc=spec.gpu_count, output=RESULTS, checkpoints=CHECKPOINTS)
    command = train_command("config.yaml", [], options)
    # The staged run.sh is `python -m <package>.clouds.entrypoint --config config.yaml "$@"`: it gets the rest.
    arguments = command[command.index("config.yaml") + 1 :]
    return CommandJob(
        display_name=f"{spec.project}-{spec.run_name}",
        experiment_name=values["AZURE_EXPERIMENT"],
        command=" ".join(["bash", f"{STAGING}/{LAUNCHER}", *arguments]),
        inputs={"staging": Input(type="uri_folder", path=str(spec.staging), mode="ro_mount")},
        outputs={
            "results": Output(type="uri_folder", mode="rw_mount"),
            "checkpoints": Output(type="uri_folder", mode="rw_mount", path=checkpoint_folder(spec)),
        },
        environment=values["AZURE_TRAINING_ENVIRONMENT"],
        environment_variables={"PYTHONUNBUFFERED": "1", "HF_HUB_DISABLE_TELEMETRY": "1"},
        resources=JobResourceConfiguration(instance_type=spec.instance_type, instance_count=spec.instance_count),
        queue_settings=QueueSettings(job_tier="spot" if spec.spot else "standard"),
        limits=CommandJobLimits(timeout=spec.max_runtime_s),
        tags={MADE_BY: spec.project, "run": spec.run_name},
    )


def job_yaml(job, staging: Path) -> dict[str, Any]:
    """The job as its YAML document (`az ml job create -f` reads the same): plain dicts, the staging folder as the
    local path it is (the SDK's dump writes local paths as if they were assets)."""
    import json

    document = json.loads(json.dumps(job._to_dict()))  # OrderedDicts -> dicts, same order
    document["inputs"]["staging"]["path"] = str(staging)
    return document


def job_calls(spec: JobSpec, values: dict[str, str]) -> list[tuple[str, str, dict[str, Any]]]:
    """(service, operation, arguments) of every call `submit` makes, in order: one create_or_update, which first
    uploads the staging folder's files (listed) to the workspace's datastore."""
    job = job_yaml(build_job(spec, values), spec.staging)
    return [("ml_client.jobs", "create_or_update", {"job": job, "uploads": staged_files(spec.staging)})]


def ml_client(values: dict[str, str]):  # -> MLClient (the tests replace this function with a recording fake)
    """The workspace client, signed in as `az login` / azure/login in CI / a managed identity."""
    from azure.ai.ml import MLClient
    from azure.identity import DefaultAzureCredential

    return MLClient(
        DefaultAzureCredential(),
        subscription_id=values["AZURE_SUBSCRIPTION_ID"],
        resource_group_name=values["AZURE_RESOURCE_GROUP"],
        workspace_name=values["AZURE_ML_WORKSPACE"],
    )


def submit(spec: JobSpec, values: dict[str, str]) -> str:
    """Upload the staging folder and create the job; returns the job's name (Azure makes it unique)."""
    check_cost(spec, echo=lambda _line: None)  # the CLI printed it; a direct call is capped all the same
    created = ml_client(values).jobs.create_or_update(build_job(spec, values))
    return created.name


# Azure ML job statuses -> JobStatus states (https://learn.microsoft.com/azure/machine-learning/how-to-manage-jobs).
STATES = {
    "NotStarted": "pending",
    "Queued": "pending",
    "Preparing": "pending",
    "Provisioning": "pending",
    "Starting": "pending",
    "Running": "running",
    "Finalizing": "running",
    "NotResponding": "running",
    "Paused": "running",
    "CancelRequested": "stopping",
    "Completed": "completed",
    "Failed": "failed",
    "Canceled": "stopped",
}


def status(job_id: str, values: dict[str, str]) -> JobStatus:
    """The job's state. Azure's job API reports neither billed time nor log lines: the message points at the
    studio page and `az ml job stream`, where both are."""
    job = ml_client(values).jobs.get(job_id)
    state = STATES.get(job.status or "", "pending")
    message = f"{job.status}: {job.studio_url or ''} (logs: az ml job stream -n {job_id})"
    resources = job.resources
    instance = getattr(resources, "instance_type", None) or ""
    return JobStatus(state=state, message=message, billed_s=None, instance_type=instance, region="")


def download(job_id: str, values: dict[str, str], dest: Path) -> Path:
    """The job's `results` output into `dest`; returns the folder holding job.json (the entrypoint's output)."""
    ml_client(values).jobs.download(job_id, download_path=str(dest), output_name="results")
    found = sorted(dest.rglob("job.json"))
    if not found:
        raise ProjectError(f"{job_id}: its `results` output holds no job.json (the job did not finish; `cloud status`)")
    return found[0].parent


def cancel(job_id: str, values: dict[str, str]) -> None:
    """Cancel the job, only when it carries this project's made-by tag (another job is left alone)."""
    client = ml_client(values)
    owner = (client.jobs.get(job_id).tags or {}).get(MADE_BY)
    if owner != values["CLOUD_PROJECT"]:
        raise DeploySettingsError(
            f"{job_id}: not a job of this project (tag {MADE_BY}={owner!r}, expected {values['CLOUD_PROJECT']!r}); "
            "nothing was cancelled"
        )
    client.jobs.begin_cancel(job_id)
