"""Hugging Face Spaces: a Docker Space that builds this project's image, model included
(deploy/hf-spaces/README.md has the commands).

    python -m <package>.clouds.hf_spaces.deploy settings --project <slug>   # check + print the variables
    python -m <package>.clouds.hf_spaces.deploy up --project <slug> [--dry-run]   # stage build/space, create + upload
    python -m <package>.clouds.hf_spaces.deploy down --project <slug> [--dry-run] # delete the Space

A Space builds its own image from the Dockerfile at the root of its repository, so `up` uploads a build
context, not an image: the project's Dockerfile plus a last stage on top of `bundled` that listens on the
Space's port (7860), the sources, configs and the model bundle, and a README whose front matter declares
`sdk: docker` and `app_port`. The image runs as uid 1000, as Spaces require. The HfApi client is a
parameter, so the tests pass a recording fake.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import typer
import yaml

from ..deploy import command_group, print_step
# >>> llama_cpp
from ..llama_cpp import BACKEND_VARIABLES, space_dockerfile
# <<< llama_cpp
from ..settings import DeploySettingsError, Var, read_environment, resolve

VARIABLES = [
    Var(
        "HF_SPACE_ID",
        "the Space to create or update, as <user or organisation>/<space name>",
        pattern=r"[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}",
        rule="must be <owner>/<name>, e.g. ada/shop-assistant",
    ),
    Var(
        "HF_TOKEN",
        "a Hugging Face access token with write access (https://huggingface.co/settings/tokens)",
        pattern=r"hf_\w{20,}",
        rule="must be a Hugging Face token (hf_...)",
        secret=True,
    ),
    Var(
        "HF_SPACE_HARDWARE",
        "the Space hardware: cpu-basic is free (2 vCPU, 16 GB); others are billed per hour",
        default="cpu-basic",
        pattern=r"[a-z0-9-]+",
        rule="must be a hardware name such as cpu-basic or t4-small (https://huggingface.co/docs/hub/spaces-gpus)",
    ),
    Var(
        "HF_SPACE_PRIVATE",
        "true: only you (and your organisation) see the Space",
        default="false",
        pattern="true|false",
        rule="must be true or false",
    ),
    # >>> llama_cpp
    *BACKEND_VARIABLES,  # DEPLOY_BACKEND, DEPLOY_GGUF_TYPE
    # <<< llama_cpp
]
APP_PORT = 7860  # the port Spaces route to by default (front matter `app_port`)
# A file only a Space staged by `stage_space` holds (the bundle's manifest): deploy replaces the files of, and
# teardown deletes, only such a Space (or an empty one), never another Space that HF_SPACE_ID happens to name.
MARKER = "build/model/bundle.json"
# What the image build reads (the Dockerfile's COPY lines), relative to the project root.
CONTEXT = ["pyproject.toml", "LICENSE", ".dockerignore", "src", "configs", "scripts/serve.sh"]
SPACE_STAGE = f"""
# Hugging Face Spaces build the last stage and route to app_port (README front matter); uid 1000 as required.
FROM bundled AS space
ENV PORT={APP_PORT}
EXPOSE {APP_PORT}
"""


def settings(environ: dict[str, str], *, project: str) -> dict[str, str]:
    values = resolve(VARIABLES, environ, project=project)
    return {**values, "HF_SPACE_URL": f"https://huggingface.co/spaces/{values['HF_SPACE_ID']}"}


def front_matter(*, project: str, values: dict[str, str]) -> dict:
    """The Space's configuration (https://huggingface.co/docs/hub/spaces-config-reference)."""
    return {
        "title": project[:30],
        "emoji": "🛍️",
        "colorFrom": "indigo",
        "colorTo": "blue",
        "sdk": "docker",
        "app_port": APP_PORT,
        "suggested_hardware": values["HF_SPACE_HARDWARE"],
        "pinned": False,
        "short_description": "A LoRA fine-tuned LLM behind an OpenAI-compatible API",
    }


def stage_space(root: Path, bundle: Path, out: Path, *, project: str, values: dict[str, str]) -> Path:
    """Write the Space's repository to `out` (replaced): build context, Dockerfile, README, model bundle."""
    if not (bundle / "bundle.json").is_file():
        raise DeploySettingsError(
            f"{bundle} is not a model bundle (no bundle.json); run the bundle step of `make deploy` "
            f"(python -m {__package__.rpartition('.')[0]}.bundle --model <model> --out {bundle}) first"
        )
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.py[cod]", "*.egg-info")
    for name in CONTEXT:
        source, target = root / name, out / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=ignore)
        else:
            shutil.copy2(source, target)
    shutil.copytree(bundle, out / "build" / "model")
    dockerfile = (root / "Dockerfile").read_text(encoding="utf-8")
    dockerfile = dockerfile.rstrip("\n") + "\n" + SPACE_STAGE
    # >>> llama_cpp
    dockerfile = space_dockerfile(dockerfile, values)  # DEPLOY_BACKEND=llama.cpp: llama-cpp-python, LLM_BACKEND
    # <<< llama_cpp
    (out / "Dockerfile").write_text(dockerfile, encoding="utf-8")
    card = yaml.safe_dump(front_matter(project=project, values=values), sort_keys=False, allow_unicode=True)
    body = (
        f"# {project}\n\nA LoRA fine-tuned chat model served with an OpenAI-compatible API:\n"
        "`POST /v1/chat/completions`, a demo page at `/`, `GET /health`, `GET /metrics`.\n"
    )
    (out / "README.md").write_text(f"---\n{card}---\n\n{body}", encoding="utf-8")
    return out


def deploy_space(api, folder: Path, values: dict[str, str], *, api_key: str | None = None) -> str:
    """Create the Space (or keep it), upload `folder` as one commit (files no longer there are removed),
    and store LLM_API_KEY as a Space secret when given. Returns the Space's URL."""
    space_id = values["HF_SPACE_ID"]
    if _made_here(api, space_id) is False:
        raise DeploySettingsError(
            f"HF_SPACE_ID={space_id}: that Space exists and `make deploy` did not make it (no {MARKER}); deploying "
            "would replace its files. Set HF_SPACE_ID to a new Space name, or delete that Space yourself; "
            "nothing was uploaded"
        )
    api.create_repo(
        space_id,
        repo_type="space",
        space_sdk="docker",
        space_hardware=values["HF_SPACE_HARDWARE"],
        private=values["HF_SPACE_PRIVATE"] == "true",
        exist_ok=True,
    )
    if api_key:
        api.add_space_secret(space_id, "LLM_API_KEY", api_key, description="Bearer key for /v1/* (LLM_API_KEY)")
    api.upload_folder(
        repo_id=space_id,
        repo_type="space",
        folder_path=str(folder),
        commit_message="Deploy the model and the API",
        delete_patterns=["*"],  # a file removed from the project disappears from the Space (.gitattributes stays)
    )
    return values["HF_SPACE_URL"]


def delete_space(api, space_id: str) -> bool | None:
    """Delete the Space when `make deploy` made it: True; None when it does not exist; False when it is
    another Space (then it is left alone)."""
    made_here = _made_here(api, space_id)
    if made_here:
        api.delete_repo(space_id, repo_type="space", missing_ok=True)
    return made_here


def _made_here(api, space_id: str) -> bool | None:
    """None: no such Space; True: ours (it holds MARKER) or empty (a first upload failed); False: another Space."""
    if not api.repo_exists(space_id, repo_type="space"):
        return None
    files = set(api.list_repo_files(space_id, repo_type="space"))
    return MARKER in files or files <= {".gitattributes", "README.md"}


# ---- the deploy commands (clouds/deploy.py; deploy.sh, teardown.sh) ---------------------------------------

OUT = Path("build/space")  # `up`'s default --out: the Space's files, staged


def _api(values: dict[str, str]):  # -> HfApi
    from huggingface_hub import HfApi

    return HfApi(token=values["HF_TOKEN"])


def up(values: dict[str, str], *, project: str, dry_run: bool, out: Path | None, bundle: Path) -> None:
    """Stage the Space's files in --out (build/space) and upload them (the Space then builds and starts the
    image); a dry run stages and uploads nothing."""
    out, space_id = out or OUT, values["HF_SPACE_ID"]
    if dry_run:
        print_step(f"stage {out}: Dockerfile (+ space stage, port {APP_PORT}), README front matter, {bundle}")
        typer.echo(f"# refused when {space_id} exists and `make deploy` did not make it (no {MARKER})")
        print_step(f"HfApi.create_repo({space_id!r}, repo_type='space', space_sdk='docker', exist_ok=True)")
        print_step(f"HfApi.upload_folder(repo_id={space_id!r}, repo_type='space', folder_path={str(out)!r})")
        return
    folder = stage_space(Path.cwd(), bundle, out, project=project, values=values)
    api_key = read_environment().get("LLM_API_KEY")
    url = deploy_space(_api(values), folder, values, api_key=api_key)
    typer.secho(f"uploaded; the Space builds and starts at {url} (a few minutes)", fg=typer.colors.GREEN)


def down(values: dict[str, str], *, dry_run: bool) -> None:
    """Delete the Space (its repository, builds and secrets)."""
    if dry_run:
        print_step(f"HfApi.delete_repo({values['HF_SPACE_ID']!r}, repo_type='space', missing_ok=True)")
        typer.echo(f"# only when `make deploy` made the Space (it holds {MARKER})")
        return
    deleted = delete_space(_api(values), values["HF_SPACE_ID"])
    if deleted:
        typer.echo(f"deleted {values['HF_SPACE_URL']}")
    elif deleted is None:
        typer.echo(f"nothing to delete: {values['HF_SPACE_URL']} does not exist")
    else:
        typer.echo(f"kept {values['HF_SPACE_URL']}: `make deploy` did not make it (no {MARKER}); delete it yourself")


app = command_group("Hugging Face Docker Space of the served model.", VARIABLES, settings, up, down)

if __name__ == "__main__":
    app()
