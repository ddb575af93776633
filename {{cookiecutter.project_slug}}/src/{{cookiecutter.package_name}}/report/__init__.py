"""Portfolio report: plots, the README results section and the Hugging Face model card, from a finished run.

    <project> report --config configs/smoke.yaml     # after `evaluate` (`make evaluate` runs both)
    <project> report --config configs/gpu.yaml report.hourly_cost_usd=1.006

Reads reports/eval.json (written by `evaluate`), the run's loss history (its MLflow run, or
outputs/<run>/train_log.json when tracking is off), the run's resolved config.yaml and
reports/promotion.json (and reports/benchmark_serve.json when the serving benchmark wrote it). Writes
reports/loss_curves.png, reports/metrics.png (every column, 95% error bars), reports/field_accuracy.png and
reports/confusion.png (extraction task), MODEL_CARD.md, docs/experiments.md + reports/journey.png (every
MLflow run of the project), docs/decisions.md (appended to, never rewritten), docs/interview.md, and two parts
of the README: the results between
`<!-- results:start -->` and `<!-- results:end -->`, and the intro's task paragraph between
`<!-- task:start -->` and `<!-- task:end -->` (from the run's `task` config); everything outside the markers
is kept byte for byte.
README and card describe the run's own task and data (origin and digest, epochs, warnings when the test
split is small or the rows were seen many times), never the shipped example unless the run trained on it.
The output depends only on those inputs (no dates, fixed figure size and dpi, no software version in the
PNGs), so a second run writes the same bytes.

    facts.py          the run's facts, gathered once (RunFacts)
    summary.py        metrics table, settings, hardware, time and cost: shown by README and card alike
    about.py          the task, the data's origin and digest, and the warnings: shown by README and card alike
    plots.py          the PNGs
    readme.py         the README's results section and task paragraph, each between its markers
    card.py           MODEL_CARD.md, rendered from the template model_card.md (edit the wording there)
    journey.py        docs/experiments.md, reports/journey.png and docs/decisions.md, from the MLflow runs
    interview.py      docs/interview.md: interview questions with this project's own figures
    markdown.py       the one Markdown table writer (reports/eval.md uses it too)
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ..config import Config
from .about import task_section
from .card import model_card_text
from .facts import RunFacts, gather, project_metadata, read_results
from .interview import interview_text
from .journey import Journey, experiments_text, read_journey, update_decisions
from .plots import write_journey_plot, write_plots
from .readme import read_readme, replace_results, replace_task, results_section

log = logging.getLogger(__name__)


def write_report(config: Config, *, readme: Path, model_card: Path) -> list[Path]:
    """Plots, MODEL_CARD.md, the README results section and task paragraph for the evaluation in
    eval.report_dir. Every check (eval.json present, README markers) runs before anything is written."""
    report_dir = Path(config.eval.report_dir)
    results = read_results(report_dir)
    readme_text = read_readme(readme)
    journey = read_journey(config)
    if not journey.readable:  # a missing, corrupt or unreachable store: the rest from local files, as tracking off
        config = config.model_copy(update={"tracking": config.tracking.model_copy(update={"enabled": False})})
    facts = gather(config, results=results, report_dir=report_dir)
    plots = write_plots(facts, out=report_dir)
    project = project_metadata(readme.resolve().parent)
    card = model_card_text(facts, project=project, hourly_cost=config.report.hourly_cost_usd)
    model_card.write_bytes(card.encode("utf-8"))
    section = results_section(facts, plots=plots, readme_dir=readme.resolve().parent, config=config)
    updated = replace_results(readme_text, section, readme=readme)
    updated = replace_task(updated, task_section(facts, command=project["name"]), readme=readme)
    if updated != readme_text:
        readme.write_bytes(updated.encode("utf-8"))
    logs = write_journey(journey, config=config, facts=facts, root=readme.parent)
    if config.tracking.enabled and results["run"].get("mlflow_run_id"):
        _log_to_mlflow(results["run"]["mlflow_run_id"], files=[*plots.values(), model_card])
    return [*plots.values(), model_card, readme, *logs]


def write_journey(journey: Journey, *, config: Config, facts: RunFacts, root: Path) -> list[Path]:
    """docs/experiments.md (+ reports/journey.png), new docs/decisions.md entries, docs/interview.md."""
    docs, report_dir = root / "docs", Path(config.eval.report_dir)
    plot = write_journey_plot(journey, out=report_dir)
    docs.mkdir(exist_ok=True)
    link = Path(os.path.relpath(plot, docs)).as_posix() if plot else None
    pages = {
        "experiments.md": experiments_text(journey, project=config.project, plot=link),
        "interview.md": interview_text(
            facts, journey=journey, hourly=config.report.hourly_cost_usd, report_dir=report_dir
        ),
    }
    for name, text in pages.items():
        (docs / name).write_bytes(text.encode("utf-8"))
    update_decisions(docs / "decisions.md", journey)
    return [*(docs / name for name in pages), docs / "decisions.md", *([plot] if plot else [])]


def _log_to_mlflow(run_id: str, *, files: list[Path]) -> None:
    """The plots and model card as artifacts of the training run (report/), next to evaluation/."""
    from mlflow.exceptions import MlflowException

    from ..tracking import client

    try:
        mlflow_client = client()
        for path in files:
            mlflow_client.log_artifact(run_id, str(path), artifact_path="report")
    except (MlflowException, OSError) as err:  # the files are written; a tracking hiccup must not hide them
        log.warning("could not log the report to MLflow run %s: %s", run_id, err)
