"""The project's path to its results, from its MLflow runs: docs/experiments.md (every run, what changed against
the run before it, the headline metric with its interval, the gate's decision, lineage), reports/journey.png,
and docs/decisions.md (a dated entry per promotion, refusal and stage change, with a `Why:` line for you).

experiments.md is rewritten each time from the runs (same runs, same bytes); decisions.md is only appended to:
an entry already there (keyed by `<!-- decision: <run id> <kind> -->`) is never rewritten, so your words stay.
A store that is missing, corrupt or unreachable is said so in experiments.md and the log, never a traceback.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..config import Config
from ..errors import first_line
from ..evaluate.markdown import display_path
from ..registry import CHAMPION
from ..tracking import EVALUATION_OF_TAG, TEST_DIGEST_TAG, TrackingError, check_tracking_server, client, tracking_uri
from .summary import LABELS, RATES

log = logging.getLogger(__name__)
RUN_MARK, DECISION_MARK = "<!-- run: {} -->", re.compile(r"<!-- decision: (\S+ \w+) -->")
EMPTY_WHY = re.compile(r"^- Why:\s*$", re.M)  # publish counts these
STAGES = {"sft": "SFT", "dpo": "DPO", "grpo": "GRPO"}
SHOWN_CHANGES, VALUE_CHARS = 12, 40  # a long diff or value (a system prompt) must not bury the rest
UNIQUE_PER_RUN = {"train.run_name"}  # differs in every run: not a change worth a line


@dataclass
class Run:
    """One MLflow run of the project's experiment, as the journey shows it."""

    run_id: str
    name: str
    start_ms: int
    status: str
    params: dict[str, str]
    tags: dict[str, str]
    metrics: dict[str, float]
    data_digest: str | None  # MLflow's digest of the training split
    version: Any = None  # its registered model version (ModelVersion), None when not registered
    # >>> sweeps
    trials: list[Run] = field(default_factory=list)  # a sweep's nested trial runs
    # <<< sweeps

    @property
    def date(self) -> str:
        return datetime.fromtimestamp(self.start_ms / 1000, UTC).strftime("%Y-%m-%d")

    @property
    def stage(self) -> str:
        # >>> sweeps
        if "sweep.study" in self.tags:
            return "sweep"
        # <<< sweeps
        # An imported cloud job has no stage tag; its logged config says, and the core trains only SFT.
        tag = self.tags.get("stage") or self.params.get("train.stage") or "sft"
        stage = STAGES.get(tag, tag)
        return f"{stage}, cloud job" if "cloud.job_id" in self.tags else stage


@dataclass
class Journey:
    metric: str  # tracking.promotion_metric, e.g. finetuned.field_accuracy
    sign: int = 1  # 1: higher is better (tracking.promotion_direction maximize), -1: lower
    runs: list[Run] = field(default_factory=list)
    missing: str | None = None  # why no run could be read
    readable: bool = True  # False: the store is missing, corrupt or unreachable
    champion_run: str | None = None

    def headline(self, run: Run) -> str:
        """`Field accuracy (mean): 41.2% [35.0, 47.1]`, or what is missing and what produces it."""
        value = run.metrics.get(self.metric)
        label = LABELS.get(self.metric.partition(".")[2], self.metric)
        if value is None:
            return f"{label}: not evaluated (`evaluate --adapter {_model_uri(run)}` scores it)"
        low, high = (run.metrics.get(f"{self.metric}.ci_{end}") for end in ("low", "high"))
        bounds = f" [{_number(self.metric, low, 1)}, {_number(self.metric, high, 1)}]" if low is not None else ""
        return f"{label}: {_number(self.metric, value)}{bounds}"


def read_journey(config: Config) -> Journey:
    """Every active run of the project's experiment, oldest first (deleted runs are left out), a sweep's trials
    under the sweep; `missing` says why there are none when the store cannot be read."""
    sign = 1 if config.tracking.promotion_direction == "maximize" else -1
    journey = Journey(metric=config.tracking.promotion_metric, sign=sign)
    uri = tracking_uri()
    store = Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None
    if not config.tracking.enabled:
        journey.missing = "tracking is off (`tracking.enabled: false`), so no run was recorded"
    elif store is not None and not store.is_file():
        journey.missing = f"{display_path(store)} not found: no run recorded yet (`make train evaluate` records one)"
        journey.readable = False
    else:
        from mlflow.exceptions import MlflowException  # with tracking off, mlflow is not even imported
        from sqlalchemy.exc import SQLAlchemyError  # a corrupt SQLite file fails in the client's constructor

        try:
            check_tracking_server(consequence="The experiment log lists no runs.")
            _read_runs(config, journey)
        except (TrackingError, MlflowException, SQLAlchemyError, OSError) as err:
            first = first_line(err)
            journey.missing = f"the MLflow store {display_path(store) if store else uri} could not be read ({first})"
            journey.readable = False
    if journey.missing:
        log.warning("experiment log: %s", journey.missing)
    return journey


def _read_runs(config: Config, journey: Journey) -> None:
    from mlflow.exceptions import MlflowException

    mlflow_client = client()
    experiment = mlflow_client.get_experiment_by_name(config.project)
    if experiment is None:
        journey.missing = f"MLflow has no experiment `{config.project}` yet: no run recorded"
        return
    found = mlflow_client.search_runs([experiment.experiment_id], max_results=5000)
    found = [_run(r) for r in found if EVALUATION_OF_TAG not in r.data.tags]  # other-data evaluations: not runs
    runs = sorted(found, key=lambda r: (r.start_ms, r.run_id))
    try:
        versions = mlflow_client.search_model_versions(f"name='{config.project}'")
        champion = mlflow_client.get_registered_model(config.project).aliases.get(CHAMPION)
    except MlflowException:  # nothing registered yet
        versions, champion = [], None
    by_run = {v.run_id: v for v in sorted(versions, key=lambda v: int(v.version))}  # a run's newest version
    # >>> sweeps
    by_id = {run.run_id: run for run in runs}
    # <<< sweeps
    for run in runs:
        run.version = by_run.get(run.run_id)
        if run.version is not None and str(run.version.version) == str(champion):
            journey.champion_run = run.run_id
        # >>> sweeps
        if parent := by_id.get(run.tags.get("mlflow.parentRunId", "")):
            parent.trials.append(run)  # a sweep's trial: listed under its sweep
            continue
        # <<< sweeps
        journey.runs.append(run)


def _run(found: Any) -> Run:
    train = [d.dataset.digest for d in found.inputs.dataset_inputs if any(t.value == "train" for t in d.tags)]
    return Run(
        run_id=found.info.run_id,
        name=found.info.run_name or found.info.run_id,
        start_ms=found.info.start_time or 0,
        status=found.info.status,
        params=dict(found.data.params),
        tags=dict(found.data.tags),
        metrics=dict(found.data.metrics),
        data_digest=train[0] if train else None,
    )


def _model_uri(run: Run) -> str:
    return f"models:/{run.version.name}/{run.version.version}" if run.version else f"runs:/{run.run_id}/model"


def _number(metric: str, value: float, decimals: int | None = None) -> str:
    if metric.partition(".")[2] in RATES:
        return f"{value * 100:.1f}" if decimals else f"{value:.1%}"
    return f"{value:.4g}"


# ---- docs/experiments.md ---------------------------------------------------------------------------------


def changes(run: Run, before: Run | None) -> str:
    """The config keys whose logged value differs from the run before: `lora.r` 8 -> 16."""
    if before is None:
        return "first run"
    keys = sorted(
        k
        for k in (run.params.keys() | before.params.keys()) - UNIQUE_PER_RUN
        if run.params.get(k) != before.params.get(k)
    )
    shown = [f"`{k}` {_short(before.params.get(k))} → {_short(run.params.get(k))}" for k in keys[:SHOWN_CHANGES]]
    more = f", and {len(keys) - SHOWN_CHANGES} more" if len(keys) > SHOWN_CHANGES else ""
    return (", ".join(shown) + more) if keys else f"no setting changed against {before.name}"


def _short(value: str | None) -> str:
    if value is None:
        return "(unset)"
    return value if len(value) <= VALUE_CHARS else value[: VALUE_CHARS - 1] + "…"


def gate_text(run: Run) -> str:
    tags = run.version.tags if run.version is not None else {}
    if "promotion.decision" not in tags:
        return f"version {run.version.version}, not judged yet" if run.version else "not registered"
    verdict = "promoted to champion" if tags["promotion.decision"] == "promoted" else "refused"
    return f"version {run.version.version} {verdict}: {tags.get('promotion.reason', 'no reason recorded')}"


def experiments_text(journey: Journey, *, project: str, plot: str | None) -> str:
    """The whole page; `plot` is the link to reports/journey.png from docs/, None without one."""
    lines = [
        "# Experiments",
        "",
        "<!-- Written by `report` from the project's MLflow runs and rewritten each time: do not edit here; "
        "write your reasons in decisions.md. -->",
        f"Every run of `{project}` recorded in MLflow, oldest first: what changed against the run before it, the "
        f"headline metric (`{journey.metric}`, with its 95% interval where it has one) and the promotion gate's "
        "decision. Why each decision was taken: [decisions.md](decisions.md).",
        "",
    ]
    if journey.missing:
        return "\n".join([*lines, f"No runs to show: {journey.missing}.", ""])
    if plot is not None:
        lines += [f"![{journey.metric} over the runs, champion starred]({plot})", ""]
    before = None
    for number, run in enumerate(journey.runs, start=1):
        champion = " · **champion**" if run.run_id == journey.champion_run else ""
        status = "" if run.status == "FINISHED" else f" · {run.status.lower()}"
        lines += [f"## {number}. {run.name} · {run.stage} · {run.date}{status}{champion}", ""]
        lines += [f"- {item}" for item in _details(journey, run, before)] + ["", RUN_MARK.format(run.run_id), ""]
        before = run if run.params else before
    return "\n".join(lines)


def _details(journey: Journey, run: Run, before: Run | None) -> list[str]:
    # >>> sweeps
    if run.trials:
        return [_sweep_text(run)]
    # <<< sweeps
    test = run.tags.get(TEST_DIGEST_TAG)
    items = [
        f"Data: training split digest `{run.data_digest or 'not recorded'}`"
        + (f", test rows digest `{test[:12]}`" if test else ""),
        f"Changed: {changes(run, before)}",
        journey.headline(run),
        f"Gate: {gate_text(run)}",
    ]
    # >>> preference_tuning
    if "parent.source" in run.tags or "parent.run_id" in run.tags:
        version = run.tags.get("parent.model_version")
        items.append(f"From: {run.tags.get('parent.source', '?')}" + (f" (version {version})" if version else ""))
    # <<< preference_tuning
    # >>> cloud_training
    if "cloud.cost_usd" in run.tags:
        items.append(f"Cloud job: {run.tags.get('cloud.instance_type', '?')}, ${run.tags['cloud.cost_usd']}")
    # <<< cloud_training
    return items


# >>> sweeps
def _sweep_text(sweep: Run) -> str:
    """One line: the trials, the best one (tag sweep.objective: `minimize eval_loss`) and its searched values."""
    import json

    direction, _, objective = sweep.tags.get("sweep.objective", "minimize eval_loss").partition(" ")
    sign = 1 if direction == "minimize" else -1
    scored = sorted((sign * t.metrics["sweep.objective"], t.start_ms, t.run_id, t) for t in sweep.trials
                    if "sweep.objective" in t.metrics)  # fmt: skip
    found = "none scored"
    if scored:
        best, space = scored[0][-1], sorted(json.loads(sweep.tags.get("sweep.space", "{}")))
        values = ", ".join(f"`{key}`={_short(best.params.get(key))}" for key in space)
        found = f"best {best.name}: {objective} {best.metrics['sweep.objective']:.4g} with {values}"
    return f"Sweep of {len(sweep.trials)} trials, {found}; plots: `reports/sweep_history.png`"
# <<< sweeps


# ---- docs/decisions.md -----------------------------------------------------------------------------------

DECISIONS_HEAD = """# Decisions

Why each promotion, refusal and stage change of this project was made. `report` appends an entry for each new
one with its facts (from [experiments.md](experiments.md)); write the reason on its `Why:` line, in your own
words. Entries already here are never rewritten: what you write stays.
"""


def decisions(journey: Journey) -> list[tuple[str, str, Run, Run | None]]:
    """(key, title, run, run before) of every promotion, refusal and stage change, oldest first."""
    found, before = [], None
    for run in journey.runs:
        decision = (run.version.tags if run.version is not None else {}).get("promotion.decision")
        if before is not None and run.tags.get("stage") and run.tags.get("stage") != before.tags.get("stage"):
            found.append((f"{run.run_id} stage", f"stage change: {before.stage} → {run.stage}", run, before))
        if decision:
            kind, title = ("promotion", "promoted") if decision == "promoted" else ("refusal", "refused by the gate")
            found.append((f"{run.run_id} {kind}", title, run, before))
        before = run if run.params else before
    return found


def update_decisions(path: Path, journey: Journey) -> bool:
    """Append the entries that are not in `path` yet; True when something was added."""
    text = path.read_text(encoding="utf-8") if path.is_file() else DECISIONS_HEAD
    known = set(DECISION_MARK.findall(text))
    new = [entry for entry in decisions(journey) if entry[0] not in known]
    for key, title, run, before in new:
        facts = [f"Changed: {changes(run, before)}", journey.headline(run), f"Gate: {gate_text(run)}"]
        text = text.rstrip("\n") + f"\n\n## {run.date} · {run.name} · {title}\n\n<!-- decision: {key} -->\n"
        text += "".join(f"- {fact}\n" for fact in facts) + "- Why:\n"
    if new or not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text.encode("utf-8"))
    return bool(new)
