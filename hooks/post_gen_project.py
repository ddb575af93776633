"""Keep only the files of the options chosen, then print the next commands to run.

Runs inside the new project folder. Answers arrive as JSON data, as in pre_gen_project.py.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

ANSWERS = json.loads(r"""{{ cookiecutter | tojson }}""")


def choose_license(project: Path, license_name: str) -> None:
    """Move licenses/<chosen>.txt to LICENSE and drop the texts of the licenses not chosen."""
    licenses = project / "licenses"
    (licenses / f"{license_name}.txt").replace(project / "LICENSE")
    shutil.rmtree(licenses)


# Files only one cloud uses, relative to the project; {pkg} is the package name. Everything else is common.
# (serve/routes/sagemaker.py serves SageMaker's /ping and /invocations: aws only.)
CLOUD_FILES = {
    "aws": [
        "deploy/aws",
        "src/{pkg}/clouds/aws",
        "tests/test_deploy_aws.py",
        "tests/test_cloud_aws.py",
        "tests/test_serve_sagemaker.py",
    ],
    "gcp": ["deploy/gcp", "src/{pkg}/clouds/gcp", "tests/test_deploy_gcp.py", "tests/test_cloud_gcp.py"],
    "azure": ["deploy/azure", "src/{pkg}/clouds/azure", "tests/test_deploy_azure.py", "tests/test_cloud_azure.py"],
    "hf-spaces": [
        "deploy/hf-spaces",
        "src/{pkg}/clouds/hf_spaces",
        "tests/test_deploy_hf_spaces.py",
        "tests/test_cloud_hf_spaces.py",
    ],
}
# With no cloud there is nothing to deploy: no deploy/ folder, no deploy workflow.
NO_CLOUD_FILES = ["deploy", ".github/workflows/deploy.yml"]

# The files of each extra (yes/no question): deleted whole when it is not chosen. Lines of shared files that
# only an extra needs sit between `# >>> <extra>` and `# <<< <extra>` (`strip_blocks`).
EXTRA_FILES = {
    "preference_tuning": [
        "src/{pkg}/preference",
        "configs/dpo.yaml",
        "configs/grpo.yaml",
        "tests/test_prefs.py",
        "tests/test_train_dpo.py",
        "tests/test_train_grpo.py",
        "tests/test_report_dpo.py",
        "src/{pkg}/report/lineage.py",  # a DPO run's SFT parent, read from MLflow
        "src/{pkg}/report/sft_vs_dpo.py",  # the README's SFT vs SFT+DPO table
    ],
    "sweeps": ["src/{pkg}/sweep", "tests/test_sweep.py"],
    "multi_gpu": ["src/{pkg}/distributed", "configs/accelerate", "tests/test_distributed.py", "tests/test_vllm.py"],
    "cloud_training": [
        "src/{pkg}/clouds/jobs",
        "src/{pkg}/clouds/{cloud}/training.py",
        "tests/test_cloud_jobs.py",
        "tests/test_cloud_{cloud}.py",
    ],
    "llama_cpp": [
        "src/{pkg}/export",
        "src/{pkg}/evaluate/gguf.py",
        "src/{pkg}/report/quantization.py",
        "src/{pkg}/serve/llama_cpp.py",
        "src/{pkg}/clouds/llama_cpp.py",
        "tests/test_llama_cpp.py",
    ],
}
EXTRAS = tuple(EXTRA_FILES)
BLOCK = re.compile(r"^[ \t]*# (>>>|<<<) (!?[a-z_]+)[ \t]*$")


def _remove(project: Path, relative: str) -> None:
    path = project / relative
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def choose_cloud(project: Path, cloud: str, package: str) -> None:
    """Keep the deploy scripts, module, tests and workflow of the chosen cloud; delete the others'."""
    unchosen = [path for name, paths in CLOUD_FILES.items() if name != cloud for path in paths]
    unchosen += ["src/{pkg}/serve/routes/sagemaker.py"] * (cloud != "aws")
    for relative in [*unchosen, *(NO_CLOUD_FILES if cloud == "none" else [])]:
        _remove(project, relative.format(pkg=package))


def choose_extras(project: Path, answers: dict) -> None:
    """Delete the files of every extra not chosen (cloud_training is off without a cloud)."""
    cloud = answers["cloud"].replace("-", "_")
    for extra, paths in EXTRA_FILES.items():
        if not chosen(answers, extra):
            for relative in paths:
                _remove(project, relative.format(pkg=answers["package_name"], cloud=cloud))


def chosen(answers: dict, extra: str) -> bool:
    value = answers.get(extra, False)
    on = value is True or str(value).lower() in ("y", "yes", "true", "1", "on")
    return on and not (extra == "cloud_training" and answers["cloud"] == "none")


def strip_blocks(text: str, keep: set[str]) -> str:
    """Drop each `# >>> name` ... `# <<< name` block whose name is not in `keep` (a `!name` block: whose name is),
    and every marker line. Blank lines after a dropped block are dropped too when blank lines precede it, so
    spacing stays as ruff wants."""
    out: list[str] = []
    dropping: list[bool] = []
    skip_blanks = False
    for line in text.splitlines(keepends=True):
        marker = BLOCK.match(line)
        if marker:
            opening, name = marker.group(1) == ">>>", marker.group(2)
            if opening:
                dropping.append(name[1:] in keep if name.startswith("!") else name not in keep)
            elif not dropping:
                raise ValueError(f"`{line.strip()}` closes no block")
            else:
                skip_blanks = dropping.pop() and not any(dropping) and (not out or not out[-1].strip())
            continue
        if any(dropping) or (skip_blanks and not line.strip()):
            continue
        skip_blanks = False
        out.append(line)
    if dropping:
        raise ValueError(f"{len(dropping)} `# >>>` block(s) never closed")
    return _tidy_blank_lines("".join(out))


def _tidy_blank_lines(text: str) -> str:
    """At most two blank lines in a row, and none at the end: a removed marker line or block can leave more."""
    text = re.sub(r"\n{4,}", "\n\n\n", text)
    return text.rstrip("\n") + "\n" if text.strip() else text


def strip_project_blocks(project: Path, answers: dict) -> None:
    """Apply `strip_blocks` to every Python, YAML, TOML and shell file: keep the chosen extras' and cloud's blocks."""
    keep = {extra for extra in EXTRAS if chosen(answers, extra)} | {answers["cloud"].replace("-", "_")}
    for path in project.rglob("*"):
        if path.suffix in (".py", ".yml", ".yaml", ".toml", ".sh") and path.is_file():
            text = path.read_text(encoding="utf-8")
            if "# >>> " in text or "# <<< " in text:
                try:
                    path.write_text(strip_blocks(text, keep), encoding="utf-8")
                except ValueError as err:
                    raise SystemExit(f"ERROR: {path.relative_to(project)}: {err}") from None


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


def enclosing_repository(project: Path) -> Path | None:
    """The git work tree the new project was written into (a template clone, say), or None."""
    return next((folder for folder in project.resolve().parents if (folder / ".git").exists()), None)


def inside_repository_warning(project: Path) -> str | None:
    repository = enclosing_repository(project)
    if repository is None:
        return None
    return (
        f"warning: {project.name} lies inside the git repository {repository}: `publish` refuses it there, and\n"
        "  moving it after `make install` or a run breaks its .venv and MLflow paths. Move it now, before\n"
        f"  anything else, or bake again elsewhere: cookiecutter <template> -o <a folder outside {repository.name}>"
    )


def main() -> None:
    project = Path.cwd()
    choose_license(project, ANSWERS["license"])
    choose_cloud(project, ANSWERS["cloud"], ANSWERS["package_name"])
    choose_extras(project, ANSWERS)
    strip_project_blocks(project, ANSWERS)
    remove_caches(project)
    print(next_steps(ANSWERS))
    warning = inside_repository_warning(project)
    if warning:
        print(warning, file=sys.stderr)


if __name__ == "__main__":
    main()
