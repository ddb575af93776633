"""The `deploy` command group every cloud shares: the same commands, options, dry-run printer and error handling.

    python -m <package>.clouds.<cloud>.deploy settings --project <slug>           # check the variables; `export` lines
    python -m <package>.clouds.<cloud>.deploy up --project <slug> [--dry-run]     # create or update the service
    python -m <package>.clouds.<cloud>.deploy down --project <slug> [--dry-run]   # delete what `up` made

deploy/<cloud>/deploy.sh and teardown.sh run these. Each cloud's module (clouds/<cloud>/deploy.py) is the cloud
behind one interface, which it hands to `command_group`:

    VARIABLES                                        its deploy variables (clouds/settings.py's Var)
    settings(environ, *, project) -> values          those variables checked, plus what follows from them
    up(values, *, project, dry_run, out, bundle)     create or update what serves the model
    down(values, *, dry_run)                         delete what `up` made, and nothing else

A cloud whose deploy.sh makes the service with the cloud's own CLI (gcp: gcloud) has no `up` or `down`. The cloud's
module adds its own commands to the group it gets back (aws `repository` and `invoke`, gcp `manifest`). A dry run
prints one `+ ...` line per call it would make (`print_call`, `print_step`), as the training jobs' DRY_RUN does.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import ErrorBoundary
from .settings import Var, read_environment, shell_exports

ProjectOption = Annotated[str, typer.Option(help="Project name: the default name of what deploy creates.")]
DryRunOption = Annotated[bool, typer.Option(help="Print what would be created or deleted; create nothing.")]
OutOption = Annotated[
    Path | None, typer.Option(help="Folder for the files `up` writes before it applies or uploads them.")
]
BundleOption = Annotated[Path, typer.Option(help="The model bundle, for a cloud that uploads it (not an image).")]
BUNDLE = Path("build/model")  # where deploy.sh's bundle step writes it

Settings = Callable[..., dict[str, str]]  # settings(environ, *, project) -> the checked values
Up = Callable[..., None]  # up(values, *, project, dry_run, out, bundle)
Down = Callable[..., None]  # down(values, *, dry_run)


def print_step(step: str) -> None:
    """One line of a dry run: what would be done, after `+ `."""
    typer.echo(f"+ {step}")


def print_call(service: str, operation: str, kwargs: dict[str, Any]) -> None:
    """A dry run's line for one API call: `+ service.operation({...})`, the arguments as sorted JSON."""
    print_step(f"{service}.{operation}({json.dumps(kwargs, sort_keys=True, default=str)})")


def command_group(
    help: str, variables: Sequence[Var], settings: Settings, up: Up | None = None, down: Down | None = None
) -> typer.Typer:
    """The deploy commands of one cloud: `settings`, and `up` and `down` when it has them (their help is the
    functions' docstrings). A ProjectError of any command ends as `error: <message>` and its exit code."""
    app = typer.Typer(cls=ErrorBoundary, help=help, no_args_is_help=True)

    def values(project: str) -> dict[str, str]:
        return settings(read_environment(), project=project)

    @app.command("settings")
    def settings_command(project: ProjectOption) -> None:
        """Check the deploy variables; print them as `export` lines, secrets left out (exit 2 naming each bad one)."""
        typer.echo(shell_exports(values(project), variables), nl=False)

    if up is not None:

        @app.command("up", help=up.__doc__)
        def up_command(
            project: ProjectOption, dry_run: DryRunOption = False, out: OutOption = None, bundle: BundleOption = BUNDLE
        ) -> None:
            up(values(project), project=project, dry_run=dry_run, out=out, bundle=bundle)

    if down is not None:

        @app.command("down", help=down.__doc__)
        def down_command(project: ProjectOption, dry_run: DryRunOption = False) -> None:
            down(values(project), dry_run=dry_run)

    return app
