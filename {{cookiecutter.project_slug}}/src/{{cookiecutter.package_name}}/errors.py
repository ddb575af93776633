"""The one base class of every expected error, and the one place where it becomes an exit code.

Each module raises its own subclass (ConfigError, DataError, TrackingError, ...) with a message that says what
is wrong and how to fix it. Its class says which kind of problem it is: `exit_code` 2 for bad input (a setting,
a file, a variable the user can fix; nothing was done), 1 for a failure while working. Every command line of
the project (cli.py, the deploy modules) is a Typer app of class `ErrorBoundary`, which prints the message and
exits with that code, so a user never sees a traceback for a mistake they can fix. Anything else is a bug and
keeps its traceback. So does an OSError, except the ones a person fixes on their machine (no permission, a
read-only or full disk): those end as one `error:` line naming the file, exit 1.
"""

from __future__ import annotations

import errno

import typer
from typer.core import TyperGroup

MACHINE_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT}


def first_line(err: BaseException, limit: int = 300) -> str:
    """An exception's first line, cut to `limit` characters: a library's message can run to pages."""
    lines = str(err).splitlines()
    return lines[0][:limit] if lines else type(err).__name__


class ProjectError(Exception):
    """An expected failure whose message is meant for the user (names the field, file or line and the fix)."""

    exit_code = 1


class BadInput(ProjectError):
    """Bad input: a setting, file or variable to fix before anything can run; nothing was done."""

    exit_code = 2


class ErrorBoundary(TyperGroup):
    """A command group whose commands' ProjectErrors end as `error: <message>` and the error's exit code."""

    def invoke(self, ctx: typer.Context):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except ProjectError as err:
            typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
            raise typer.Exit(err.exit_code) from None
        except OSError as err:
            if err.errno not in MACHINE_ERRNOS:
                raise
            where = err.filename or "a file"
            message = f"error: {where}: {err.strerror}. Make it writable (or free disk space) and run again."
            typer.secho(message, fg=typer.colors.RED, err=True)
            raise typer.Exit(1) from None
