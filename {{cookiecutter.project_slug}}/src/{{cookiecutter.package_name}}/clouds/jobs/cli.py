"""The `cloud` commands of training jobs: train a config as a cloud GPU job, follow it, fetch it, cancel it.

    <project> cloud train --config configs/gpu.yaml [key=value ...] [--detach]
    <project> cloud status JOB
    <project> cloud fetch JOB | path/to/run.zip
    <project> cloud cancel JOB

The target is the training module of the cloud chosen at bake time (clouds/<cloud>/training.py), imported
below. DRY_RUN=1 prints the cost check and every call with its arguments and creates nothing. Settings, the
cost cap and bad input end with exit 2 before anything is created; a job that fails ends with exit 1.
"""

from __future__ import annotations

import importlib
import json
import os
import tempfile
import time
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import Annotated

import typer

from ...config import load_config
from ...errors import ProjectError
from .. import cli as cloud_cli
from ..cli import cloud_app, import_and_report
from ..deploy import print_call
from ..settings import read_environment
from .job import JobSpec, JobStatus, check_cost, job_spec, price_of

# The cloud chosen at bake time: the bake keeps exactly one of these lines.
# >>> aws
CLOUD = "aws"
# <<< aws
# >>> gcp
CLOUD = "gcp"
# <<< gcp
# >>> azure
CLOUD = "azure"
# <<< azure
# >>> hf_spaces
CLOUD = "hf_spaces"
# <<< hf_spaces
JOB_RECORDS = Path("outputs/cloud-jobs")  # one JSON per job: what `fetch` needs for the cost (instance, price)
POLL_S = float(os.environ.get("CLOUD_POLL_S", "30"))


def _require_target() -> ModuleType:
    """The training module of the cloud chosen at bake time (clouds/<cloud>/training.py)."""
    return importlib.import_module(f"..{CLOUD}.training", __package__)


def dry_run() -> bool:
    return os.environ.get("DRY_RUN", "").strip().lower() in ("1", "true", "yes")


ConfigOption = Annotated[Path, typer.Option("--config", "-c", help="YAML config file, e.g. configs/gpu.yaml.")]
Overrides = Annotated[list[str] | None, typer.Argument(help="Config overrides as key.sub=value.", show_default=False)]
JobArgument = Annotated[str, typer.Argument(help="The job id `cloud train` printed.")]


@cloud_app.command("train")
def train(
    config: ConfigOption = Path("configs/gpu.yaml"),
    overrides: Overrides = None,
    detach: Annotated[bool, typer.Option("--detach", help="Print the job id and return at once.")] = False,
) -> None:
    """Stage the project, data and resolved config, start the job (spot, time cap), follow it, fetch it."""
    target = _require_target()
    resolved = load_config(config, overrides or [])
    values = target.settings(read_environment(), project=resolved.project)
    run_name = resolved.train.run_name or f"{config.stem}-{datetime.now():%Y%m%d-%H%M%S}"
    overrides = [*(overrides or []), f"train.run_name={run_name}"]
    resolved = load_config(config, overrides)
    with tempfile.TemporaryDirectory(prefix="cloud-staging-") as scratch:
        spec = job_spec(
            values,
            target=target.TARGET,
            project=resolved.project,
            run_name=run_name,
            config_name=config.stem,
            staging=Path(scratch) / "staging",
        )
        check_cost(spec, echo=typer.echo)  # before anything is made, dry run or not
        from .staging import stage_inputs

        stage_inputs(resolved, config, overrides, spec.staging)
        if dry_run():
            _print_plan(target, spec, values)
            return
        job_id = target.submit(spec, values)
    _record_job(job_id, spec)
    typer.secho(f"job: {job_id}", fg=typer.colors.GREEN)
    if detach:
        typer.echo(f"follow it: cloud status {job_id}; then: cloud fetch {job_id}")
        return
    final = _follow(target, job_id, values)
    if final.state != "completed":
        raise ProjectError(f"job {job_id} ended {final.state}: {final.message}")
    _fetch_job(target, job_id, values)


def _print_plan(target: ModuleType, spec: JobSpec, values: dict[str, str]) -> None:
    """DRY_RUN: every call of the submission with its arguments, then the wait and the fetch."""
    typer.echo("DRY_RUN=1: nothing is created; the calls `cloud train` would make:")
    for service, operation, kwargs in target.job_calls(spec, values):
        print_call(service, operation, kwargs)
    typer.echo(
        f"+ wait: {target.TARGET} status every {POLL_S:g} s until completed, failed or stopped (log lines shown)"
    )
    typer.echo(
        f"+ fetch: {target.TARGET} download of the job's output, then import into MLflow, promotion gate, report"
    )


def _record_job(job_id: str, spec: JobSpec) -> None:
    price = price_of(spec)
    record = {
        "job_id": job_id,
        "target": spec.target,
        "instance_type": spec.instance_type,
        "instance_count": spec.instance_count,
        "region": spec.region,
        "spot": spec.spot,
        "usd_per_hour": price.usd_per_hour,
        "price_source": price.source,
        "run_name": spec.run_name,
    }
    JOB_RECORDS.mkdir(parents=True, exist_ok=True)
    (JOB_RECORDS / f"{job_id}.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def _follow(target: ModuleType, job_id: str, values: dict[str, str]) -> JobStatus:
    """Poll the job until it ends, printing its log lines under a live status line; returns the last status."""
    from rich.console import Console

    console, started = Console(stderr=True), time.monotonic()
    with console.status(f"{job_id}: starting") as live:
        while True:
            current = target.status(job_id, values)
            for line in current.log_lines:
                console.print(line, markup=False, highlight=False)
            elapsed = int(time.monotonic() - started)
            billed = f", billed {current.billed_s} s" if current.billed_s is not None else ""
            live.update(f"{job_id}: {current.state} {current.message} ({elapsed // 60}m{elapsed % 60:02d}s{billed})")
            if current.finished:
                return current
            time.sleep(POLL_S)


@cloud_app.command("status")
def status(job: JobArgument) -> None:
    """The job's state, billed seconds and cost so far, and its log lines."""
    target = _require_target()
    values = target.settings(read_environment(), project=_project())
    current = target.status(job, values)
    for line in current.log_lines:
        typer.echo(line)
    billed = "" if current.billed_s is None else f", billed {current.billed_s} s"
    typer.echo(f"{job}: {current.state} ({current.message}){billed}, {current.instance_type} {current.region}")


def _project() -> str:
    """The project name from the default config (settings defaults such as bucket names use it)."""
    for candidate in (Path("configs/gpu.yaml"), Path("configs/smoke.yaml")):
        if candidate.is_file():
            return load_config(candidate).project
    return Path.cwd().name


def fetch_job(job_id: str) -> None:
    """`cloud fetch JOB`: download the job's results and import them (clouds/cli.py's `fetch` calls this)."""
    target = _require_target()
    values = target.settings(read_environment(), project=_project())
    _fetch_job(target, job_id, values)


cloud_cli.fetch_job = fetch_job  # plugs `cloud fetch JOB` into the core's `cloud fetch`


def _fetch_job(target: ModuleType, job_id: str, values: dict[str, str]) -> None:
    record_file = JOB_RECORDS / f"{job_id}.json"
    record = json.loads(record_file.read_text(encoding="utf-8")) if record_file.is_file() else {"job_id": job_id}
    current = target.status(job_id, values)
    record |= {"target": target.TARGET, "billed_s": current.billed_s}
    record.setdefault("instance_type", current.instance_type)
    record.setdefault("region", current.region)
    with tempfile.TemporaryDirectory(prefix="cloud-fetch-") as scratch:
        folder = target.download(job_id, values, Path(scratch))
        import_and_report(folder, job=record)


@cloud_app.command("cancel")
def cancel(job: JobArgument) -> None:
    """Stop the job (only one `cloud train` started: tagged/labelled as made by this project)."""
    target = _require_target()
    values = target.settings(read_environment(), project=_project())
    if dry_run():
        typer.echo(f"DRY_RUN=1: would stop {target.TARGET} job {job} if this project made it")
        return
    target.cancel(job, values)
    typer.echo(f"stopping {job}")
