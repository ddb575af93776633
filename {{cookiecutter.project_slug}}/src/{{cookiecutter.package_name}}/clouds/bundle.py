"""The model folder a deployed image carries: a cloud endpoint has no mounted outputs/ and should not
download weights from the Hugging Face Hub at every start.

    python -m <package>.clouds.bundle --model models:/<project>@champion --fallback latest --out build/model

The bundle is a run folder the server already knows how to serve (`LLM_MODEL=/app/model`):

    build/model/adapter/      the LoRA adapter + tokenizer (chat template), base path pointing at base/
    build/model/base/         the base model's weights, copied (local folder) or downloaded (hub id) once
    build/model/config.yaml   the run's resolved config, model.base_model pointing at base/
    build/model/tracking.json the registered version, so /ready and the request log name it
    build/model/bundle.json   where it came from (model URI, base model, time)

Base + adapter rather than merged weights: the server merges at start-up (seconds), and the image keeps
the exact adapter that was evaluated and registered. The Dockerfile's `bundled` stage copies build/model
to /app/model, hence `mount_dir`.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Annotated

import typer

from ..config import load_config
from ..errors import ProjectError
from ..model.load import ModelError, read_adapter_config
from ..registry import ModelSource, resolve_model_source
from ..runs import CONFIG_FILE, TRACKING_FILE

log = logging.getLogger(__name__)

MOUNT_DIR = "/app/model"  # where the Dockerfile's `bundled` stage puts the bundle
MANIFEST = "bundle.json"


class BundleError(ProjectError, RuntimeError):
    """The model cannot be bundled; the message names the model source or folder and the fix."""


def choose_source(model: str, *, fallback: str | None, output_dir: Path = Path("outputs")) -> tuple[str, ModelSource]:
    """`model` resolved to local folders (an MLflow URI is downloaded); when it cannot be found, `fallback`
    (e.g. `latest`: the newest outputs/<run>). Returns the source actually used, and its folders."""
    tried = []
    for candidate in [model, fallback] if fallback else [model]:
        try:
            return candidate, resolve_model_source(candidate, output_dir=output_dir)
        except ModelError as err:  # no such model, or not a loadable adapter
            tried.append(str(err))
            log.info("model %s not available: %s", candidate, err)
    raise BundleError(
        "no model to deploy: " + "; ".join(tried) + ". Train and evaluate first (make train evaluate), "
        "or pass MODEL=<adapter folder or models:/ URI>"
    )


def bundle_model(
    source: ModelSource,
    out_dir: Path,
    *,
    origin: str,
    mount_dir: str = MOUNT_DIR,
    # >>> llama_cpp
    gguf: Path | None = None,
    # <<< llama_cpp
) -> Path:
    """Write the bundle of `source` to `out_dir` (replacing an earlier bundle, never another folder).
    `mount_dir` is where the bundle will be at serving time: the adapter and config point at its base/."""
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / MANIFEST).is_file():
        raise BundleError(f"{out_dir} exists and is not a model bundle; choose another --out (nothing was written)")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=f".{out_dir.name}-") as scratch:
        staging = Path(scratch) / "bundle"
        base_in_image = f"{mount_dir.rstrip('/')}/base"
        _copy_adapter(source, staging / "adapter", base_path=base_in_image)
        _copy_base(source.base_model, staging / "base")
        config = _run_config(source)
        if config is not None:
            _write_config(config, staging / CONFIG_FILE, base_path=base_in_image)
        tracking = {"run_id": source.run_id, "model_version": source.version}
        (staging / TRACKING_FILE).write_text(json.dumps(tracking, indent=2) + "\n", encoding="utf-8")
        # >>> llama_cpp
        if gguf is not None:  # the llama.cpp backend's file, where it looks: LLM_MODEL/model-<LLM_GGUF_TYPE>.gguf
            shutil.copyfile(gguf, staging / gguf.name)
        # <<< llama_cpp
        manifest = {
            "source": origin,
            "name": source.name,
            "version": source.version,
            "run_id": source.run_id,
            "base_model": source.base_model,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.replace(out_dir)
    return out_dir


def _copy_adapter(source: ModelSource, target: Path, *, base_path: str) -> None:
    """Adapter weights + tokenizer files in one folder, the adapter's base pointing at the bundled base."""
    settings = read_adapter_config(source.adapter_dir)  # read first: an error names the user's file, not a copy
    shutil.copytree(source.adapter_dir, target)
    if source.tokenizer_dir != source.adapter_dir:  # an MLflow model keeps its tokenizer apart
        shutil.copytree(source.tokenizer_dir, target, dirs_exist_ok=True)
    settings["base_model_name_or_path"] = base_path
    (target / "adapter_config.json").write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")


def _copy_base(base_model: str, target: Path) -> None:
    """The base model's files: a local folder is copied; a hub id is downloaded (weights, config, tokenizer)."""
    local = Path(base_model).expanduser()
    if local.is_dir():
        shutil.copytree(local, target, ignore=shutil.ignore_patterns(".cache", "*.lock"))
        return
    from huggingface_hub import snapshot_download

    try:
        snapshot_download(base_model, local_dir=target, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model"])
    except Exception as err:  # offline, gated or missing: the hub raises many types; all mean "cannot fetch"
        raise BundleError(
            f"cannot download the base model {base_model!r} to bundle it: {err}. Log in (HF_TOKEN) or "
            "download it once while online"
        ) from None


def _run_config(source: ModelSource):  # -> Config | None
    logged = source.config_path()
    return load_config(logged) if logged else None


def _write_config(config, path: Path, *, base_path: str) -> None:
    """The training config, loading the bundled base in full precision (merging into 4-bit loses the update)."""
    from ..config import dump_config

    model = config.model.model_copy(update={"base_model": base_path, "load_in_4bit": False, "build_tiny": False})
    dump_config(config.model_copy(update={"model": model}), path)


def main(
    model: Annotated[str, typer.Option(help="Model to deploy: an MLflow URI (models:/<name>@champion) or a folder.")],
    out: Annotated[Path, typer.Option(help="Bundle folder (the Dockerfile's `bundled` stage copies it).")] = Path(
        "build/model"
    ),
    fallback: Annotated[
        str | None, typer.Option(help="Used when --model cannot be found, e.g. `latest` (newest outputs/<run>).")
    ] = None,
    mount_dir: Annotated[str, typer.Option(help="Where the bundle is inside the image.")] = MOUNT_DIR,
    # >>> llama_cpp
    gguf: Annotated[
        str | None, typer.Option(help="Also the model's GGUF export of this type (f16, q8_0, q4_k_m), for llama.cpp.")
    ] = None,
    # <<< llama_cpp
) -> None:
    """Bundle a trained model (adapter + base + config) for a container image."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        origin, source = choose_source(model, fallback=fallback)
        # >>> llama_cpp
        from .llama_cpp import exported_gguf

        gguf_file = exported_gguf(source, gguf) if gguf else None  # none: exit 2 before anything is written
        bundle_model(source, out, origin=origin, mount_dir=mount_dir, gguf=gguf_file)
        # <<< llama_cpp
        # >>> !llama_cpp
        bundle_model(source, out, origin=origin, mount_dir=mount_dir)
        # <<< !llama_cpp
    except ProjectError as err:  # ends with the error's own exit code (1: no model or a bad adapter)
        typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
        raise typer.Exit(err.exit_code) from None
    version = f" version {source.version}" if source.version else ""
    typer.secho(f"bundled {origin}{version} (base {source.base_model}) into {out}", fg=typer.colors.GREEN)


if __name__ == "__main__":
    typer.run(main)
