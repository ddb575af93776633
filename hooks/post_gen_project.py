"""Keep only the files of the options chosen, then print the next commands to run.

Runs inside the new project folder. Answers arrive as JSON data, as in pre_gen_project.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

ANSWERS = json.loads(r"""{{ cookiecutter | tojson }}""")


def choose_license(project: Path, license_name: str) -> None:
    """Move licenses/<chosen>.txt to LICENSE and drop the texts of the licenses not chosen."""
    licenses = project / "licenses"
    (licenses / f"{license_name}.txt").replace(project / "LICENSE")
    shutil.rmtree(licenses)


def remove_caches(project: Path) -> None:
    """`src/` is copied verbatim, so drop byte-code a template checkout may have accumulated."""
    for cache in [*project.rglob("__pycache__"), *project.rglob(".ruff_cache"), *project.rglob(".pytest_cache")]:
        shutil.rmtree(cache, ignore_errors=True)


def next_steps(answers: dict) -> str:
    slug = answers["project_slug"]
    return "\n".join(
        [
            f"Created {answers['project_name']} in ./{slug}. Next:",
            f"  cd {slug}",
            "  make install    # virtual environment + dependencies (see README for GPU / CPU-only torch)",
            "  make train      # example data, LoRA fine-tuning of the tiny offline model (configs/smoke.yaml)",
        ]
    )


def main() -> None:
    project = Path.cwd()
    choose_license(project, ANSWERS["license"])
    remove_caches(project)
    print(next_steps(ANSWERS))


if __name__ == "__main__":
    main()
