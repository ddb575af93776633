"""Deploy variables: read from the environment and `.env` (the environment wins), all checked at once.

    python -m <package>.clouds.<cloud>.deploy settings --project <slug>   # `export NAME=value` lines, or exit 2

A missing value, a placeholder left from .env.example (REPLACE_ME, <...>, your-...) or a malformed value
is reported with the variable's name and the fix, every problem in one message, before any command runs,
so a half-configured deploy never creates a resource it cannot finish or tear down.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import BadInput

# Values people leave in from .env.example or documentation. Case-insensitive.
PLACEHOLDER = re.compile(
    r"replace[-_ ]?me|change[-_ ]?me|^<.*>$|^your[-_.]|^xxx+$|^todo$"
    r"|^123456789012$|^00000000-0000-0000-0000-000000000000$",  # AWS's example account, an all-zero GUID
    re.IGNORECASE,
)


class DeploySettingsError(BadInput, ValueError):
    """One or more deploy variables are missing or wrong; the message names each one and the fix."""


@dataclass(frozen=True)
class Var:
    """One deploy variable: its name, what it is (the help shown when it is missing) and how to check it."""

    name: str
    help: str
    default: str | None = None
    """None: required. A default may name other variables, e.g. "{PROJECT}-endpoint"."""
    pattern: str | None = None
    """A full-match regular expression the value must satisfy."""
    rule: str = ""
    """What `pattern` means, for the error message."""
    secret: bool = False
    """Never printed (not in `settings` output, not in messages)."""


def read_environment(environ: Mapping[str, str] | None = None, dotenv: Path | None = None) -> dict[str, str]:
    """The environment on top of the `.env` file (when it exists); empty values count as unset.
    The file is `dotenv`, else $DEPLOY_ENV_FILE (e.g. a .env.staging; /dev/null reads none), else ./.env.
    A DEPLOY_ENV_FILE that does not exist is an error: a typo there must not silently drop the settings."""
    from dotenv import dotenv_values

    environ = os.environ if environ is None else environ
    named = environ.get("DEPLOY_ENV_FILE")
    if dotenv is None and named and not Path(named).exists():
        raise DeploySettingsError(
            f"DEPLOY_ENV_FILE={named}: no such file. Point it at your settings file (e.g. .env.staging), or "
            "unset it to read ./.env"
        )
    dotenv = dotenv or Path(named or ".env")
    values = {k: v for k, v in dotenv_values(dotenv).items() if v} if dotenv.exists() else {}
    values.update({k: v for k, v in environ.items() if v})
    return values


def resolve(variables: Sequence[Var], environ: Mapping[str, str], **context: str) -> dict[str, str]:
    """Every variable's value (given, else its default filled from `context` and earlier values);
    raise DeploySettingsError listing every problem."""
    values: dict[str, str] = {}
    problems: list[str] = []
    for var in variables:
        value = environ.get(var.name, "").strip()
        if not value and var.default is not None:
            value = var.default.format(**context, **values)
        problem = _check(var, value)
        if problem:
            problems.append(problem)
        values[var.name] = value
    if problems:
        raise DeploySettingsError(
            "deploy settings are incomplete (nothing was created):\n"
            + "\n".join(f"  - {problem}" for problem in problems)
            + "\nSet them in .env (copy .env.example) or export them, then run again."
        )
    return values


def _check(var: Var, value: str) -> str | None:
    shown = "(hidden)" if var.secret else repr(value)
    if not value:
        return f"{var.name} is not set: {var.help}"
    if PLACEHOLDER.search(value):
        return f"{var.name}={shown} is a placeholder; replace it with your real value ({var.help})"
    if var.pattern and not re.fullmatch(var.pattern, value):
        return f"{var.name}={shown} {var.rule or f'must match {var.pattern}'}"
    return None


def shell_exports(values: Mapping[str, str], variables: Sequence[Var] = ()) -> str:
    """`export NAME=value` lines for `eval` in a deploy script; secret variables are left out."""
    secret = {var.name for var in variables if var.secret}
    return "".join(f"export {name}={shlex.quote(value)}\n" for name, value in values.items() if name not in secret)
