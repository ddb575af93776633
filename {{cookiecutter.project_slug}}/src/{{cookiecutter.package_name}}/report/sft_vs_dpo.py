"""The "SFT vs SFT+DPO" table of a DPO run (SFT+GRPO of a GRPO run): shown by the README results section and the
model card alike.

For each headline metric and each per-field accuracy: the SFT parent's value, the tuned model's, and the
change with its 95% paired-bootstrap interval, row by row, when both evaluations logged per-row scores of
the same test rows (else the change alone and why). An interval that holds 0 reads "no significant change":
a null result is a result. Without a comparable parent evaluation, one sentence says why and how to get one.
"""

from __future__ import annotations

from typing import Any

from ..evaluate.bootstrap import excludes_zero, paired_intervals
from ..evaluate.markdown import table
from ..registry import COMMAND
from .facts import RunFacts
from .summary import LABELS, RATES

COMPARED = ("field_accuracy", "json_valid_rate", "exact_match", "rouge_l", "eval_loss")  # then each field
FIELD_PREFIX = "field_accuracy_"
TUNING = {"DPO": "preference tuning with DPO", "GRPO": "reinforcement learning with GRPO (a verifiable reward)"}
NO_LOSS_INTERVAL = "Loss per answer token is one figure per evaluation, not per row, so its change has no interval."


def comparison_lines(facts: RunFacts) -> list[str]:
    """The section's Markdown lines; [] for an SFT run."""
    parent, stage = facts.parent, _stage(facts)
    if parent is None:
        return []
    if parent.missing:
        return [missing_sentence(facts), ""]
    tuned = facts.results["finetuned"]
    fields = [name for name in tuned if name.startswith(FIELD_PREFIX)]
    names = [name for name in (*COMPARED, *fields) if name in tuned and name in parent.metrics]
    gains, no_interval = _intervals(facts)
    rows = [
        (_label(name), _value(name, parent.metrics[name]), _value(name, tuned[name]),
         _change(name, tuned[name] - parent.metrics[name], gains.get(name), stage=stage))
        for name in names
    ]  # fmt: skip
    header = (
        "Metric",
        f"SFT ({_version(parent.version)})",
        f"SFT+{stage} ({_version(facts.run.get('model_version'))})",
        "Change [95% interval]",
    )
    run = facts.run
    intro = (
        f"**SFT vs SFT+{stage}**: this model is the SFT model {_parent_name(facts)} after {TUNING[stage]}; "
        f"both evaluated on the `{run.get('split', 'test')}` split ({run.get('num_examples', '?')} rows)."
    )
    if no_interval:
        note = f"No intervals: {no_interval}; evaluate it again (`{_evaluate_parent(facts)}`) to pair the rows."
    else:
        intervals = facts.results.get("intervals") or {}
        note = (
            f"[low, high]: 95% paired-bootstrap interval of SFT+{stage} minus SFT, row by row over the same test "
            f'rows ({intervals.get("resamples", 1000)} resamples); one that holds 0 reads "no significant change": '
            f"these rows show no effect of {stage} there."
        )
    return [intro, "", *table(header, rows, align="lrrr"), "", f"{note} {NO_LOSS_INTERVAL}", ""]


def procedure_text(facts: RunFacts) -> str | None:
    """The model card's training procedure for a DPO or GRPO run (None for an SFT run): the trainer, its SFT parent."""
    if facts.parent is None:
        return None
    if _stage(facts) == "GRPO":
        grpo = facts.run_config.grpo
        return (
            f"Reinforcement learning with TRL's `GRPOTrainer` ({grpo.num_generations} sampled answers per training "
            f"prompt, up to {grpo.max_completion_length} tokens, beta {grpo.beta:g}), rewarded by the task's own "
            f"scorer ({grpo.reward or 'fields'}), starting from the SFT model {_parent_name(facts)}: a LoRA adapter "
            "trained with TRL's `SFTTrainer`. The same adapter is tuned further; the settings below are the GRPO run's."
        )
    dpo = facts.run_config.dpo
    losses = dpo.loss_type if isinstance(dpo.loss_type, list) else [dpo.loss_type]
    weights = f", weights {', '.join(f'{w:g}' for w in dpo.loss_weights)}" if dpo.loss_weights else ""
    return (
        f"Preference tuning with TRL's `DPOTrainer` (loss {' + '.join(losses)}{weights}; beta {dpo.beta:g}) on "
        f"chosen/rejected answer pairs, starting from the SFT model {_parent_name(facts)}: a LoRA adapter trained "
        "with TRL's `SFTTrainer` (loss on the answer tokens only), whose frozen copy is DPO's reference model. The "
        "same adapter is tuned further; the settings below are the DPO run's."
    )


def missing_sentence(facts: RunFacts) -> str:
    """Why the parent's evaluation cannot be shown, and the commands that give it."""
    return (
        f"**SFT vs SFT+{_stage(facts)}**: this {_stage(facts)} model is not compared with its SFT model "
        f"{_parent_name(facts)}: "
        f"{facts.parent.missing}; to compare them, evaluate the SFT model (`{_evaluate_parent(facts)}`), "
        f"then run `{COMMAND} report` again."
    )


def _intervals(facts: RunFacts) -> tuple[dict[str, dict[str, float]], str | None]:
    """The paired intervals of SFT+DPO minus SFT by metric, or ({}, why there are none)."""
    parent, run = facts.parent, facts.run
    own = (facts.results.get("row_scores") or {}).get("finetuned") or {}
    if not parent.test_digest or not run.get("test_digest"):
        return {}, (
            "the SFT evaluation does not record which test rows it scored (evaluated by an older version), "
            "so its rows cannot be paired with these"
        )
    if not own or not parent.row_scores:
        whose = "this evaluation" if not own else "the SFT evaluation"
        return {}, f"{whose} has no per-row scores (evaluated by an older version)"
    shared = [name for name, values in own.items() if len(parent.row_scores.get(name) or []) == len(values)]
    settings = facts.results.get("intervals") or {}
    result = paired_intervals(
        {"dpo": {name: own[name] for name in shared}, "sft": {name: parent.row_scores[name] for name in shared}},
        resamples=settings.get("resamples", 1000),
        seed=settings.get("seed", 0),
        reference="dpo",
    )
    return result.get("differences", {}).get("dpo_minus_sft", {}), None


def _change(name: str, difference: float, gain: dict[str, float] | None, *, stage: str) -> str:
    if not _is_rate(name):
        return f"{difference + 0.0:+.3f}"  # + 0.0: no "-0.000"
    text = f"{_points(difference)} pp"
    if gain is None:
        return text
    if excludes_zero(gain):
        verdict = f"better with {stage}"
    elif excludes_zero(gain, direction="minimize"):
        verdict = f"worse with {stage}"
    else:
        verdict = "no significant change"
    return f"{text} [{_points(gain['low'])}, {_points(gain['high'])}], {verdict}"


def _stage(facts: RunFacts) -> str:
    """GRPO for a run of train.stage: grpo; DPO for any other run with a parent."""
    return "GRPO" if facts.run_config.train.stage == "grpo" else "DPO"


def _points(share: float) -> str:
    return f"{share * 100 + 0.0:+.1f}"


def _value(name: str, value: float) -> str:
    return f"{value:.1%}" if _is_rate(name) else f"{value:.3f}"


def _is_rate(name: str) -> bool:
    return name in RATES or name.startswith(FIELD_PREFIX)


def _label(name: str) -> str:
    return LABELS.get(name) or f"Field accuracy: {name.removeprefix(FIELD_PREFIX)}"


def _version(version: Any) -> str:
    return f"version {version}" if version else "not registered"


def _parent_name(facts: RunFacts) -> str:
    parent = facts.parent
    if parent.version:
        return f"(version {parent.version})"
    return f"(`{parent.source}`)" if parent.source else "(unknown: no parent recorded)"


def _evaluate_parent(facts: RunFacts) -> str:
    """The command that evaluates the parent without overwriting this model's reports/eval.json."""
    parent = facts.parent
    adapter = f"models:/{facts.run_config.project}/{parent.version}" if parent.version else parent.source
    return f"{COMMAND} evaluate --adapter {adapter or '<the SFT adapter>'} eval.report_dir=reports/sft"
