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


# Files only one cloud uses, relative to the project; {pkg} is the package name. Everything else is common.
CLOUD_FILES = {
    "aws": [
        "deploy/aws",
        "src/{pkg}/deploy/aws.py",
        "tests/test_deploy_aws.py",
        "src/{pkg}/cloud/aws.py",  # cloud training: one target module and its tests per cloud
        "tests/test_cloud_aws.py",
    ],
    "gcp": [
        "deploy/gcp",
        "src/{pkg}/deploy/gcp.py",
        "tests/test_deploy_gcp.py",
        "src/{pkg}/cloud/gcp.py",
        "tests/test_cloud_gcp.py",
    ],
    "azure": [
        "deploy/azure",
        "src/{pkg}/deploy/azure.py",
        "tests/test_deploy_azure.py",
        "src/{pkg}/cloud/azure.py",
        "tests/test_cloud_azure.py",
    ],
    "hf-spaces": [
        "deploy/hf-spaces",
        "src/{pkg}/deploy/hf_spaces.py",
        "tests/test_deploy_hf_spaces.py",
        "src/{pkg}/cloud/hf_jobs.py",  # Hugging Face Jobs: the training target of a Spaces bake
        "tests/test_cloud_hf_jobs.py",
    ],
}
# With no cloud there is nothing to deploy: no deploy/ folder, no deploy workflow.
NO_CLOUD_FILES = ["deploy", ".github/workflows/deploy.yml"]


def choose_cloud(project: Path, cloud: str, package: str) -> None:
    """Keep the deploy scripts, module, tests and workflow of the chosen cloud; delete the others'."""
    unchosen = [path for name, paths in CLOUD_FILES.items() if name != cloud for path in paths]
    for relative in [*unchosen, *(NO_CLOUD_FILES if cloud == "none" else [])]:
        path = project / relative.format(pkg=package)
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def remove_caches(project: Path) -> None:
    """`src/` is copied verbatim, so drop byte-code a template checkout may have accumulated."""
    for cache in [*project.rglob("__pycache__"), *project.rglob(".ruff_cache"), *project.rglob(".pytest_cache")]:
        shutil.rmtree(cache, ignore_errors=True)


def next_steps(answers: dict) -> str:
    slug, cloud = answers["project_slug"], answers.get("cloud", "none")
    return "\n".join(
        [
            f"Created {answers['project_name']} in ./{slug}. Next:",
            f"  cd {slug}",
            "  make install    # virtual environment + dependencies (see README for GPU / CPU-only torch)",
            "  make train      # example data, LoRA fine-tuning of the tiny offline model (configs/smoke.yaml)",
            *(
                [f"  DRY_RUN=1 make deploy   # what deploying runs, once .env is filled (deploy/{cloud}/README.md)"]
                * (cloud != "none")
            ),
        ]
    )


def main() -> None:
    project = Path.cwd()
    choose_license(project, ANSWERS["license"])
    choose_cloud(project, ANSWERS["cloud"], ANSWERS["package_name"])
    remove_caches(project)
    print(next_steps(ANSWERS))


if __name__ == "__main__":
    main()
