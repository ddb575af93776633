"""The run's facts as short text, each formatted once and shown by both the README section and the model card:
the metrics table, the training settings, hardware, wall time and cost.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import Config
from ..evaluate.markdown import table
from .facts import RunFacts, read_json

LABELS = {
    "json_valid_rate": "Valid JSON",
    "field_accuracy": "Field accuracy (mean)",
    "exact_match": "Exact match",
    "rouge_l": "ROUGE-L F1",
    "eval_loss": "Loss per answer token",
    "perplexity": "Perplexity",
}
RATES = ("json_valid_rate", "field_accuracy", "exact_match", "rouge_l")  # shares in [0, 1]


COLUMNS = {
    "majority": "Majority",
    "classical": "TF-IDF + LR",  # the classical baseline: TF-IDF + logistic regression per field
    "base": "Base zero-shot",
    "few_shot": "Base few-shot",
    "finetuned": "Fine-tuned",
}
HEADLINE = ("field_accuracy", "rouge_l", "exact_match")  # the first one a task has is its headline metric


def columns(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The scored columns in display order: the baselines that eval.json has and that apply (not n/a)."""
    baselines = results.get("baselines") or {}
    found = {key: baselines.get(key) for key in COLUMNS} | {"base": results["base"], "finetuned": results["finetuned"]}
    return {name: found[name] for name in COLUMNS if found[name] and "n/a" not in found[name]}


def inline(label: str) -> str:
    """A column label inside a sentence: "base few-shot", but an acronym stays "TF-IDF + LR"."""
    return label if label[1:2].isupper() else label.lower()


def interval(results: dict[str, Any], group: str, key: str, name: str) -> dict[str, float] | None:
    """eval.json's interval of metric `name` for a column (group "columns") or a difference ("differences")."""
    return (((results.get("intervals") or {}).get(group) or {}).get(key) or {}).get(name)


def metrics_table(results: dict[str, Any]) -> list[str]:
    """Every column for every metric the fine-tuned model has: rates in percent with their 95% interval
    ("79.4% [75.0, 83.3]"), changes (fine-tuned minus base zero-shot) in percentage points."""
    shown, base, tuned = columns(results), results["base"], results["finetuned"]
    names = [*(n for n in RATES if n in tuned), "eval_loss", "perplexity"]
    rows = []
    for name in (n for n in names if n in tuned and n in base):
        cells = [
            _cell(name, values.get(name), interval(results, "columns", key, name)) for key, values in shown.items()
        ]
        change = _delta(name, base[name], tuned[name])
        gain = interval(results, "differences", "finetuned_minus_base", name)
        rows.append(
            (LABELS[name], *cells, change + (f" [{_points(gain['low'])}, {_points(gain['high'])}]" if gain else ""))
        )
    headers = (
        "Metric",
        *(COLUMNS[key] if len(shown) > 2 else COLUMNS[key].removesuffix(" zero-shot") for key in shown),
    )
    return table((*headers, "Change"), rows, align="l" + "r" * (len(headers)))


def _cell(name: str, value: float | None, bounds: dict[str, float] | None) -> str:
    if value is None:
        return "n/a"  # the majority and classical baselines have no loss: they are no language model
    if name in RATES and bounds:
        return f"{value:.1%} [{bounds['low'] * 100:.1f}, {bounds['high'] * 100:.1f}]"
    return _fmt(name, value)


def _points(value: float) -> str:
    return f"{value * 100:+.1f}"


def gain_text(gain: dict[str, float]) -> str:
    """A difference of rates with its interval, in percentage points: `+12.5 pp [+4.2, +20.8]`."""
    return f"{_points(gain['estimate'])} pp [{_points(gain['low'])}, {_points(gain['high'])}]"


def interval_notes(results: dict[str, Any]) -> list[str]:
    """What the brackets mean, and the fine-tuned model's lead over each baseline on the headline metric."""
    intervals = results.get("intervals") or {}
    headline = next((name for name in HEADLINE if name in results["finetuned"]), None)
    if not intervals.get("differences") or headline is None:
        return []
    leads = []
    for key, label in COLUMNS.items():
        gain = interval(results, "differences", f"finetuned_minus_{key}", headline)
        if gain:
            leads.append(f"{inline(label)} {gain_text(gain)}")
    return [
        f"[low, high]: 95% paired-bootstrap interval over the {intervals.get('rows')} scored rows "
        f"({intervals.get('resamples')} resamples); Change = fine-tuned minus base zero-shot. Fine-tuned "
        f"{LABELS[headline].lower()} minus {', minus '.join(leads)}: an interval that holds 0 is no evidence of a "
        "difference."
    ]


def classical_text(results: dict[str, Any]) -> str | None:
    """One sentence, from the figures: whether fine-tuning beats the classical baseline on the headline metric,
    by how much, with the interval of the difference."""
    classical = (results.get("baselines") or {}).get("classical")
    headline = next((name for name in HEADLINE if name in results["finetuned"]), None)
    if not classical or headline is None:
        return None
    if "n/a" in classical:
        return f"The classical baseline ({CLASSICAL_NAME}) is n/a: {classical['n/a']}."
    gain = interval(results, "differences", "finetuned_minus_classical", headline)
    if gain is None:
        return None
    bounds = f"[{_points(gain['low'])}, {_points(gain['high'])}]"
    verdict = "beats" if gain["low"] > 0 else "falls behind" if gain["high"] < 0 else "is not told apart from"
    skipped = [f"`{field}`" for field, done in (classical.get("fields") or {}).items() if done.startswith("n/a")]
    fallback = f"; it answers {', '.join(skipped)} with the most common training value" if skipped else ""
    figure = f"{_points(gain['estimate'])} pp {LABELS[headline].lower()} {bounds}"
    return f"**Fine-tuning {verdict} the classical baseline** ({CLASSICAL_NAME}{fallback}): {figure}."


CLASSICAL_NAME = "TF-IDF + logistic regression per field, trained on the training split"


def error_kinds_text(results: dict[str, Any]) -> str | None:
    """One line: the share of each kind of error of the fine-tuned answers (extraction task)."""
    kinds = (results.get("error_analysis") or {}).get("error_kinds")
    if not kinds or not kinds.get("errors"):
        return None
    shares = ", ".join(
        f"{kind.replace('_', ' ')} {share:.0%}" for kind, share in kinds["shares"].items() if kinds["counts"][kind]
    )
    return (
        f"**Errors of the fine-tuned model** ({kinds['errors']} wrong fields or extra keys): {shares}. "
        "`reports/eval.md` has the confusion tables and the worst rows."
    )


SERVING_FILE = "benchmark_serve.json"  # scripts/benchmark_serve.py --out reports/benchmark_serve.json


def serving_lines(report_dir: Path) -> list[str]:
    """The serving benchmark's p50/p95 latency and throughput per mode, when scripts/benchmark_serve.py wrote
    its results to reports/benchmark_serve.json."""
    figures = read_json(report_dir / SERVING_FILE)
    results = figures.get("results") or []
    if not results:
        return []
    rows = [
        (r["mode"], r["clients"], f"{r['p50_ms']:.0f}", f"{r['p95_ms']:.0f}", f"{r['requests_per_s']:.2f}",
         f"{r['tokens_per_s']:.0f}")
        for r in results
    ]  # fmt: skip
    hardware_text = figures.get("hardware") or "not recorded"
    return [
        f"**Serving** (`scripts/benchmark_serve.py`, {results[0]['requests']} requests per run; hardware: "
        f"{hardware_text}):",
        "",
        *table(("Mode", "Clients", "p50 ms", "p95 ms", "Requests/s", "Tokens/s"), rows, align="lrrrrr"),
        "",
    ]


def parameters_text(train_log: dict[str, Any]) -> str | None:
    """`1.2M of 135M parameters trained (0.9%)`, as `train` measured it; None for runs that did not record it."""
    counts = train_log.get("parameters")
    if not counts:
        return None
    return (
        f"{_count(counts['trainable'])} of {_count(counts['total'])} parameters trained ({counts['share']:.2%}, LoRA)"
    )


def _count(n: int) -> str:
    for size, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)


def _fmt(name: str, value: float) -> str:
    if name in RATES:
        return f"{value:.1%}"
    return f"{value:.3f}" if name == "eval_loss" else f"{value:.4g}"


def _delta(name: str, base: float, tuned: float) -> str:
    if name in RATES:
        return f"{(tuned - base) * 100:+.1f} pp"
    return f"{tuned - base:+.3f}" if name == "eval_loss" else f"{tuned - base:+.4g}"


@dataclass(frozen=True)
class Settings:
    """The training settings of a run as display text: the README's "Key settings" line and the model
    card's hyperparameter table both read these, so the two cannot disagree."""

    base_model: str
    lora_r: int
    lora_alpha: int
    lora_dropout: str
    target_modules: str
    qlora: bool  # LoRA on a 4-bit quantized base
    length: str  # what training ran for: the logged steps, else the configured steps or epochs
    epochs: float | None  # passes over the training rows (train_log.json), None when unknown
    train_rows: int | None
    batch_size: int
    accumulation: int
    learning_rate: str
    lr_scheduler: str
    warmup_ratio: str
    weight_decay: str
    max_seq_length: int
    precision: str
    packing: bool
    seed: int


def settings(cfg: Config, train_log: dict[str, Any]) -> Settings:
    lora, train = cfg.lora, cfg.train
    steps = [entry["step"] for entry in train_log.get("log_history", []) if "step" in entry]
    configured = f"{train.max_steps} steps" if train.max_steps > 0 else f"{train.num_epochs:g} epochs"
    train_rows = ((train_log.get("data") or {}).get("rows") or {}).get("train")
    return Settings(
        base_model=cfg.model.base_model,
        lora_r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=f"{lora.dropout:g}",
        target_modules=lora.target_modules if isinstance(lora.target_modules, str) else ", ".join(lora.target_modules),
        qlora=cfg.model.load_in_4bit,
        length=f"{max(steps)} steps" if steps else configured,
        epochs=train_log.get("epochs"),  # passes over the training rows, as `train` measured them
        train_rows=train_rows,
        batch_size=train.batch_size,
        accumulation=train.gradient_accumulation_steps,
        learning_rate=f"{train.learning_rate:g}",
        lr_scheduler=train.lr_scheduler,
        warmup_ratio=f"{train.warmup_ratio:g}",
        weight_decay=f"{train.weight_decay:g}",
        max_seq_length=cfg.data.max_seq_length,
        precision=train.precision,
        packing=train.packing,
        seed=train.seed,
    )


def length_text(values: Settings) -> str:
    """What training ran for, in steps and in passes over the data: `60 steps = 1.0 epochs of 960 rows`."""
    if values.epochs is None:
        return values.length + (f" over {values.train_rows} training rows" if values.train_rows else "")
    passes = f"{values.epochs:.1f}" if values.epochs >= 0.1 else f"{values.epochs:.2f}"
    return f"{values.length} = {passes} epochs of {values.train_rows} training rows"


def hardware(facts: RunFacts) -> str:
    return facts.train_log.get("hardware") or facts.run.get("device") or "unknown"


def wall_time(facts: RunFacts) -> str:
    """`training 5 min 0 s (437 tokens/s), evaluation 2 min 3 s`: tokens that are not padding, as TRL counts them."""
    train_s, eval_s = facts.train_log.get("train_runtime_s"), facts.run.get("wall_time_s")
    parts = [f"training {duration(train_s)}" if train_s is not None else "training: not recorded"]
    tokens = max((entry.get("num_tokens") or 0 for entry in facts.train_log.get("log_history") or []), default=0)
    if train_s and tokens:
        parts[0] += f" ({float(tokens) / float(train_s):,.0f} tokens/s)"
    parts.append(f"evaluation {duration(eval_s)}" if eval_s is not None else "evaluation: not recorded")
    return ", ".join(parts)


def cost(facts: RunFacts, *, hourly: float) -> str:
    """The estimated price of training + evaluation at `hourly` US dollars (report.hourly_cost_usd)."""
    seconds = float(facts.train_log.get("train_runtime_s") or 0) + float(facts.run.get("wall_time_s") or 0)
    return cost_text(seconds, hourly=hourly)


def duration(seconds: float) -> str:
    seconds = round(float(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"


def cost_text(seconds: float, *, hourly: float) -> str:
    if hourly <= 0:
        return "$0 extra on your own machine (set `report.hourly_cost_usd` to price a cloud GPU)"
    hours = seconds / 3600
    usd = hours * hourly
    return f"${usd:.2f} ({hours:.2f} h x ${hourly:g}/h, `report.hourly_cost_usd`; excludes set-up and idle time)"
