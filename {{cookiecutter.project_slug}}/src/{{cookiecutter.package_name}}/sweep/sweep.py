"""Hyperparameter sweeps with Optuna: each trial is one `train` run (the same code), stopped early when its
validation loss falls behind the other trials'.

    <project> sweep --config configs/smoke.yaml --trials 6     # the shipped smoke space, a few minutes on 2 cores
    <project> sweep --config configs/smoke.yaml --trials 10    # the same study again: runs only the 4 missing trials
    <project> train --config configs/best.yaml                 # the winner, trained once more and registered

The searched settings are the config's `sweep.space` (dotted config keys mapped to distributions), checked
before any training. Each trial trains with its values as overrides; a TrainerCallback reports the objective
at every evaluation to Optuna's pruner, which stops a trial that is worse than the median of the finished
ones at the same step. The study lives in SQLite (`sweep.storage`, optuna.db beside mlflow.db), so a
stopped sweep continues under the same study name. Each trial is an MLflow run nested under the sweep's
parent run; trials register no model version and keep no weights (their config.yaml and train_log.json
stay in outputs/sweeps/<study>/). At the end: configs/best.yaml (the base config plus the best values)
and reports/sweep_history.png, reports/sweep_importance.png.
"""

from __future__ import annotations

import difflib
import json
import logging
import re
import shutil
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from ..config import Config, ConfigError, SweepParam, describe_keys, key_lines, load_config
from ..errors import BadInput
from ..runs import read_tracking_file
from ..tracking import check_tracking_server, client, project_experiment_id
from ..train.sft import train

if TYPE_CHECKING:
    import optuna
    from transformers import TrainerCallback

log = logging.getLogger(__name__)
PLOTS = {"history": "sweep_history.png", "importance": "sweep_importance.png"}
# Study attribute holding the MLflow parent run, so a continued sweep nests its new trials under the same run.
PARENT_RUN_ATTR = "mlflow_parent_run_id"
FINISHED = ("COMPLETE", "PRUNED")  # trials that count towards --trials; failed ones are run again


class SweepError(BadInput, ValueError):
    """The search space is invalid, or a sweep cannot go on; the message names the key, file and line."""


@dataclass
class SweepResult:
    """What a sweep left: trial counts by state, the best trial and the files written."""

    study_name: str
    objective: str
    states: dict[str, int]
    ran: int  # trials run by this call (a continued study ran others before)
    best_trial: int | None = None
    best_value: float | None = None
    best_params: dict[str, Any] = field(default_factory=dict)
    best_config: Path | None = None
    plots: dict[str, Path] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def run_sweep(
    config_path: Path,
    *,
    trials: int,
    overrides: Sequence[str] = (),
    study_name: str | None = None,
    best_config: Path | None = None,
) -> SweepResult:
    """Run trials of the config's `sweep.space` until the study holds `trials` finished (complete or pruned)
    ones; write the best config to `best_config` (default: best.yaml beside the config) and the plots."""
    config = check_space(config_path, overrides=overrides)
    name = study_name or config.sweep.study_name or f"{config_path.stem}-sweep"
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise SweepError(f"study name {name!r}: use letters, digits, '.', '_' or '-' (it names a folder)")
    study = _open_study(config, name=name)
    remaining = max(trials - _finished(study), 0)
    log.info("study %s: %d of %d trials finished, running %d", name, _finished(study), trials, remaining)
    parent_run_id = _parent_run(config, study=study, config_name=config_path.stem)
    trial_root = Path(config.train.output_dir) / "sweeps" / name
    with _ended(parent_run_id):
        study.optimize(
            lambda trial: _run_trial(
                trial, config_path=config_path, overrides=overrides, trial_root=trial_root, parent_run_id=parent_run_id
            ),
            n_trials=remaining,
            gc_after_trial=True,  # each trial loads a model: free it before the next
        )
        result = _finish(
            study,
            config=config,
            config_path=config_path,
            overrides=overrides,
            best_config=best_config or config_path.with_name("best.yaml"),
        )
        result.ran = remaining
        if parent_run_id:
            _log_parent(parent_run_id, result=result)
    return result


def check_space(config_path: Path, *, overrides: Sequence[str] = ()) -> Config:
    """The config, once every `sweep.space` entry names a config key and each of its bounds (or choices) is a
    value the config accepts; else SweepError listing each problem with its file and line. Distributions
    themselves (low < high, choices) are checked by the config's own validation (ConfigError)."""
    config = load_config(config_path, overrides)
    lines = key_lines(config_path)
    where = {
        key: f"{config_path}:{lines[f'sweep.space.{key}']}"
        for key in config.sweep.space
        if f"sweep.space.{key}" in lines
    }
    settable = [key for key, _, _ in describe_keys() if key != "project" and not key.startswith("sweep.")]
    problems = []
    if not config.sweep.space:
        problems.append(
            f"{config_path}: sweep.space is empty; declare the settings to search, e.g. "
            "train.learning_rate: {type: log_uniform, low: 1.0e-5, high: 1.0e-3}"
        )
    for key, param in config.sweep.space.items():
        source = where.get(key, str(config_path))
        if key not in settable:
            close = difflib.get_close_matches(key, settable, n=1)
            hint = f"did you mean '{close[0]}'?" if close else "`config keys` lists them"
            problems.append(f"{source}: sweep.space.{key}: not a config key that can be searched; {hint}")
            continue
        for value in _bounds(param):
            try:
                load_config(config_path, [*overrides, _override(key, value)])
            except ConfigError as err:
                reason = str(err).splitlines()[-1].strip().split(": ", 1)[-1]  # drop "command line (...)"
                problems.append(f"{source}: sweep.space.{key}: {value!r} is refused by the config ({reason})")
    if problems:
        header = f"invalid sweep space ({len(problems)} problem{'s' if len(problems) > 1 else ''}):"
        raise SweepError("\n".join([header, *(f"  {problem}" for problem in problems)]))
    return config


def _bounds(param: SweepParam) -> list[Any]:
    """The values a distribution can reach at its ends (every choice of a categorical one)."""
    if param.type == "categorical":
        return list(param.choices or [])
    if param.type == "int":
        return [int(param.low), int(param.high)]
    return [param.low, param.high]


def _override(key: str, value: Any) -> str:
    return f"{key}={json.dumps(value)}"  # JSON is YAML: numbers, booleans and strings keep their type


def _open_study(config: Config, *, name: str) -> optuna.Study:
    """The study `name` in sweep.storage, created or continued; a trial left RUNNING by a stopped sweep is
    marked FAIL (it is run again as a new trial)."""
    import optuna
    from optuna.trial import TrialState

    sweep = config.sweep
    pruner = (
        optuna.pruners.MedianPruner(n_startup_trials=sweep.n_startup_trials, n_warmup_steps=sweep.n_warmup_steps)
        if sweep.pruner == "median"
        else optuna.pruners.NopPruner()
    )
    study = optuna.create_study(
        study_name=name, storage=sweep.storage, pruner=pruner, direction=sweep.direction, load_if_exists=True
    )
    if study.direction.name.lower() != sweep.direction:
        raise SweepError(
            f"study {name!r} in {sweep.storage} was created to {study.direction.name.lower()} its objective, "
            f"not to {sweep.direction}; pick another --study-name"
        )
    for stale in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(stale.number, state=TrialState.FAIL)
    # Seeded by how many trials exist, so a continued study draws new values instead of repeating its first ones.
    study.sampler = optuna.samplers.TPESampler(seed=sweep.seed + len(study.trials))
    return study


def _finished(study: optuna.Study) -> int:
    return sum(trial.state.name in FINISHED for trial in study.trials)


def _parent_run(config: Config, *, study: optuna.Study, config_name: str) -> str | None:
    """The sweep's MLflow run (the trials' parent): created once per study, reopened when it continues."""
    if not config.tracking.enabled:
        return None
    check_tracking_server(consequence="No trial was run.")
    mlflow_client = client()
    run_id = study.user_attrs.get(PARENT_RUN_ATTR)
    if run_id:
        mlflow_client.update_run(run_id, status="RUNNING")
    else:
        tags = {"config": config_name, "sweep.study": study.study_name, "sweep.storage": config.sweep.storage}
        run_id = mlflow_client.create_run(
            project_experiment_id(config.project), run_name=study.study_name, tags=tags
        ).info.run_id
        study.set_user_attr(PARENT_RUN_ATTR, run_id)
    space = {key: param.model_dump(exclude_none=True) for key, param in config.sweep.space.items()}
    mlflow_client.set_tag(run_id, "sweep.space", json.dumps(space))
    mlflow_client.set_tag(run_id, "sweep.objective", f"{config.sweep.direction} {config.sweep.objective}")
    return run_id


@contextmanager
def _ended(run_id: str | None) -> Iterator[None]:
    """End the parent run FINISHED, FAILED, or KILLED on Ctrl-C (the study stays resumable either way)."""
    if run_id is None:
        yield
        return
    try:
        yield
    except KeyboardInterrupt:
        client().set_terminated(run_id, "KILLED")
        raise
    except BaseException:
        client().set_terminated(run_id, "FAILED")
        raise
    client().set_terminated(run_id, "FINISHED")


# ---- one trial -------------------------------------------------------------------------------------------


def _run_trial(
    trial: optuna.Trial, *, config_path: Path, overrides: Sequence[str], trial_root: Path, parent_run_id: str | None
) -> float:
    """Train with the trial's values; return the objective at the last evaluation, or raise TrialPruned."""
    import optuna

    base = load_config(config_path, overrides)
    values = {key: _suggest(trial, key=key, param=param) for key, param in base.sweep.space.items()}
    run_dir = trial_root / f"trial-{trial.number:03d}"
    config = _trial_config(
        config_path, overrides=[*overrides, *(_override(k, v) for k, v in values.items())], run_dir=run_dir
    )
    pruning = pruning_callback(trial, objective=base.sweep.objective)
    state = "FAIL"
    try:
        train(config, config_name=config_path.stem, callbacks=[pruning], log_model=False)
        state = "COMPLETE" if pruning.pruned_at is None else "PRUNED"
    finally:
        _record_trial(run_dir, parent_run_id=parent_run_id, number=trial.number, state=state, value=pruning.last_value)
        _drop_weights(run_dir)
    if pruning.last_value is None:
        raise SweepError(f"trial {trial.number} ran no evaluation: train.eval_steps must not exceed train.max_steps")
    if state == "PRUNED":
        raise optuna.TrialPruned(f"{base.sweep.objective}={pruning.last_value:.4f} at step {pruning.pruned_at}")
    return pruning.last_value


def _suggest(trial: optuna.Trial, *, key: str, param: SweepParam) -> Any:
    if param.type == "categorical":
        return trial.suggest_categorical(key, param.choices)
    if param.type == "int":
        return trial.suggest_int(key, int(param.low), int(param.high))
    return trial.suggest_float(key, param.low, param.high, log=param.type == "log_uniform")


def _trial_config(config_path: Path, *, overrides: Sequence[str], run_dir: Path) -> Config:
    """The trial's config: its values, its own run folder, no registered version, no checkpoints to keep."""
    config = load_config(config_path, overrides)
    fixed = [
        f"train.output_dir={run_dir.parent}",
        f"train.run_name={run_dir.name}",
        "tracking.register_model=false",
        "tracking.promote=false",
    ]
    if config.train.early_stopping_patience is None:  # early stopping reloads the best checkpoint: keep saving
        fixed.append(f"train.save_steps={config.train.eval_steps * 10_000}")  # a stopped trial restarts, never resumes
    return load_config(config_path, [*overrides, *fixed])


def pruning_callback(trial: optuna.Trial, *, objective: str) -> TrainerCallback:
    """A Trainer callback reporting `objective` at each evaluation to the trial; when Optuna's pruner says the
    trial is worse than the others at that step, it stops training (`pruned_at` = that step)."""
    from transformers import TrainerCallback

    class OptunaPruning(TrainerCallback):
        last_value: float | None = None
        pruned_at: int | None = None

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            self.last_value = objective_value(metrics or {}, objective=objective)
            trial.report(self.last_value, step=state.global_step)
            if trial.should_prune():
                self.pruned_at = state.global_step
                control.should_training_stop = True

    return OptunaPruning()


def objective_value(metrics: dict[str, Any], *, objective: str) -> float:
    """`objective` (`eval_loss`, or `loss` meaning the same) from an evaluation's metrics."""
    for key in (objective, f"eval_{objective}"):
        if isinstance(metrics.get(key), int | float):
            return float(metrics[key])
    known = ", ".join(sorted(key for key, value in metrics.items() if isinstance(value, int | float)))
    raise SweepError(f"sweep.objective={objective!r} is not a metric of the validation evaluation; it has: {known}")


def _record_trial(run_dir: Path, *, parent_run_id: str | None, number: int, state: str, value: float | None) -> None:
    """Nest the trial's MLflow run under the sweep's (MLflow's own parent tag) with its state and objective."""
    record = read_tracking_file(run_dir) if run_dir.is_dir() else None
    if parent_run_id is None or record is None:
        return
    mlflow_client, run_id = client(), record["run_id"]
    mlflow_client.set_tag(run_id, "mlflow.parentRunId", parent_run_id)
    mlflow_client.set_tag(run_id, "sweep.trial", str(number))
    mlflow_client.set_tag(run_id, "sweep.state", state)
    if value is not None:
        mlflow_client.log_metric(run_id, "sweep.objective", value)


def _drop_weights(run_dir: Path) -> None:
    """A trial keeps its config.yaml, train_log.json and tracking.json; its weights are not needed: the best
    config is trained again with `train --config configs/best.yaml`."""
    for folder in [run_dir / "adapter", run_dir / "adapter.partial", *run_dir.glob("checkpoint-*")]:
        shutil.rmtree(folder, ignore_errors=True)


# ---- the end of a sweep ----------------------------------------------------------------------------------


def _finish(
    study: optuna.Study, *, config: Config, config_path: Path, overrides: Sequence[str], best_config: Path
) -> SweepResult:
    """Plots, best.yaml and the summary of the whole study (this call's trials and earlier ones)."""
    states = Counter(trial.state.name for trial in study.trials)
    result = SweepResult(study_name=study.study_name, objective=config.sweep.objective, states=dict(states), ran=0)
    result.plots, result.notes = write_sweep_plots(
        study, out_dir=Path(config.eval.report_dir), objective=config.sweep.objective
    )
    if not states["COMPLETE"]:
        result.notes.append(f"no trial completed (all pruned or failed): {best_config} was not written")
        return result
    best = study.best_trial
    result.best_trial, result.best_value, result.best_params = best.number, best.value, dict(best.params)
    result.best_config = write_best_config(
        study, config=config, config_path=config_path, overrides=overrides, out=best_config
    )
    return result


def write_best_config(
    study: optuna.Study, *, config: Config, config_path: Path, overrides: Sequence[str], out: Path
) -> Path:
    """`out`: the base config (file + overrides) with the best trial's values, resolved, under a header
    saying which study, trial and objective value it came from. Written whole, then renamed into place."""
    best = study.best_trial
    best_overrides = [_override(key, value) for key, value in best.params.items()]
    resolved = load_config(config_path, [*overrides, *best_overrides])
    base = " ".join([str(config_path), *overrides])
    header = [
        f"# {config.project} train --config {out}",
        f"# Written by `sweep`: study '{study.study_name}' ({config.sweep.storage}), best of {_finished(study)} "
        f"finished trials: trial {best.number}, {config.sweep.objective}={best.value:.6g} ({config.sweep.direction}).",
        f"# Base: {base}",
        f"# Best values: {' '.join(best_overrides)}",
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f"{out.name}.partial")
    staging.write_text(
        "\n".join(header) + "\n" + yaml.safe_dump(resolved.model_dump(mode="json"), sort_keys=False), encoding="utf-8"
    )
    staging.replace(out)
    log.info("wrote %s (trial %d, %s=%.6g)", out, best.number, config.sweep.objective, best.value)
    return out


def _log_parent(run_id: str, *, result: SweepResult) -> None:
    """The sweep's outcome on its parent run: trial counts, the best value and trial, best.yaml and the plots."""
    mlflow_client = client()
    for state in ("COMPLETE", "PRUNED", "FAIL"):
        mlflow_client.log_metric(run_id, f"trials.{state.lower()}", result.states.get(state, 0))
    if result.best_value is not None:
        mlflow_client.log_metric(run_id, f"best.{result.objective}", result.best_value)
        mlflow_client.set_tag(run_id, "sweep.best_trial", str(result.best_trial))
    for path in [result.best_config, *result.plots.values()]:
        if path is not None:
            mlflow_client.log_artifact(run_id, str(path), artifact_path="sweep")


# ---- plots -----------------------------------------------------------------------------------------------


def write_sweep_plots(study: optuna.Study, *, out_dir: Path, objective: str) -> tuple[dict[str, Path], list[str]]:
    """reports/sweep_history.png (each trial's objective, pruned ones at their last report, and the best so far)
    and reports/sweep_importance.png (Optuna's parameter importances, which need 2 completed trials); returns
    the files written and a note for each plot that could not be made."""
    import matplotlib.style
    from optuna.importance import get_param_importances

    out_dir.mkdir(parents=True, exist_ok=True)
    plots, notes = {}, []
    with matplotlib.style.context("default"):  # the user's matplotlibrc must not change the picture
        plots["history"] = _save(_history_figure(study, objective=objective), out_dir / PLOTS["history"])
        complete = sum(trial.state.name == "COMPLETE" for trial in study.trials)
        importance_png = out_dir / PLOTS["importance"]
        importance_png.unlink(missing_ok=True)  # an earlier sweep's picture would be taken for this one's
        if complete < 2:
            notes.append(
                f"parameter importance needs 2 completed trials, this study has {complete}: no {importance_png}"
            )
            return plots, notes
        try:
            importances = get_param_importances(study)
        except (ValueError, RuntimeError) as err:  # e.g. every completed trial drew the same values
            notes.append(f"parameter importance could not be computed ({err}): no {importance_png}")
            return plots, notes
        plots["importance"] = _save(_importance_figure(importances, objective=objective), importance_png)
    return plots, notes


def _figure():
    """A figure outside pyplot (no global state, no GUI backend): Agg renders it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8.0, 4.5), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure, figure.subplots()


def _save(figure, path: Path) -> Path:
    figure.savefig(path, format="png", metadata={"Software": None})  # no version text: same inputs, same bytes
    return path


def _history_figure(study: optuna.Study, *, objective: str):
    figure, ax = _figure()
    minimize = study.direction.name == "MINIMIZE"
    best, best_line = None, []
    for trial in study.trials:
        if trial.state.name == "COMPLETE":
            ax.plot(trial.number, trial.value, "o", color="#1f77b4")
            best = trial.value if best is None else (min if minimize else max)(best, trial.value)
        elif trial.state.name == "PRUNED" and trial.intermediate_values:
            last_step = max(trial.intermediate_values)
            ax.plot(trial.number, trial.intermediate_values[last_step], "x", color="#d62728", markersize=9)
        best_line.append((trial.number, best))
    points = [(number, value) for number, value in best_line if value is not None]
    if points:
        ax.step(*zip(*points, strict=True), where="post", color="#2ca02c", label="best so far")
    ax.plot([], [], "o", color="#1f77b4", label="completed")
    ax.plot([], [], "x", color="#d62728", label="pruned (value when stopped)")
    ax.set(xlabel="trial", ylabel=objective, title=f"Sweep '{study.study_name}': {objective} by trial")
    ax.legend()
    return figure


def _importance_figure(importances: dict[str, float], *, objective: str):
    figure, ax = _figure()
    names = list(importances)[::-1]  # the most important at the top
    ax.barh(names, [importances[name] for name in names], color="#1f77b4")
    ax.set(xlabel=f"importance for {objective} (share, sums to 1)", title="Which settings mattered (Optuna)")
    return figure
