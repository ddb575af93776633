"""What the evaluated model is for and what it learnt from, as the README and the model card both say it.

The task comes from the run's own config (`task.name`, `task.description`, `task.kind`, `task.fields`); the
data's origin, digest and rows from train_log.json's `data` record (written by `train`, see
`data.data_record`). Nothing here falls back to the shipped example's texts: they are shown only when the
run's data is the generated example itself. The warnings say when the numbers need care: a small test split,
or many passes over the same training rows.
"""

from __future__ import annotations

import math
from typing import Any

from ..config import Config
from ..data.dataset import USER_DATA
from ..tasks.kinds import task_kind
from .facts import RunFacts
from .summary import HEADLINE, LABELS, Settings, interval, settings

SMALL_TEST = 100  # scored examples: below this one answer moves a rate by more than a percentage point
MANY_EPOCHS = 3  # passes over the training rows: beyond this a small model starts to learn the rows by heart
NO_DESCRIPTION = (
    "_No description given: add one sentence (what goes in, what comes out) as `task.description` in the "
    "config, then run `make report`._"
)


def task_name(cfg: Config) -> str:
    return cfg.task.name or cfg.project


def task_description(cfg: Config) -> str:
    """The description on one line (YAML's folded text may hold breaks), or how to add one."""
    return " ".join(cfg.task.description.split()) or NO_DESCRIPTION


def data_record(facts: RunFacts) -> dict[str, Any]:
    """train_log.json's `data` (path, origin, digest, rows); empty when the run's folder was not found."""
    return facts.train_log.get("data") or {}


def is_example_data(facts: RunFacts) -> bool:
    """The run trained on the generated example (`data synth`), not on the project's own data."""
    origin = data_record(facts).get("origin")
    return bool(origin) and origin != USER_DATA


def scored_fields(facts: RunFacts) -> list[str]:
    """`task.fields`, or, when empty (taken from the data), the fields that evaluation scored."""
    if facts.run_config.task.fields:
        return list(facts.run_config.task.fields)
    prefix = "field_accuracy_"
    return [name.removeprefix(prefix) for name in facts.results["finetuned"] if name.startswith(prefix)]


def scoring_text(facts: RunFacts) -> str:
    return task_kind(facts.run_config.task).scoring_text(scored_fields(facts))


def task_section(facts: RunFacts, *, command: str) -> str:
    """The README text between the task markers: the task's name and description, how it is scored, and,
    for the generated example, that it is the example and how to start one's own task."""
    cfg = facts.run_config
    lines = [f"**Task: {task_name(cfg)}.** {task_description(cfg)}", scoring_text(facts)]
    if is_example_data(facts):
        lines.append(
            "This is the template's example task, on generated data (`make data`); "
            f"`{command} task init DATA_FILE` starts one of your own."
        )
    return "\n".join(lines)


def data_text(facts: RunFacts) -> str:
    """Path, origin, rows per split and digest, in one line."""
    record = data_record(facts)
    if not record:
        return f"`{facts.run_config.data.path}`; origin and digest unknown (no train_log.json of this run records them)"
    origin = "the project's own data" if record.get("origin") == USER_DATA else record.get("origin")
    rows = ", ".join(f"{n} {split}" for split, n in (record.get("rows") or {}).items())
    digest = f"sha256 `{record['digest']}`" if record.get("digest") else "no local files to digest (hub dataset)"
    return f"`{record.get('path')}`, {origin}: {rows} rows; {digest}"


def warnings(facts: RunFacts) -> list[str]:
    """What a reader must know before trusting the numbers, as Markdown sentences (README notes, card limitations)."""
    found = []
    scored = facts.run.get("num_examples")
    if isinstance(scored, int) and 0 < scored < SMALL_TEST:
        found.append(small_test_warning(scored, split=facts.run.get("split", "test"), record=data_record(facts)))
    elif isinstance(scored, int) and scored >= SMALL_TEST:
        found += wide_interval_warning(facts.results)
    values = settings(facts.run_config, facts.train_log)
    if values.epochs is not None and values.epochs > MANY_EPOCHS:
        found.append(epochs_warning(values, eval_loss=facts.history.get("eval_loss", [])))
    return found


def small_test_warning(scored: int, *, split: str, record: dict[str, Any]) -> str:
    # Two standard errors of a rate near 50% (the widest case): 2 * sqrt(0.25 / n) = 1 / sqrt(n).
    noise = 1 / math.sqrt(scored)
    available = (record.get("rows") or {}).get(split)
    capped = (
        f" (`eval.max_samples` scored {scored} of the {available} {split} rows)"
        if available and available > scored
        else ""
    )
    return (
        f"**Scored on only {scored} examples{capped}.** One answer more or less right moves a rate by "
        f"{1 / scored:.1%}, so treat differences below {noise:.0%} as noise (about two standard errors of a rate "
        "near 50%). More held-out rows give firmer numbers."
    )


WIDE_INTERVAL = 0.10  # a 95% interval wider than 10 points cannot tell most fine-tuning changes from noise


def wide_interval_warning(results: dict[str, Any]) -> list[str]:
    """A warning when the fine-tuned headline metric's 95% interval is wider than WIDE_INTERVAL."""
    headline = next((name for name in HEADLINE if interval(results, "columns", "finetuned", name)), None)
    if headline is None:
        return []
    bounds = interval(results, "columns", "finetuned", headline)
    width = bounds["high"] - bounds["low"]
    if width <= WIDE_INTERVAL:
        return []
    return [
        f"**The 95% interval of the fine-tuned {LABELS[headline].lower()} is {width * 100:.0f} points wide** "
        f"(over {WIDE_INTERVAL * 100:.0f}): changes smaller than that are not established. More held-out rows "
        "narrow it (its width shrinks with the square root of their number)."
    ]


def epochs_warning(values: Settings, *, eval_loss: list[tuple[int, float]]) -> str:
    evidence = ""
    if eval_loss:
        best_step, best = min(eval_loss, key=lambda point: point[1])
        last = eval_loss[-1][1]
        if last > best:
            evidence = f" (here it ended at {last:.3f}, above its lowest {best:.3f} at step {best_step})"
    # With packing a batch holds packed sequences, not rows: `train` recorded the Trainer's own count instead.
    formula = (
        f" ({values.length} x batch {values.batch_size} x accumulation {values.accumulation} / {values.train_rows} "
        "training rows)"
        if values.train_rows and not values.packing
        else ""
    )
    return (
        f"**Each training row was seen {values.epochs:.1f} times**{formula}: watch the validation loss for "
        f"overfitting, it rises while the training loss keeps falling{evidence}. Fewer steps, more rows or "
        "`train.early_stopping_patience` help."
    )
