"""Print the generated project's requirements (runtime + dev extra), one per line, for `pip install -r -`.

The template's test environment must hold everything a baked project imports, so its tests can run
in that environment. Reading them from a real bake keeps one source of truth: the template's
pyproject.toml.

    python scripts/project_requirements.py | pip install -r /dev/stdin
"""

from __future__ import annotations

import sys
import tempfile
import tomllib
from pathlib import Path

from cookiecutter.main import cookiecutter

TEMPLATE = Path(__file__).resolve().parents[1]


def project_requirements(extras: tuple[str, ...] = ("dev",)) -> list[str]:
    with tempfile.TemporaryDirectory() as scratch:
        project = Path(cookiecutter(str(TEMPLATE), no_input=True, output_dir=scratch, accept_hooks=False))
        pyproject = tomllib.loads((project / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    requirements = list(pyproject["dependencies"])
    for extra in extras:
        requirements += pyproject["optional-dependencies"][extra]
    return requirements


if __name__ == "__main__":
    extras = tuple(sys.argv[1:]) or ("dev",)
    print("\n".join(project_requirements(extras)))
