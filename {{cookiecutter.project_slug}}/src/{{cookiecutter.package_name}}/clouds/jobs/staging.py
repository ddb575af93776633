"""What a cloud job uploads: one folder, the same on every target.

    <staging>/project.tar.gz   the project as a source archive: pyproject.toml, README.md, src/ (pip installs it
                               in the platform's PyTorch container, whose torch satisfies the project's range)
    <staging>/config.yaml      the resolved config: the file, the overrides, the defaults; data.path points at
                               data/<name> below, train.run_name is the job's run name
    <staging>/data/<name>/...  the config's data files (a folder of splits or one file)
    <staging>/local.json       the settings the job changes (data.path, ...) as they are here, to write back
    # >>> multi_gpu
    <staging>/configs/accelerate/*.yaml   the multi-GPU launcher's configs
    # <<< multi_gpu
    <staging>/run.sh           the launcher: install the archive, then run the job's command (the entrypoint)
    <staging>/manifest.json    every file with its size and sha256, in order

A source archive rather than a wheel: `python -m build` is not installed here and a wheel would need one; pip
builds the archive inside the job with the project's own build backend. The archive is made byte for byte the
same from the same files (sorted names, fixed times and owners), so the manifest changes only with the code.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shlex
import shutil
import tarfile
from pathlib import Path

from ...config import Config, dump_config
from ...errors import BadInput
from ..entrypoint import LOCAL, local_settings

ARCHIVE, CONFIG, LAUNCHER, MANIFEST = "project.tar.gz", "config.yaml", "run.sh", "manifest.json"
# What the archive holds, relative to the project root: enough for `pip install` (pyproject + sources).
PROJECT_FILES = ("pyproject.toml", "README.md", "LICENSE")
SKIPPED = ("__pycache__", ".pyc", ".egg-info")


class StagingError(BadInput, ValueError):
    """The job's inputs cannot be staged (the data is not local, the project files are missing); the
    message names the file or setting and the fix."""


def stage_inputs(
    config: Config, config_file: Path, overrides: list[str], out: Path, *, project_root: Path | None = None
) -> Path:
    """Write the job's inputs into `out` (which must not exist); returns `out`. `config` is the resolved config
    (`config_file` + `overrides`); its data must be local files. On failure nothing is left behind."""
    root = (project_root or Path.cwd()).resolve()
    data = Path(config.data.path)
    if not data.exists():
        raise StagingError(
            f"data.path={config.data.path}: no such local file or folder (from {config_file}). A cloud job uploads "
            "local data: run `make data`, or point data.path at your files. Nothing was uploaded."
        )
    if not (root / "pyproject.toml").is_file() or not (root / "src").is_dir():
        raise StagingError(f"{root}: not the project folder (no pyproject.toml and src/); run from the project root")
    if out.exists():
        raise StagingError(f"{out} already exists; remove it or stage into a new folder")
    try:
        out.mkdir(parents=True)
        _write_archive(root, out / ARCHIVE)
        staged_data = _copy_data(data, out / "data")
        # >>> multi_gpu
        _copy_accelerate_configs(root, out)
        # <<< multi_gpu
        dump_config(_job_config(config, staged_data=staged_data), out / CONFIG)
        (out / LOCAL).write_text(json.dumps(local_settings(config), indent=2) + "\n", encoding="utf-8")
        (out / LAUNCHER).write_text(launcher(overrides_note=overrides), encoding="utf-8")
        (out / LAUNCHER).chmod(0o755)
        write_manifest(out)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    return out


def _job_config(config: Config, *, staged_data: str) -> Config:
    """The config as the job sees it: the staged data; a tiny model built in the job (build_tiny). A local
    base model folder cannot be reached from the job: refused (push it to the Hub, or use a hub id)."""
    model = config.model
    base = Path(model.base_model)
    if model.build_tiny:
        model = model.model_copy(update={"base_model": f"models/{base.name}"})
    elif base.exists():
        raise StagingError(
            f"model.base_model={model.base_model} is a local folder, which the cloud job cannot read. Use a "
            "Hugging Face hub id (e.g. the one it was downloaded from), or upload it to the Hub first"
        )
    return config.model_copy(update={"data": config.data.model_copy(update={"path": staged_data}), "model": model})


# >>> multi_gpu
def _copy_accelerate_configs(root: Path, out: Path) -> None:
    """configs/accelerate/*.yaml: the multi-GPU launcher reads them (relative to where the job runs)."""
    source = root / "configs" / "accelerate"
    if source.is_dir():
        (out / "configs" / "accelerate").mkdir(parents=True)
        for path in sorted(source.glob("*.yaml")):
            shutil.copy2(path, out / "configs" / "accelerate" / path.name)


# <<< multi_gpu


def _copy_data(data: Path, dest: Path) -> str:
    """Copy the data file or folder (files only, no subfolders) to dest/<name>; return the staged path, relative
    to the staging folder (the job runs there)."""
    target = dest / data.name
    if data.is_file():
        target.parent.mkdir(parents=True)
        shutil.copy2(data, target)
    else:
        target.mkdir(parents=True)
        for path in sorted(data.iterdir()):
            if path.is_file() and not path.name.startswith("."):
                shutil.copy2(path, target / path.name)
    return f"data/{data.name}"


def _archive_members(root: Path) -> list[Path]:
    members = [root / name for name in PROJECT_FILES if (root / name).is_file()]
    members += [
        path
        for path in sorted((root / "src").rglob("*"))
        if path.is_file() and not any(part in str(path) for part in SKIPPED)
    ]
    return members


def _write_archive(root: Path, archive: Path) -> None:
    """A gzipped tar of the project's installable files under `<project>/`, the same bytes for the same files."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in _archive_members(root):
            info = tarfile.TarInfo(f"project/{path.relative_to(root).as_posix()}")
            info.size, info.mode, info.mtime = path.stat().st_size, 0o644, 0
            with path.open("rb") as handle:
                tar.addfile(info, handle)
    with archive.open("wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as zipped:
        zipped.write(buffer.getvalue())


def launcher(*, overrides_note: list[str] = ()) -> str:
    """run.sh: installs the project into the container's Python, then runs the job's command ("$@", built by
    job.train_command) from the staging folder, so the config's relative paths (data/...) resolve."""
    note = f"# overrides applied in config.yaml: {shlex.join(overrides_note)}\n" if overrides_note else ""
    return (
        "#!/usr/bin/env bash\n"
        "# Runs inside the cloud job (made by `cloud train`; see clouds/jobs/staging.py).\n"
        f"{note}"
        "set -euo pipefail\n"
        'cd "$(dirname "$0")"\n'
        # The container's torch stays: the project's range accepts it, so pip does not download another.
        f"python -m pip install --no-cache-dir --quiet ./{ARCHIVE}\n"
        'exec "$@"\n'
    )


def write_manifest(folder: Path) -> list[dict]:
    """manifest.json: every file of `folder` (sorted) with size and sha256; returns the entries."""
    entries = [
        {"path": path.relative_to(folder).as_posix(), "bytes": path.stat().st_size, "sha256": _sha256(path)}
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != MANIFEST
    ]
    (folder / MANIFEST).write_text(json.dumps(entries, indent=2) + "\n", encoding="utf-8")
    return entries


def staged_files(folder: Path) -> list[str]:
    """The staging folder's files, relative and sorted: what a target uploads, in that order."""
    return sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file())


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
