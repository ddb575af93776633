"""Runs inside the cloud job: train (resuming a preempted attempt), evaluate, write what `cloud fetch` imports.

    python -m <package>.clouds.entrypoint --config config.yaml --output DIR --checkpoints DIR [--no-evaluate]

The run folder lives in the checkpoint folder, which the platform keeps across a spot interruption
(SageMaker syncs /opt/ml/checkpoints to CheckpointConfig.S3Uri and copies it back on restart; Vertex
AIP_CHECKPOINT_DIR, Azure ./outputs likewise): `<checkpoints>/<train.run_name>/checkpoint-<step>/`. A restart finds
the newest complete checkpoint there and continues it through `train --resume`, so the global step goes on
from the checkpoint, not from zero. The run name is fixed by `cloud train` before the job starts, so every
attempt looks in the same place.

What it writes into --output (the layout `cloud fetch` and `importer.import_run` read):

    outputs/<run>/adapter/, config.yaml, train_log.json   as a local `train` writes them (no checkpoints)
    reports/eval.json, reports/eval.md                    as a local `evaluate` writes them
    job.json                                              run name, hardware, start, end, seconds, attempts

MLflow is off inside the job: the import on your machine creates the run from config.yaml and
train_log.json (every logged step) and eval.json, in your own store, so there is no tracking server to
reach from the cloud and nothing to merge. Folders come from the arguments, else the platform's variables:
SM_MODEL_DIR / SM_CHECKPOINT_DIR (SageMaker), AIP_MODEL_DIR / AIP_CHECKPOINT_DIR (Vertex AI).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from datetime import UTC, datetime
from pathlib import Path

from ..config import ConfigError, load_config
from ..errors import ProjectError
from ..runs import CONFIG_FILE, TRAIN_LOG

log = logging.getLogger(__name__)
JOB_FILE = "job.json"
OUTPUT_ENV = ("SM_MODEL_DIR", "AIP_MODEL_DIR")
CHECKPOINT_ENV = ("SM_CHECKPOINT_DIR", "AIP_CHECKPOINT_DIR")
# SageMaker's fixed paths when its variables are not set (a container run without the training toolkit).
DEFAULT_OUTPUT, DEFAULT_CHECKPOINTS = "/opt/ml/model", "/opt/ml/checkpoints"
DEFAULT_RUN_NAME = "cloud-run"
INTERRUPTED = 143  # 128 + SIGTERM, what a stopped process reports: the platform restarts a spot job


class EntrypointError(ProjectError, ValueError):
    """The job cannot run as asked (no output folder, a bad config); the message names what to fix."""


def _folder(given: str | None, names: tuple[str, ...], default: str) -> Path:
    for value in (given, *(os.environ.get(name) for name in names)):
        if value:
            return Path(value)
    return Path(default)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"python -m {__name__}", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="the staged config.yaml (overrides already applied)")
    parser.add_argument("--output", help="results folder; default $SM_MODEL_DIR / $AIP_MODEL_DIR / /opt/ml/model")
    parser.add_argument("--checkpoints", help="folder kept across restarts; default $SM_CHECKPOINT_DIR / ...")
    parser.add_argument("--evaluate", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--nproc", type=int, default=1, help="processes (GPUs) for training: > 1 uses accelerate")
    parser.add_argument("--config-name", help="the config's name as run folders and tags use it (default: its stem)")
    parser.add_argument("--local-settings", help="local.json from staging (default: beside --config)")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the job; 0 when done, 2 on bad input, INTERRUPTED when stopped (SIGTERM: a spot interruption)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    output = _folder(args.output, OUTPUT_ENV, DEFAULT_OUTPUT)
    checkpoints = _folder(args.checkpoints, CHECKPOINT_ENV, DEFAULT_CHECKPOINTS)
    try:
        run(args, output=output, checkpoints=checkpoints)
    except KeyboardInterrupt:
        log.warning("stopped: the checkpoints in %s stay for the restart", checkpoints)
        return INTERRUPTED
    except ProjectError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def run(args: argparse.Namespace, *, output: Path, checkpoints: Path) -> Path:
    """Train (or resume, or skip a finished training), evaluate, write --output; returns the output folder."""
    started = datetime.now(UTC)
    config_file = Path(args.config)
    job_overrides = [
        f"train.output_dir={checkpoints}",
        f"eval.report_dir={output / 'reports'}",
        "tracking.enabled=false",
    ]
    try:
        config = load_config(config_file, [*args.overrides, *job_overrides])
    except ConfigError as err:
        raise EntrypointError(str(err)) from None
    if not config.train.run_name:
        config = load_config(config_file, [*args.overrides, *job_overrides, f"train.run_name={DEFAULT_RUN_NAME}"])
    run_dir = checkpoints / config.train.run_name
    resumed_from = _prepare_run_dir(run_dir)
    if resumed_from != "finished":
        name = args.config_name or config_file.stem
        _train(config, config_file=config_file, config_name=name, nproc=args.nproc, resume=resumed_from is not None)
    if args.evaluate:
        from ..evaluate.evaluate import evaluate

        evaluate(config, adapter_dir=run_dir / "adapter")
    results = output / "outputs" / run_dir.name
    _copy_results(run_dir, results)
    local = Path(args.local_settings) if args.local_settings else config_file.parent / "local.json"
    _write_back_local_settings(results / CONFIG_FILE, local)
    _write_job_record(output, run_dir=run_dir, started=started, resumed_from=resumed_from)
    return output


def _prepare_run_dir(run_dir: Path) -> str | None:
    """What an earlier attempt left: None (start), the checkpoint to resume, or "finished" (training done, the
    evaluation was cut short). A folder without a complete checkpoint is the start of an attempt that died
    before its first save: removed, so training starts again under the same name."""
    from ..train.sft import last_checkpoint

    if (run_dir / "adapter").is_dir() and (run_dir / TRAIN_LOG).is_file():
        return "finished"
    checkpoint = last_checkpoint(run_dir)
    if checkpoint:
        log.info("resuming %s from %s (an earlier attempt was stopped)", run_dir.name, Path(checkpoint).name)
        return Path(checkpoint).name
    if run_dir.exists():
        shutil.rmtree(run_dir)
    return None


def _train(config, *, config_file: Path, config_name: str, nproc: int, resume: bool) -> None:
    """One process here, or `nproc` through the multi-GPU launcher (a copy of the job's config for it)."""
    if nproc <= 1:
        from ..train.sft import train

        recipe = None  # SFT
        # >>> preference_tuning
        if config.train.stage == "dpo":
            from ..preference.dpo import DPO as recipe
        # <<< preference_tuning
        train(config, config_name=config_name, resume=resume, recipe=recipe)
        return
    # >>> multi_gpu
    import subprocess
    import tempfile

    from ..config import dump_config
    from ..distributed.launch import LaunchShape, launch_command

    with tempfile.TemporaryDirectory() as scratch:
        resolved = Path(scratch) / f"{config_name}.yaml"  # the launched `train` names runs after the file
        dump_config(config, resolved)
        train_args = ["--config", str(resolved), *(["--resume"] if resume else [])]
        command = launch_command(LaunchShape(nproc=nproc), train_args=train_args)
        log.info("+ %s", " ".join(command))
        finished = subprocess.run(command, check=False)
    if finished.returncode in (INTERRUPTED, -15):  # the launcher stopped by SIGTERM: a spot interruption
        raise KeyboardInterrupt
    if finished.returncode != 0:
        raise EntrypointError(f"training failed (exit {finished.returncode}); its log is above")
    # <<< multi_gpu
    # >>> !multi_gpu
    raise EntrypointError(f"--nproc {nproc}: this project was made without the multi_gpu extra; use --nproc 1")
    # <<< !multi_gpu


def _write_back_local_settings(config_path: Path, local: Path) -> None:
    """The run's config.yaml with the settings the job changed put back as they are on the user's machine."""
    if not local.is_file():
        return
    import yaml

    resolved = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    for key, value in json.loads(local.read_text(encoding="utf-8")).items():
        section, _, name = key.partition(".")
        if name:
            resolved[section][name] = value
        else:
            resolved[section] = value
    config_path.write_text(yaml.safe_dump(resolved, sort_keys=False), encoding="utf-8")


def _copy_results(run_dir: Path, dest: Path) -> None:
    """outputs/<run>/ without the checkpoints (they stay in the platform's checkpoint storage)."""
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(run_dir, dest, ignore=shutil.ignore_patterns("checkpoint-*"))


def _write_job_record(output: Path, *, run_dir: Path, started: datetime, resumed_from: str | None) -> None:
    from ..tracking import library_versions

    train_log = json.loads((run_dir / TRAIN_LOG).read_text(encoding="utf-8"))
    ended = datetime.now(UTC)
    record = {
        "run_name": run_dir.name,
        "hardware": train_log.get("hardware"),
        "started": started.isoformat(timespec="seconds"),
        "ended": ended.isoformat(timespec="seconds"),
        "seconds": round((ended - started).total_seconds(), 1),
        "train_runtime_s": train_log.get("train_runtime_s"),
        "resumed_from": resumed_from,
        "library_versions": library_versions(),  # the job's, logged as the imported run's version.* params
        "platform_job": os.environ.get("TRAINING_JOB_NAME") or os.environ.get("CLOUD_ML_JOB_ID"),
    }
    (output / JOB_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
