"""Validate every answer before cookiecutter writes a file.

The answers arrive as JSON data (`tojson` into a raw string), never as Python source, so a project
name holding quotes, backslashes or template syntax cannot break or inject into this script.
A bad answer prints one message naming the field, the value and the fix, and exits 1; cookiecutter
then removes the half-made project folder.
"""

from __future__ import annotations

import json
import keyword
import re
import sys
from pathlib import Path

ANSWERS = json.loads(r"""{{ cookiecutter | tojson }}""")

SUPPORTED_PYTHON = ("3.11", "3.12", "3.13")
# Modules the generated project or its tests import: a package of the same name would shadow them.
SHADOWED_MODULES = frozenset(
    "accelerate datasets evaluate fastapi huggingface_hub json logging mlflow numpy pandas peft pydantic "
    "pytest re test tests tokenizers torch transformers trl typer typing uvicorn yaml src config "
    "data model train types os sys io site math random string collections openai httpx evidently "
    "prometheus_client starlette pydantic_settings safetensors scipy rouge_score tqdm rich sklearn".split()
)
SLUG_RE = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
HUB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def check_project_slug(slug: str) -> str | None:
    if not SLUG_RE.match(slug):
        return (
            "must be lower-case letters, digits and single dashes, starting with a letter "
            "(e.g. 'shop-extractor'); pass project_slug=... explicitly"
        )
    return None


def check_package_name(name: str) -> str | None:
    if not name.isidentifier() or not name.isascii():
        return "must be a valid ASCII Python identifier (letters, digits, underscores; not starting with a digit)"
    if keyword.iskeyword(name) or keyword.issoftkeyword(name):
        return "is a Python keyword; choose another name (e.g. add a suffix: 'my_import')"
    if name in SHADOWED_MODULES or name in sys.stdlib_module_names:
        return f"would shadow the module '{name}' that the project imports; choose another (e.g. '{name}_llm')"
    if name != name.lower():
        return "must be lower case (PEP 8 package names)"
    return None


def check_base_model(base_model: str) -> str | None:
    if base_model.startswith(("/", "~", ".")):
        # Hooks run inside the new project folder, so a relative path would point somewhere else.
        path = Path(base_model).expanduser()
        if not path.is_absolute():
            return "is a relative path; give the local model folder as an absolute path"
        if not path.is_dir():
            return "is not an existing folder; give a hub id (org/name) or an existing local model folder"
        if not (path / "config.json").is_file():
            return "is a folder without config.json; point it at a folder saved with save_pretrained"
        return None
    if HUB_ID_RE.match(base_model):
        return None
    return (
        "must be a Hugging Face hub id like 'HuggingFaceTB/SmolLM2-135M-Instruct' "
        "or an absolute path to a local model folder"
    )


def check_author_email(email: str) -> str | None:
    return None if EMAIL_RE.match(email) else "must look like name@example.com"


def check_python_version(version: str) -> str | None:
    if version not in SUPPORTED_PYTHON:
        return f"must be one of {', '.join(SUPPORTED_PYTHON)} (the versions the template is tested with)"
    return None


CHECKS = {
    "project_slug": check_project_slug,
    "package_name": check_package_name,
    "base_model": check_base_model,
    "author_email": check_author_email,
    "python_version": check_python_version,
}


def validate(answers: dict) -> list[str]:
    """Return one message per bad answer, each naming the field, the value and the fix."""
    problems = []
    slug_is_bad = check_project_slug(str(answers.get("project_slug", ""))) is not None
    for field, check in CHECKS.items():
        value = str(answers.get(field, ""))
        if field == "package_name" and slug_is_bad and value == answers["project_slug"].replace("-", "_"):
            continue  # derived from the bad slug: one message, about the slug, is enough
        problem = check(value)
        if problem:
            problems.append(f"{field}={value!r} {problem}.")
    cloud_training = str(answers.get("cloud_training", False)).lower() in ("true", "yes", "y", "1")
    if cloud_training and answers.get("cloud") == "none":  # cookiecutter cannot skip the question: refuse it
        problems.append(
            "cloud_training=yes needs a cloud to train on, but cloud='none'; "
            "choose a cloud or answer cloud_training=no."
        )
    return problems


def main() -> int:
    problems = validate(ANSWERS)
    for problem in problems:
        print(f"ERROR: {problem}", file=sys.stderr)
    if problems:
        print("Nothing was generated. Fix the answer(s) above and run cookiecutter again.", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
