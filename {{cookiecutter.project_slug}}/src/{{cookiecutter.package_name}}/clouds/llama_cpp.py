"""Deploying with llama.cpp (llama_cpp extra): `make deploy BACKEND=llama.cpp [TYPE=q8_0]`, on every cloud.

    DEPLOY_BACKEND=llama.cpp deploy/<cloud>/deploy.sh     # what `make deploy BACKEND=llama.cpp` runs

The bundle carries the run's GGUF export (outputs/<run>/model-<DEPLOY_GGUF_TYPE>.gguf, which `make export-gguf`
writes; `clouds.bundle --gguf TYPE` refuses, exit 2, before anything is built or created when there is none), the
image is built with llama-cpp-python (`docker build --build-arg LLAMA_CPP=1`; a Space gets no build arguments,
so its Dockerfile says it), and the serving container gets LLM_BACKEND=llama.cpp and LLM_GGUF_TYPE in its
environment. Each cloud's deploy module adds `BACKEND_VARIABLES` to its own variables and `backend_environment`
to its container's environment.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

from ..export.gguf import QUANT_TYPES, ExportError, export_folder
from ..registry import COMMAND, ModelSource
from .settings import DeploySettingsError, Var

BACKEND_VARIABLES = [
    Var(
        "DEPLOY_BACKEND",
        "what generates in the deployed server: transformers (the adapter on its base) or llama.cpp (the GGUF "
        "export, on a CPU)",
        default="transformers",
        pattern=r"transformers|llama\.cpp",
        rule="must be transformers or llama.cpp",
    ),
    Var(
        "DEPLOY_GGUF_TYPE",
        "with llama.cpp: the export the image carries, outputs/<run>/model-<type>.gguf",
        default="q4_k_m",
        pattern="|".join(QUANT_TYPES),
        rule=f"must be one of {', '.join(QUANT_TYPES)} (the types `make export-gguf TYPE=...` writes)",
    ),
]
LLAMA_CPP_ARG = "ARG LLAMA_CPP=0"  # the Dockerfile's build argument that leaves llama-cpp-python out


def backend_environment(values: Mapping[str, str]) -> dict[str, str]:
    """The serving container's LLM_BACKEND and LLM_GGUF_TYPE when deploying with llama.cpp; none otherwise."""
    if values.get("DEPLOY_BACKEND") != "llama.cpp":
        return {}
    return {"LLM_BACKEND": "llama.cpp", "LLM_GGUF_TYPE": values["DEPLOY_GGUF_TYPE"]}


def exported_gguf(source: ModelSource, quant: str) -> Path:
    """The model's model-<quant>.gguf where `export gguf` wrote it (a registered version: else the one logged to its
    MLflow run, fetched to that place); ExportError (exit 2) naming the fix if there is none."""
    path = export_folder(source) / f"model-{quant}.gguf"
    if not path.is_file() and source.run_dir is None and source.run_id:
        _fetch_logged_export(source.run_id, path)
    if not path.is_file():
        fix = (
            f"make export-gguf RUN={source.run_dir} TYPE={quant}"
            if source.run_dir
            else f"{COMMAND} export gguf --model {source.uri} --type {quant}"
        )
        raise ExportError(
            f"{path}: no such file, and the llama.cpp backend serves it; export it first ({fix}), then deploy "
            "again (nothing was bundled, built or created)"
        )
    return path


def _fetch_logged_export(run_id: str, path: Path) -> None:
    """`make export-gguf` of the champion's run logs the file to that run (artifacts gguf/): fetch it to `path`."""
    from ..tracking import client

    with tempfile.TemporaryDirectory() as scratch:
        try:
            fetched = client().download_artifacts(run_id, f"gguf/{path.name}", scratch)
        except Exception:  # not logged (MLflow raises several types), or no server: the caller says what to do
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(fetched, path)


def space_dockerfile(dockerfile: str, values: Mapping[str, str]) -> str:
    """A Space's Dockerfile (its image is built with no build arguments): with llama.cpp, llama-cpp-python built by
    default and the backend's variables set in the last stage."""
    environment = backend_environment(values)
    if not environment:
        return dockerfile
    if LLAMA_CPP_ARG not in dockerfile:
        raise DeploySettingsError(f"the Dockerfile has no `{LLAMA_CPP_ARG}` line to turn llama-cpp-python on")
    variables = " ".join(f"{name}={value}" for name, value in environment.items())
    return dockerfile.replace(LLAMA_CPP_ARG, "ARG LLAMA_CPP=1") + f"ENV {variables}\n"
