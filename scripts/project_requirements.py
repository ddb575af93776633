"""Print the generated project's requirements (runtime + dev extra), one per line, for `pip install -r -`.

The template's test environment must hold everything a baked project imports, so its tests can run
in that environment. Reading them from a real bake keeps one source of truth: the template's
pyproject.toml.

    python scripts/project_requirements.py | pip install -r /dev/stdin
"""

from __future__ import annotations

import json
import sys
import tempfile
import tomllib
from pathlib import Path

from cookiecutter.main import cookiecutter

TEMPLATE = Path(__file__).resolve().parents[1]
# Every extra on: the template's environment must run the tests of every bake, extras included.
ALL_EXTRAS = {"preference_tuning": True, "sweeps": True, "multi_gpu": True, "cloud_training": True, "llama_cpp": True}


def project_requirements(extras: tuple[str, ...] = ("dev",)) -> list[str]:
    """Runtime requirements plus `extras`, united over every `cloud` answer with every extra chosen: each
    cloud's bake adds its own deploy SDK (boto3 + moto, azure-ai-ml) to the dev extra, each extra its own
    packages (optuna, deepspeed's extra aside), and every bake's tests run here."""
    clouds = json.loads((TEMPLATE / "cookiecutter.json").read_text(encoding="utf-8"))["cloud"]
    requirements: list[str] = []
    with tempfile.TemporaryDirectory() as scratch:
        for cloud in clouds:
            project = Path(
                cookiecutter(
                    str(TEMPLATE),
                    no_input=True,
                    output_dir=f"{scratch}/{cloud}",
                    accept_hooks=False,
                    extra_context={"cloud": cloud, **ALL_EXTRAS},
                )
            )
            pyproject = tomllib.loads((project / "pyproject.toml").read_text(encoding="utf-8"))["project"]
            found = list(pyproject["dependencies"])
            for extra in extras:
                found += pyproject["optional-dependencies"].get(extra, [])
            requirements += [requirement for requirement in found if requirement not in requirements]
    return requirements


if __name__ == "__main__":
    extras = tuple(sys.argv[1:]) or ("dev",)
    print("\n".join(project_requirements(extras)))
