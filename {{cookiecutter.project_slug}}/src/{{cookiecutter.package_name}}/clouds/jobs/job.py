"""What every cloud target shares: the job's description, the price table, the cost cap, the job's command.

The cost check runs before anything is created (dry runs too): it prints the instance, its on-demand price
per hour with the price's source and date, and the worst case (price x instances x max run time), and refuses
a job whose worst case is above CLOUD_MAX_COST_USD. The platform's own stopping condition (SageMaker
MaxRuntimeInSeconds, Vertex timeout, Azure limits.timeout, HF Jobs timeout) is set from the same run time, so
the cap also holds for a job that hangs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ...errors import BadInput
from ..settings import Var

TARGETS = ("aws", "gcp", "azure", "hf-jobs")
JobState = Literal["pending", "running", "stopping", "completed", "failed", "stopped"]
FINAL_STATES = ("completed", "failed", "stopped")


class CostCapError(BadInput, ValueError):
    """The job's worst-case cost is above CLOUD_MAX_COST_USD, or its instance has no known price; nothing
    was created."""


@dataclass(frozen=True)
class JobSpec:
    """One cloud training job, as the target modules submit it."""

    project: str
    run_name: str
    config_name: str
    target: str
    instance_type: str
    gpu_count: int
    """GPUs per instance: above 1 the job trains through the multi-GPU launcher."""
    instance_count: int
    """1; several = multi-node training."""
    spot: bool
    max_runtime_s: int
    max_cost_usd: float
    staging: Path
    """The local folder `staging.stage_inputs` wrote: what the job uploads."""
    region: str


@dataclass(frozen=True)
class Price:
    """An on-demand price per instance-hour and where it was read."""

    usd_per_hour: float
    source: str
    """The page that lists it."""
    checked: str
    """ISO date the figure was entered."""
    verified: bool = False
    """True only when the figure was read on `source` that day; the cost check says when it was not."""

    def describe(self) -> str:
        caveat = "" if self.verified else ", not re-read from the source: check it there"
        return f"{self.usd_per_hour:.3f} USD/h on-demand ({self.source}, {self.checked}{caveat})"


# On-demand prices, per instance and hour. Spot / preemptible capacity is cheaper (often 60-70% less) but its
# price varies by hour and zone, so the cap uses the on-demand price: the worst case. Prices change: check the
# source before relying on a figure, and add the instance you use with its own source and date.
# aws: SageMaker *training* prices (not EC2's), us-east-1, the "On-Demand Pricing" tab, "Training". That page is
# drawn by JavaScript: the figures were entered on the `checked` date without a live copy of it to re-read, so
# check them (deploy/aws/README.md shows the `aws pricing get-products` command) and correct the table.
_SAGEMAKER_PRICING = "https://aws.amazon.com/sagemaker/ai/pricing/"
_VERTEX_PRICING = "https://cloud.google.com/vertex-ai/pricing#custom-trained_models"
_AZURE_VM_PRICING = "https://azure.microsoft.com/en-us/pricing/details/virtual-machines/linux/"
_HF_JOBS_PRICING = "https://huggingface.co/docs/hub/jobs-pricing"
PRICES: dict[str, dict[str, Price]] = {
    "aws": {
        "ml.g4dn.xlarge": Price(0.736, _SAGEMAKER_PRICING, "2026-11-30"),  # 1x T4 16 GB: fp16 only, no bf16
        "ml.g5.xlarge": Price(1.408, _SAGEMAKER_PRICING, "2026-11-30"),  # 1x A10G 24 GB: bf16, gpu.yaml fits
        "ml.g5.2xlarge": Price(1.515, _SAGEMAKER_PRICING, "2026-11-30"),  # 1x A10G, 8 vCPU / 32 GB RAM
        "ml.g5.12xlarge": Price(7.09, _SAGEMAKER_PRICING, "2026-11-30"),  # 4x A10G: multi-GPU (nproc 4)
    },
    # gcp: Vertex AI custom training prices (machine + GPU, billed per second; not Compute Engine's, which are
    # about 15% lower), us-central1. Key: <machine type>+<accelerator>.
    "gcp": {
        "g2-standard-4+NVIDIA_L4": Price(0.8129, _VERTEX_PRICING, "2026-11-30"),  # 1x L4 24 GB: bf16, gpu.yaml fits
        "n1-standard-4+NVIDIA_TESLA_T4": Price(0.621, _VERTEX_PRICING, "2026-11-30"),  # 0.2185 + T4 0.4025: fp16 only
    },
    # azure: serverless compute bills the VM's pay-as-you-go price (Azure ML adds no charge), Linux, East US.
    "azure": {
        "Standard_NC4as_T4_v3": Price(0.526, _AZURE_VM_PRICING, "2026-11-30"),  # 1x T4 16 GB, 4 vCPU, 28 GB
        "Standard_NC8as_T4_v3": Price(0.752, _AZURE_VM_PRICING, "2026-11-30"),  # 1x T4, 8 vCPU, 56 GB
        "Standard_NC64as_T4_v3": Price(4.352, _AZURE_VM_PRICING, "2026-11-30"),  # 4x T4: multi-GPU (nproc 4)
        "Standard_NC24ads_A100_v4": Price(3.673, _AZURE_VM_PRICING, "2026-11-30"),  # 1x A100 80 GB: bf16
    },
    # hf-jobs: Hugging Face Jobs, billed per minute while starting or running. No spot tier exists.
    "hf-jobs": {
        # t4-small and t4-medium were read on the jobs-pricing page (Hub docs) on that date.
        "t4-small": Price(0.40, _HF_JOBS_PRICING, "2026-11-30", verified=True),  # 1x T4 16 GB: fp16 only
        "t4-medium": Price(0.60, _HF_JOBS_PRICING, "2026-11-30", verified=True),  # 1x T4, 8 vCPU, 30 GB
        "l4x1": Price(0.80, _HF_JOBS_PRICING, "2026-11-30"),  # 1x L4 24 GB: bf16
        "a10g-small": Price(1.00, _HF_JOBS_PRICING, "2026-11-30"),  # 1x A10G 24 GB: bf16
        "a10g-large": Price(1.50, _HF_JOBS_PRICING, "2026-11-30"),  # 1x A10G, 12 vCPU, 46 GB
        "l4x4": Price(3.80, _HF_JOBS_PRICING, "2026-11-30"),  # 4x L4: multi-GPU (nproc 4)
        "a100-large": Price(2.50, _HF_JOBS_PRICING, "2026-11-30"),  # 1x A100 80 GB
    },
}

JOB_VARIABLES = [
    Var(
        "CLOUD_MAX_RUNTIME_H",
        "the job's maximum run time in hours: the platform stops it then",
        default="1",
        pattern=r"\d+(\.\d+)?",
        rule="must be a number of hours such as 1 or 0.5",
    ),
    Var(
        "CLOUD_MAX_COST_USD",
        "the most the job may cost in USD (worst case: on-demand price x instances x run time)",
        default="5",
        pattern=r"\d+(\.\d+)?",
        rule="must be a number of US dollars such as 5 or 2.50",
    ),
    Var(
        "CLOUD_SPOT",
        "true: spot / preemptible capacity (cheaper, may be interrupted and resumed); false: on-demand",
        default="true",
        pattern=r"(?i)true|false|1|0|yes|no",
        rule="must be true or false",
    ),
    Var(
        "CLOUD_INSTANCE_TYPE",
        "the training instance type (machine, flavor) of the job",
        default="{default_instance}",
    ),
]


def flag(value: str) -> bool:
    """A CLOUD_SPOT-style setting as a bool (the Var pattern has already refused anything else)."""
    return value.strip().lower() in ("true", "1", "yes")


def price_of(spec: JobSpec) -> Price:
    """The instance's price from PRICES; CostCapError when the table has none (a cap needs a price)."""
    known = PRICES.get(spec.target, {})
    if spec.instance_type not in known:
        choices = ", ".join(sorted(known)) or "none yet"
        raise CostCapError(
            f"CLOUD_INSTANCE_TYPE={spec.instance_type}: no price known for it on {spec.target}, so the cost cap "
            f"cannot be checked (known: {choices}). Pick one of those, or add its on-demand price with its "
            "source and date to PRICES in clouds/jobs/job.py. Nothing was created."
        )
    return known[spec.instance_type]


def worst_case_cost(spec: JobSpec) -> float:
    """USD if every instance runs for the whole max run time at the on-demand price."""
    return price_of(spec).usd_per_hour * spec.instance_count * spec.max_runtime_s / 3600


def check_cost(spec: JobSpec, *, echo=print) -> float:
    """Print the instance, its price with source and date, and the worst case; raise CostCapError when the worst
    case is above spec.max_cost_usd. Returns the worst case in USD."""
    price = price_of(spec)
    worst = worst_case_cost(spec)
    hours = spec.max_runtime_s / 3600
    count = f"{spec.instance_count} x " if spec.instance_count > 1 else ""
    echo(
        f"instance: {count}{spec.instance_type} ({spec.target}, {spec.region}), {'spot' if spec.spot else 'on-demand'}"
    )
    echo(f"price: {price.describe()}")
    echo(f"worst case: {worst:.2f} USD ({hours:g} h cap), cost cap: {spec.max_cost_usd:.2f} USD")
    if worst > spec.max_cost_usd:
        raise CostCapError(
            f"the worst-case cost {worst:.2f} USD ({count}{spec.instance_type} at {price.usd_per_hour:.3f} USD/h for "
            f"{hours:g} h) is above CLOUD_MAX_COST_USD={spec.max_cost_usd:g}. Lower CLOUD_MAX_RUNTIME_H, pick a "
            "cheaper CLOUD_INSTANCE_TYPE, or raise CLOUD_MAX_COST_USD. Nothing was created."
        )
    return worst


def job_cost(job: dict[str, Any]) -> float | None:
    """A fetched job's price: billed seconds x on-demand price x instances, in USD; None when either is unknown."""
    if job.get("billed_s") is None or job.get("usd_per_hour") is None:
        return None
    return round(float(job["billed_s"]) / 3600 * float(job["usd_per_hour"]) * int(job.get("instance_count") or 1), 4)


@dataclass(frozen=True)
class EntrypointOptions:
    """The in-job entrypoint's options (clouds/entrypoint.py), as `train_command` writes them."""

    output: str  # the folder the platform uploads when the job ends
    checkpoints: str  # the folder the platform keeps across a restart
    nproc: int = 1  # the GPUs of the instance
    evaluate: bool = True
    config_name: str | None = None  # the staged file is config.yaml; runs keep the user's name
    python: str = "python"


def train_command(config_file: str, overrides: list[str], options: EntrypointOptions) -> list[str]:
    """The command the job runs: the in-job entrypoint (train, evaluate, write what `fetch` imports).
    With nproc > 1 the entrypoint runs its training step through `distributed.launch_command` (one setting: the
    GPUs of the instance), and evaluates in its own single process afterwards."""
    package = __package__.split(".")[0]
    command = [options.python, "-m", f"{package}.clouds.entrypoint", "--config", config_file]
    command += ["--output", options.output, "--checkpoints", options.checkpoints]
    if options.config_name:
        command += ["--config-name", options.config_name]
    if options.nproc > 1:
        command += ["--nproc", str(options.nproc)]
    command.append("--evaluate" if options.evaluate else "--no-evaluate")
    return command + list(overrides)


@dataclass
class JobStatus:
    """What `status` reports about a job."""

    state: JobState
    message: str = ""
    billed_s: int | None = None
    instance_type: str = ""
    region: str = ""
    log_lines: list[str] = field(default_factory=list)
    """Log lines new since the previous call."""

    @property
    def finished(self) -> bool:
        return self.state in FINAL_STATES


def job_spec(
    values: dict[str, str], *, target: str, project: str, run_name: str, config_name: str, staging: Path
) -> JobSpec:
    """A JobSpec from resolved settings (JOB_VARIABLES + the target's VARIABLES), the region among them."""
    return JobSpec(
        project=project,
        run_name=run_name,
        config_name=config_name,
        target=target,
        instance_type=values["CLOUD_INSTANCE_TYPE"],
        gpu_count=int(values.get("CLOUD_GPU_COUNT", "1")),
        instance_count=int(values.get("CLOUD_INSTANCE_COUNT", "1")),
        spot=flag(values["CLOUD_SPOT"]),
        max_runtime_s=round(float(values["CLOUD_MAX_RUNTIME_H"]) * 3600),
        max_cost_usd=float(values["CLOUD_MAX_COST_USD"]),
        staging=staging,
        region=region_of(values),
    )


def region_of(values: dict[str, str]) -> str:
    """The target's region: its setting named *_REGION or *_LOCATION (AWS_REGION, GCP_REGION); "" without one."""
    return next((value for key, value in values.items() if key.endswith(("_REGION", "_LOCATION"))), "")
