"""The README's two written parts: the results section, between `<!-- results:start -->` and
`<!-- results:end -->`, and the intro's task paragraph, between `<!-- task:start -->` and `<!-- task:end -->`.

Everything outside the markers is kept byte for byte; the markers are checked before anything is written.
The results markers are required; a README without task markers keeps its intro as it is.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..config import Config
from ..evaluate.markdown import answer_cell, display_path, table
from ..model.load import is_tiny_model
from .about import data_text, task_name, warnings
from .facts import ReportError, RunFacts
from .summary import (
    Settings,
    classical_text,
    cost,
    error_kinds_text,
    hardware,
    interval_notes,
    length_text,
    metrics_table,
    parameters_text,
    serving_lines,
    settings,
    wall_time,
)

START, END = "<!-- results:start -->", "<!-- results:end -->"
TASK_START, TASK_END = "<!-- task:start -->", "<!-- task:end -->"
RESULTS = (START, END, "the results section", "where the results should go")
TASK = (TASK_START, TASK_END, "the intro's task paragraph", "around the paragraph that describes the task")
TITLES = {
    "loss": "Training and validation loss",
    "metrics": "Baselines vs fine-tuned, 95% intervals",
    "fields": "Per-field accuracy",
    "confusion": "Confusion of the categorical fields",
}
SAMPLE_ROWS = (("input", "input"), ("expected", "expected"), ("base", "base"), ("finetuned", "fine-tuned"))
SAMPLE_CHARS = 200  # per cell: a long, rambling answer must not push the rest of the README off the screen


def read_readme(readme: Path) -> str:
    """The README's text, with its markers checked (before anything is written)."""
    if not readme.is_file():
        raise ReportError(f"{readme} not found; pass --readme with the README to update")
    try:
        text = readme.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise ReportError(
            f"{readme}: not UTF-8 text (byte {err.start}); save it as UTF-8; nothing was written"
        ) from None
    _check_markers(text, readme=readme, markers=RESULTS)
    if _has_task_markers(text):
        _check_markers(text, readme=readme, markers=TASK)
    return text


def _has_task_markers(text: str) -> bool:
    return TASK_START in text or TASK_END in text


def _check_markers(text: str, *, readme: Path | str, markers: tuple[str, str, str, str]) -> None:
    start, end, section, where = markers
    starts, ends = text.count(start), text.count(end)
    if starts == 1 and ends == 1 and text.index(start) < text.index(end):
        return
    order = " in the wrong order" if starts == ends == 1 else ""
    raise ReportError(
        f"{readme}: needs exactly one '{start}' line followed by one '{end}' line around {section} "
        f"(found {starts} start and {ends} end marker(s){order}). Add the two lines {where}; nothing was written"
    )


def replace_results(text: str, section: str, *, readme: Path | str = "README.md") -> str:
    """`text` with everything between the results markers replaced by `section`; the rest unchanged."""
    return _replace_between(text, section, readme=readme, markers=RESULTS)


def replace_task(text: str, section: str, *, readme: Path | str = "README.md") -> str:
    """`text` with everything between the task markers replaced by `section`; unchanged without task markers
    (an intro written by hand stays as it is)."""
    if not _has_task_markers(text):
        return text
    return _replace_between(text, section, readme=readme, markers=TASK)


def _replace_between(text: str, section: str, *, readme: Path | str, markers: tuple[str, str, str, str]) -> str:
    _check_markers(text, readme=readme, markers=markers)
    start, end = markers[:2]
    head, rest = text.split(start)
    _, tail = rest.split(end)
    body = section.strip("\n")
    return f"{head}{start}\n{body}\n{end}{tail}"


def results_section(facts: RunFacts, *, plots: dict[str, Path], readme_dir: Path, config: Config) -> str:
    """Markdown between the README markers: table, plots, samples, run facts. No dates: reruns are identical."""
    run, cfg = facts.run, facts.run_config
    lines = [
        f"<!-- Written by `report` from {display_path(Path(config.eval.report_dir) / 'eval.json')} and the "
        "training run; edits here are overwritten. -->",
        "",
        f"`{cfg.model.base_model}` fine-tuned with LoRA for **{task_name(cfg)}**, scored against its baselines "
        f"on {run.get('num_examples', '?')} held-out examples of the `{run.get('split', 'test')}` split "
        f"(greedy decoding, at most {run.get('max_new_tokens', '?')} new tokens).",
        "",
        *metrics_table(facts.results),
        "",
    ]
    lines += [*(f"{note}\n" for note in interval_notes(facts.results))]
    classical = classical_text(facts.results)  # "would a simple classical model do?", answered by the figures
    lines += [f"{classical}\n"] if classical else []
    # >>> preference_tuning
    from .sft_vs_dpo import comparison_lines

    lines += comparison_lines(facts)  # a DPO run only: its SFT parent's figures beside its own
    # <<< preference_tuning
    errors = error_kinds_text(facts.results)
    lines += [f"{errors}\n"] if errors else []
    for warning in warnings(facts):
        lines += [f"> {warning}", ""]
    if is_tiny_model(cfg.model):
        lines += [
            "> These figures come from the smoke run: a tiny, randomly initialised model trained for about a minute. "
            "They show that the pipeline runs and whether the loss falls, not that the model is useful. A real "
            "base model (`model.base_model`, as in `configs/default.yaml`) gives real results.",
            "",
        ]
    for key, path in plots.items():
        lines += [f"![{TITLES[key]}]({Path(os.path.relpath(path, readme_dir)).as_posix()})", ""]
    lines += serving_lines(Path(config.eval.report_dir))
    lines += [
        *samples_markdown(facts.results.get("examples", [])[: config.report.num_samples]),
        *run_table(facts, config=config),
    ]
    return "\n".join(lines)


def samples_markdown(examples: list[dict[str, str]]) -> list[str]:
    if not examples:
        return []
    lines = [f"**{len(examples)} sample generations** from the held-out split:", ""]
    for i, example in enumerate(examples, start=1):
        rows = [(label, answer_cell(example.get(key, ""), limit=SAMPLE_CHARS)) for key, label in SAMPLE_ROWS]
        lines += [*table((f"Sample {i}", ""), rows), ""]
    return lines


def run_table(facts: RunFacts, *, config: Config) -> list[str]:
    run = facts.run
    rows = [
        (
            "MLflow run",
            f"`{run['mlflow_run_id']}`" if run.get("mlflow_run_id") else "not tracked (tracking.enabled=false)",
        ),
        ("Model", _model_text(run, facts.promotion, project=facts.run_config.project)),
        ("Config", _config_text(facts)),
        ("Data", data_text(facts)),
        ("Key settings", key_settings(settings(facts.run_config, facts.train_log))),
        ("Trained parameters", parameters_text(facts.train_log) or "not recorded (trained before this was measured)"),
        ("Loss curves from", facts.history_source or "no training history found (train_log.json or MLflow)"),
        ("Hardware", hardware(facts)),
        ("Wall time", wall_time(facts)),
        ("Estimated cost", cost(facts, hourly=config.report.hourly_cost_usd)),
    ]
    return table(("Run", ""), rows)


def key_settings(values: Settings) -> str:
    """The settings a reader asks about first, in one line (the model card has the full table)."""
    lora = f"LoRA r={values.lora_r}, alpha={values.lora_alpha}, dropout={values.lora_dropout}"
    parts = [
        f"{lora}, targets {values.target_modules}" + (" on a 4-bit base (QLoRA)" if values.qlora else ""),
        length_text(values),
        f"batch {values.batch_size} x {values.accumulation} accumulation",
        f"learning rate {values.learning_rate} ({values.lr_scheduler}, warm-up {values.warmup_ratio})",
        f"max {values.max_seq_length} tokens, precision {values.precision}, seed {values.seed}",
    ]
    return "; ".join(parts)


def _model_text(run: dict[str, Any], promotion: dict[str, Any] | None, *, project: str) -> str:
    version = run.get("model_version")
    if not version:
        return f"adapter `{run.get('adapter')}` (not registered)"
    text = f"`{project}` version {version}"
    if promotion:
        verdict = "promoted to `@champion`" if promotion.get("promoted") else "not promoted (stays `@candidate`)"
        text += (
            f", {verdict}: {promotion.get('reason')} (gate: {promotion.get('metric')}, {promotion.get('direction')})"
        )
    return text


def _config_text(facts: RunFacts) -> str:
    name = facts.config_name
    shipped = Path("configs") / f"{name}.yaml" if name else None
    source = f"`{shipped.as_posix()}`" if shipped and shipped.is_file() else f"`{name}`" if name else "unknown"
    return f"{source}, resolved in `{facts.config_source}`" if facts.config_source.endswith(".yaml") else source
