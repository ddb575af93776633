"""Runs in the notebook or cloud job: train (resuming a stopped attempt), evaluate, write what `cloud fetch` imports.

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
reach from the cloud and nothing to merge.
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
from typing import Any

from ..config import Config, ConfigError, load_config
from ..errors import ProjectError
from ..runs import CONFIG_FILE, TRAIN_LOG

log = logging.getLogger(__name__)
JOB_FILE = "job.json"
LOCAL = "local.json"  # the settings as they are on the user's machine (local_settings), beside the config
DEFAULT_RUN_NAME = "cloud-run"
INTERRUPTED = 143  # 128 + SIGTERM, what a stopped process reports: the platform restarts a spot job


class EntrypointError(ProjectError, ValueError):
    """The job cannot run as asked (no output folder, a bad config); the message names what to fix."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"python -m {__name__}", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="the staged config.yaml (overrides already applied)")
    parser.add_argument("--output", required=True, type=Path, help="results folder (what `cloud fetch` imports)")
    parser.add_argument("--checkpoints", required=True, type=Path, help="folder the platform keeps across restarts")
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
    try:
        run(args)
    except KeyboardInterrupt:
        log.warning("stopped: the checkpoints in %s stay for the restart", args.checkpoints)
        return INTERRUPTED
    except ProjectError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def run(args: argparse.Namespace) -> Path:
    """Train (or resume, or skip a finished training), evaluate, write --output; returns the output folder."""
    started, output, checkpoints = datetime.now(UTC), args.output, args.checkpoints
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
    local = Path(args.local_settings) if args.local_settings else config_file.parent / LOCAL
    if local.is_file():
        rewrite_config(results / CONFIG_FILE, json.loads(local.read_text(encoding="utf-8")))
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


def recipe_for(config: Config):  # -> train.sft.Recipe | None (None: SFT)
    """The training recipe of `train.stage`: SFT (train/sft.py) unless an extra's stage is asked for. Here, not in
    train/, because an extra's recipe comes after training in the stage order; cli.py's `train` uses it too."""
    # >>> preference_tuning
    if config.train.stage == "dpo":
        from ..preference.dpo import DPO

        return DPO
    if config.train.stage == "grpo":
        from ..preference.grpo import GRPO

        return GRPO
    # <<< preference_tuning
    return None


def _train(config, *, config_file: Path, config_name: str, nproc: int, resume: bool) -> None:
    """One process here, or `nproc` through the multi-GPU launcher (a copy of the job's config for it)."""
    if nproc <= 1:
        from ..train.sft import train

        train(config, config_name=config_name, resume=resume, recipe=recipe_for(config))
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


def local_settings(config: Config) -> dict[str, object]:
    """The settings the job changes, as they are here (the notebook and `cloud train` write them to local.json):
    written back into the run's config.yaml, so an imported run reads as if trained here (evaluate compares
    data.path, for one)."""
    return {
        "data.path": config.data.path,
        "model.base_model": config.model.base_model,
        "train.output_dir": config.train.output_dir,
        "eval.report_dir": config.eval.report_dir,
        "tracking": config.tracking.model_dump(mode="json"),
    }


def rewrite_config(config_path: Path, updates: dict[str, Any]) -> None:
    """The run's config.yaml with each `section.key` (or whole `section`) of `updates` set: the job's settings
    put back as they are on the user's machine, or (importer.py) this project's folders and the job's price."""
    import yaml

    resolved = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    for key, value in updates.items():
        section, _, name = key.partition(".")
        if name:
            resolved.setdefault(section, {})[name] = value
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
