"""The `cloud` commands: bring a run trained elsewhere (the free-GPU notebook, a cloud job) into this project.

    <project> cloud fetch path/to/run.zip     # the notebook's packed run: outputs/, reports/, MLflow, the gate
    # >>> cloud_training
    <project> cloud train --config configs/gpu.yaml [key=value ...] [--detach]   # clouds/jobs/cli.py
    <project> cloud status JOB | cloud fetch JOB | cloud cancel JOB
    # <<< cloud_training

Bad input (a second import of the same run, a bad file) ends with exit 2, other expected failures with exit 1
(errors.ErrorBoundary, through cli.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from ..config import load_config

cloud_app = typer.Typer(
    help="Import a run trained on another machine (notebook, cloud job) into MLflow.", no_args_is_help=True
)


# A job id fetcher, plugged in by the cloud_training extra (clouds/jobs/cli.py): `cloud fetch JOB`.
fetch_job: Callable[[str], None] | None = None


@cloud_app.command("fetch")
def fetch(
    source: Annotated[str, typer.Argument(help="A run .zip or folder (the notebook's), or a cloud job id.")],
) -> None:
    """Read a run .zip or folder (or download a cloud job's), import it into outputs/, reports/ and MLflow
    (registered version aliased candidate, promotion gate), and rewrite the report."""
    path = Path(source)
    if fetch_job is not None and not path.exists():
        fetch_job(source)
    else:
        import_file(path)


def import_file(path: Path) -> None:
    """Import a run .zip or folder; a file is named by its digest, so the same file is never imported twice."""
    from .importer import RunImportError

    if not path.exists():
        raise RunImportError(f"{path}: no such file or folder; give the run .zip the notebook wrote")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.is_file() else path.name
    import_and_report(path, job={"job_id": f"file:{path.name}:{digest}", "target": "notebook"})


def import_and_report(path: Path, *, job: dict[str, Any]) -> None:
    from ..report import write_report
    from .importer import import_run

    imported = import_run(path, job=job)
    typer.secho(f"imported {imported.run_dir} (version {imported.version})", fg=typer.colors.GREEN)
    # >>> cloud_training
    from .jobs.job import job_cost

    if (cost := job_cost(job)) is not None:
        typer.echo(f"cost: {cost:.2f} USD (billed seconds x the instance's price)")
    # <<< cloud_training
    if imported.promoted is not None:
        typer.echo(f"promotion gate: {'promoted to champion' if imported.promoted else 'not promoted'}")
    config = load_config(imported.run_dir / "config.yaml")
    written = write_report(config, readme=Path("README.md"), model_card=Path("MODEL_CARD.md"))
    typer.echo("wrote " + ", ".join(str(p) for p in written))
