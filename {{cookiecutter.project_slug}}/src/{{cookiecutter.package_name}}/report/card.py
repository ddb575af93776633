"""MODEL_CARD.md in the Hugging Face format: YAML metadata (with model-index), then the card's text.

The text lives in model_card.md next to this file, a Jinja template that huggingface_hub's
`ModelCard.from_template` renders: edit the wording there. This module only computes the values it shows
(`card_values`) and the YAML metadata (`card_data`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..evaluate.markdown import display_path, table
from ..model.load import is_tiny_model
from ..registry import is_model_uri
from .about import data_record, data_text, is_example_data, scoring_text, task_description, task_name, warnings
from .facts import RunFacts
from .summary import (
    LABELS,
    RATES,
    Settings,
    classical_text,
    cost,
    error_kinds_text,
    hardware,
    interval_notes,
    length_text,
    metrics_table,
    parameters_text,
    settings,
    wall_time,
)

if TYPE_CHECKING:
    from huggingface_hub import ModelCardData

TEMPLATE = Path(__file__).with_name("model_card.md")
# SPDX id -> the Hub's licence id; anything else is "other" with a link to the project's LICENSE file.
LICENSES = {"MIT": "mit", "Apache-2.0": "apache-2.0", "BSD-3-Clause": "bsd-3-clause", "GPL-3.0-only": "gpl-3.0"}


def model_card_text(facts: RunFacts, *, project: dict[str, str], hourly_cost: float, template: Path = TEMPLATE) -> str:
    """The card rendered from `template` (default: the model_card.md shipped with this package)."""
    from huggingface_hub import ModelCard

    values = card_values(facts, project=project, hourly_cost=hourly_cost)
    card = ModelCard.from_template(card_data(facts, project=project), template_path=str(template), **values)
    return str(card)


def card_values(facts: RunFacts, *, project: dict[str, str], hourly_cost: float) -> dict[str, Any]:
    """Every value the template shows, by name (the YAML metadata comes separately, as `card_data`)."""
    run, cfg = facts.run, facts.run_config
    adapter = str(run.get("adapter") or "")
    # >>> preference_tuning
    from .sft_vs_dpo import comparison_lines, procedure_text

    # <<< preference_tuning
    return {
        "name": project["name"],
        "repository": project["repository"],
        "base_model": cfg.model.base_model,
        "smoke_model": is_tiny_model(cfg.model),
        "task_name": task_name(cfg),
        "task_description": task_description(cfg),
        "task": cfg.task.kind,
        "scoring": scoring_text(facts),
        "example_data": is_example_data(facts),  # the shipped example's own texts only for its generated data
        "data_known": bool(data_record(facts)),
        "data": data_text(facts),
        "warnings": warnings(facts),
        "num_examples": run.get("num_examples", "?"),
        "split": run.get("split", "test"),
        "hyperparameters": "\n".join(hyperparameter_table(settings(cfg, facts.train_log))),
        "hardware": hardware(facts),
        "wall_time": wall_time(facts),
        "cost": cost(facts, hourly=hourly_cost),
        "metrics": "\n".join(metrics_table(facts.results)),
        "metric_notes": [
            *interval_notes(facts.results),
            *filter(None, [classical_text(facts.results), error_kinds_text(facts.results)]),
        ],
        # >>> preference_tuning
        "sft_vs_dpo": "\n".join(comparison_lines(facts)).strip(),  # empty for an SFT run
        "procedure": procedure_text(facts),  # None for an SFT run: the template's SFT sentence
        # <<< preference_tuning
        "parameters": parameters_text(facts.train_log),
        # A registry URI is no folder a reader has: point at where training writes the adapter instead.
        "usage_adapter": "outputs/<run>/adapter" if is_model_uri(adapter) else display_path(Path(adapter)),
        "mlflow_run_id": run.get("mlflow_run_id"),
        "model_version": run.get("model_version"),
    }


def hyperparameter_table(values: Settings) -> list[str]:
    rows = [
        ("base model", f"`{values.base_model}`"),
        ("LoRA r / alpha / dropout", f"{values.lora_r} / {values.lora_alpha} / {values.lora_dropout}"),
        ("target modules", values.target_modules),
        ("4-bit base (QLoRA)", values.qlora),
        ("training length", length_text(values)),
        ("batch size x accumulation", f"{values.batch_size} x {values.accumulation}"),
        ("learning rate, schedule, warm-up", f"{values.learning_rate}, {values.lr_scheduler}, {values.warmup_ratio}"),
        ("weight decay", values.weight_decay),
        ("max sequence length", values.max_seq_length),
        ("precision", values.precision),
        ("packing", values.packing),
        ("seed", values.seed),
    ]
    return table(("Hyperparameter", "Value"), rows)


def card_data(facts: RunFacts, *, project: dict[str, str]) -> ModelCardData:
    """The YAML header: what the Hub indexes (base model, licence, dataset, tags, scores as model-index)."""
    from huggingface_hub import EvalResult, ModelCardData

    cfg, tuned = facts.run_config, facts.results["finetuned"]
    dataset = _dataset_id(cfg.data.path)
    license_id = LICENSES.get(project["license"], "other")
    extra = {"license_name": "proprietary", "license_link": "LICENSE"} if license_id == "other" else {}
    metrics = [name for name in (*RATES, "eval_loss") if name in tuned]
    return ModelCardData(
        base_model=cfg.model.base_model,
        library_name="peft",
        license=license_id,
        datasets=[dataset],
        tags=["lora", "peft", "sft", "trl", "transformers", cfg.task.kind],
        pipeline_tag="text-generation",
        model_name=project["name"],
        eval_results=[
            EvalResult(
                task_type="text-generation",
                dataset_type=dataset,
                dataset_name=dataset,
                dataset_split=facts.run.get("split", "test"),
                metric_type=name,
                metric_name=LABELS[name],
                metric_value=round(float(tuned[name]), 4),
            )
            for name in metrics
        ],
        **extra,
    )


def _dataset_id(path: str) -> str:
    """A hub dataset id as it is; a local folder or file by its name (the data ships in the repository)."""
    return Path(path).stem if Path(path).exists() or path.startswith((".", "/")) else path
