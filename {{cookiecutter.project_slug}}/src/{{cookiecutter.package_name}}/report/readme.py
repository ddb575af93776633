"""The README's results section: the text between `<!-- results:start -->` and `<!-- results:end -->`.

Everything outside the markers is kept byte for byte; the markers are checked before anything is written.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..config import Config
from .facts import ReportError, RunFacts, display_path
from .markdown import answer_cell, table
from .summary import Settings, cost, hardware, metrics_table, settings, wall_time

START, END = "<!-- results:start -->", "<!-- results:end -->"
TITLES = {"loss": "Training and validation loss", "metrics": "Base vs fine-tuned", "fields": "Per-field accuracy"}
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
    _check_markers(text, readme=readme)
    return text


def _check_markers(text: str, *, readme: Path | str) -> None:
    starts, ends = text.count(START), text.count(END)
    if starts == 1 and ends == 1 and text.index(START) < text.index(END):
        return
    order = " in the wrong order" if starts == ends == 1 else ""
    raise ReportError(
        f"{readme}: needs exactly one '{START}' line followed by one '{END}' line around the results "
        f"section (found {starts} start and {ends} end marker(s){order}). Add the two lines where the results "
        "should go; nothing was written"
    )


def replace_results(text: str, section: str, *, readme: Path | str = "README.md") -> str:
    """`text` with everything between the results markers replaced by `section`; the rest unchanged."""
    _check_markers(text, readme=readme)
    head, rest = text.split(START)
    _, tail = rest.split(END)
    body = section.strip("\n")
    return f"{head}{START}\n{body}\n{END}{tail}"


def results_section(facts: RunFacts, *, plots: dict[str, Path], readme_dir: Path, config: Config) -> str:
    """Markdown between the README markers: table, plots, samples, run facts. No dates: reruns are identical."""
    run, cfg = facts.run, facts.run_config
    lines = [
        f"<!-- Written by `report` from {display_path(Path(config.eval.report_dir) / 'eval.json')} and the "
        "training run; edits here are overwritten. -->",
        "",
        f"`{cfg.model.base_model}` fine-tuned with LoRA, scored against the base model on "
        f"{run.get('num_examples', '?')} held-out examples of the `{run.get('split', 'test')}` split "
        f"(greedy decoding, at most {run.get('max_new_tokens', '?')} new tokens).",
        "",
        *metrics_table(facts.results),
        "",
    ]
    if cfg.model.build_tiny:
        lines += [
            "> These figures come from the smoke run: a tiny, randomly initialised model trained for a minute. "
            "They show that the pipeline learns (the loss falls, the answers become JSON), not that the model is "
            "useful. `make train evaluate CONFIG=configs/default.yaml` gives real results.",
            "",
        ]
    for key, path in plots.items():
        lines += [f"![{TITLES[key]}]({Path(os.path.relpath(path, readme_dir)).as_posix()})", ""]
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
        ("Key settings", key_settings(settings(facts.run_config, facts.train_log))),
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
        values.length + (f" over {values.train_rows} training rows" if values.train_rows else ""),
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
