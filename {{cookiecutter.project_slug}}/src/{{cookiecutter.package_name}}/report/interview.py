"""docs/interview.md: the questions a fine-tuning project is asked about, each with this project's own figures
and the file that shows them, and a `Your words:` line. Facts only: where a figure does not exist yet, it says
what produces it. Rewritten by every `report` (write your answers elsewhere, e.g. decisions.md).
"""

from __future__ import annotations

from pathlib import Path

from ..evaluate.markdown import display_path
from .facts import RunFacts, read_json
from .journey import Journey, gate_text
from .summary import (
    COLUMNS,
    HEADLINE,
    LABELS,
    cost,
    gain_text,
    hardware,
    inline,
    interval,
    parameters_text,
    serving_lines,
    wall_time,
)


def interview_text(facts: RunFacts, *, journey: Journey, hourly: float, report_dir: Path) -> str:
    results, cfg = facts.results, facts.run_config
    name = next((n for n in HEADLINE if n in results["finetuned"]), "eval_loss")
    sections = {
        "Why fine-tune rather than prompt?": _versus(results, name, "few_shot", "`eval.few_shot` > 0 adds it"),
        "Why LoRA, and this rank?": _lora(facts, journey),
        "How do you know it is better?": _better(facts, name),
        "Would a classical model do?": _versus(results, name, "classical", "`evaluate` adds it")
        + _versus(results, name, "majority", "`evaluate` adds it"),
        "What failed, and what did you learn?": _failures(journey),
        "How does it run in production, and how would you notice it degrading?": _production(report_dir),
        "What would it cost on a cloud GPU?": _cost(facts, journey=journey, hourly=hourly),
        "How would it scale?": [
            f"Measured: {wall_time(facts)} on {hardware(facts)}, batch {cfg.train.batch_size} x accumulation "
            f"{cfg.train.gradient_accumulation_steps} (`{_train_log(facts)}`); serving figures: see above"
        ],
    }
    lines = [
        "# Interview talking points",
        "",
        "<!-- Written by `report` from reports/eval.json, the run's config and train log, the registry and the "
        "experiment log; rewritten each time, so do not edit here. -->",
        "Each question with this project's own figures and the file that shows them. Say it in your own words.",
    ]
    for number, (question, facts_found) in enumerate(sections.items(), start=1):
        shown = [fact if fact[:1] in ("", "|") else f"- {fact}" for fact in facts_found]  # a table stays a table
        lines += ["", f"## {number}. {question}", "", *shown, "", "Your words:"]
    return "\n".join(lines) + "\n"


def cfg_file(facts: RunFacts) -> str:
    return facts.config_source if " " not in facts.config_source else "the config given to `report`"


def _train_log(facts: RunFacts) -> str:
    adapter = facts.run.get("adapter") or "outputs/<run>/adapter"
    return display_path(Path(adapter).parent / "train_log.json")


def _cost(facts: RunFacts, *, journey: Journey, hourly: float) -> list[str]:
    found = [f"Training + evaluation: {cost(facts, hourly=hourly)} (`{cfg_file(facts)}`)"]
    # >>> cloud_training
    found += [f"Cloud job {r.name}: ${r.tags['cloud.cost_usd']} (`docs/experiments.md`)" for r in journey.runs
              if "cloud.cost_usd" in r.tags]  # fmt: skip
    # <<< cloud_training
    return found


def _pct(value: float) -> str:
    return f"{value:.1%}"


def _versus(results: dict, name: str, column: str, produced_by: str) -> list[str]:
    """The fine-tuned model against one baseline column, with the paired interval of the difference."""
    values = (results.get("baselines") or {}).get(column) or {}
    label = COLUMNS.get(column, column.replace("_", " ").capitalize())
    if "n/a" in values:  # a baseline that does not apply to this task says why
        return [f"{label}: n/a, {values['n/a']} (`reports/eval.json`)"]
    if name not in values:
        return [f"{label}: not in `reports/eval.json` yet; {produced_by}"]
    gain = interval(results, "differences", f"finetuned_minus_{column}", name)
    lead = f", difference {gain_text(gain)}" if gain else ""
    return [
        f"{LABELS.get(name, name)}: {inline(label)} {_pct(values[name])}, fine-tuned "
        f"{_pct(results['finetuned'][name])}{lead} (`reports/eval.json`)"
    ]


def _lora(facts: RunFacts, journey: Journey) -> list[str]:
    lora = facts.run_config.lora
    tried = sorted({r.params["lora.r"] for r in journey.runs if "lora.r" in r.params}, key=int)
    return [
        f"LoRA r={lora.r}, alpha={lora.alpha}, dropout {lora.dropout:g} on {lora.target_modules} (`{cfg_file(facts)}`)",
        f"{parameters_text(facts.train_log) or 'Trainable share not recorded'}; {wall_time(facts)} "
        f"(`{_train_log(facts)}`)",
        f"Ranks tried in the runs: {', '.join(tried) or 'none recorded'} (`docs/experiments.md`)",
    ]


def _better(facts: RunFacts, name: str) -> list[str]:
    results, run = facts.results, facts.run
    gain = interval(results, "differences", "finetuned_minus_base", name)
    rows = (results.get("intervals") or {}).get("rows") or run.get("num_examples")
    found = [
        f"{LABELS.get(name, name)}: base {_pct(results['base'][name])}, fine-tuned {_pct(results['finetuned'][name])}"
        + (f", difference {gain_text(gain)} (95% paired bootstrap over {rows} test rows)" if gain else "")
        + " (`reports/eval.json`)",
        f"Test rows digest `{(run.get('test_digest') or 'not recorded')[:12]}`: the gate compares only versions scored "
        "on the same rows (`reports/eval.json`, run.test_digest)",
    ]  # fmt: skip
    promotion = facts.promotion
    if promotion:
        verdict = "promoted" if promotion["promoted"] else "not promoted"
        found.append(f"Gate: version {promotion['candidate_version']} {verdict}: {promotion['reason']} "
                     "(`reports/promotion.json`)")  # fmt: skip
    else:
        found.append("Gate: no decision for this version in `reports/promotion.json` (tracking on: `evaluate` runs it)")
    return found


def _failures(journey: Journey) -> list[str]:
    """Refused runs, runs that scored worse than the evaluated run before them, runs never evaluated."""
    if journey.missing:
        return [f"No experiment log: {journey.missing}"]
    found, before = [], None
    for run in journey.runs:
        value = run.metrics.get(journey.metric)
        if run.version is not None and run.version.tags.get("promotion.decision") == "rejected":
            found.append(f"{run.name}: {gate_text(run)}")
        elif value is not None and before is not None and (value - before[1]) * journey.sign < 0:
            found.append(f"{run.name}: {journey.headline(run)}, below {before[0]}")
        if value is not None:
            before = (run.name, value)
    found = found or [f"No refused or worse run among the {len(journey.runs)} runs yet"]
    return [f"{item} (`docs/experiments.md`)" for item in found]


def _production(report_dir: Path) -> list[str]:
    found = serving_lines(report_dir) or [
        "No serving figures yet: `scripts/benchmark_serve.py --out reports/benchmark_serve.json` measures latency "
        "and throughput"
    ]
    path = report_dir / "drift.json"
    drift = read_json(path)
    if drift:
        share = f"{drift.get('drift_share', 0):.0%}"
        found.append(
            f"Drift check: {drift.get('verdict')}, {share} of features drifted over {drift.get('n_current')} requests "
            f"(`{display_path(path)}`)"
        )
    else:
        found.append("No drift check yet: `make drift` compares the request log with the training data")
    found.append("Alerts on errors and latency: `ops/prometheus/alerts.yml`; metrics at `GET /metrics`")
    return found
