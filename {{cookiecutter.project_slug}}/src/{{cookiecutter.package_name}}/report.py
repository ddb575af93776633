"""Portfolio report: plots, the README results section and the Hugging Face model card, from a finished run.

    <project> report --config configs/smoke.yaml     # after `evaluate` (`make evaluate` runs both)
    <project> report --config configs/gpu.yaml report.hourly_cost_usd=1.006

Reads reports/eval.json (written by `evaluate`), the run's loss history (its MLflow run, or
outputs/<run>/train_log.json when tracking is off), the run's resolved config.yaml and
reports/promotion.json. Writes reports/loss_curves.png, reports/metrics.png, reports/field_accuracy.png
(extraction task), MODEL_CARD.md, and the README text between `<!-- results:start -->` and
`<!-- results:end -->`; everything outside the markers is kept byte for byte. The output depends only
on those inputs (no dates, fixed figure size and dpi, no software version in the PNGs), so a second run
writes the same bytes.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import Config, ConfigError, load_config

log = logging.getLogger(__name__)

START, END = "<!-- results:start -->", "<!-- results:end -->"
PLOTS = {"loss": "loss_curves.png", "metrics": "metrics.png", "fields": "field_accuracy.png"}
DPI = 100  # with FIGSIZE: 900 x 450 pixels, sharp on GitHub without a heavy file
FIGSIZE = (9.0, 4.5)  # inches
BASE_COLOR, TUNED_COLOR = "#9e9e9e", "#1f77b4"
SHORT = {"json_valid_rate": "Valid\nJSON", "field_accuracy": "Field accuracy\n(mean)", "exact_match": "Exact\nmatch"}
LABELS = {
    "json_valid_rate": "Valid JSON",
    "field_accuracy": "Field accuracy (mean)",
    "exact_match": "Exact match",
    "rouge_l": "ROUGE-L F1",
    "eval_loss": "Loss per answer token",
    "perplexity": "Perplexity",
}
RATES = ("json_valid_rate", "field_accuracy", "exact_match", "rouge_l")  # shares in [0, 1]
LICENSES = {"MIT": "mit", "Apache-2.0": "apache-2.0", "BSD-3-Clause": "bsd-3-clause", "GPL-3.0-only": "gpl-3.0"}


class ReportError(ValueError):
    """The report cannot be written (no evaluation yet, README without markers); nothing was written."""


@dataclass
class RunFacts:
    """Everything the report shows, gathered once from the run's files and MLflow."""

    results: dict[str, Any]  # reports/eval.json
    run_config: Config  # the run's resolved config (or the given one when the run's is not found)
    config_source: str  # where run_config came from
    config_name: str | None  # configs/<name>.yaml that trained it, when known
    history: dict[str, list[tuple[int, float]]]  # "loss" and "eval_loss" by optimizer step
    history_source: str
    train_log: dict[str, Any] = field(default_factory=dict)
    promotion: dict[str, Any] | None = None


def write_report(config: Config, *, readme: Path, model_card: Path) -> list[Path]:
    """Plots, MODEL_CARD.md and the README results section for the evaluation in eval.report_dir.
    Every check (eval.json present, README markers) runs before anything is written."""
    report_dir = Path(config.eval.report_dir)
    results = read_results(report_dir)
    readme_text = _read_readme(readme)
    facts = gather(config, results=results, report_dir=report_dir)
    plots = write_plots(facts, out=report_dir)
    project = project_metadata(readme.resolve().parent)
    card = model_card_text(facts, project=project, hourly_cost=config.report.hourly_cost_usd)
    model_card.write_bytes(card.encode("utf-8"))
    section = results_section(facts, plots=plots, readme_dir=readme.resolve().parent, config=config)
    updated = replace_results(readme_text, section, readme=readme)
    if updated != readme_text:
        readme.write_bytes(updated.encode("utf-8"))
    written = [*plots.values(), model_card, readme]
    if config.tracking.enabled and results["run"].get("mlflow_run_id"):
        _log_to_mlflow(results["run"]["mlflow_run_id"], files=[*plots.values(), model_card])
    return written


# ---- inputs ---------------------------------------------------------------------------------------------


def read_results(report_dir: Path) -> dict[str, Any]:
    path = report_dir / "eval.json"
    if not path.is_file():
        raise ReportError(f"{path} not found: run `make evaluate` (or `evaluate --config ...`) first")
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ReportError(f"{path}:{err.lineno}: not valid JSON ({err.msg}); run `make evaluate` again") from None
    missing = [key for key in ("base", "finetuned", "run") if key not in results]
    if missing:
        raise ReportError(f"{path}: missing {', '.join(missing)}; it predates this version: run `make evaluate` again")
    return results


def _read_readme(readme: Path) -> str:
    if not readme.is_file():
        raise ReportError(f"{readme} not found; pass --readme with the README to update")
    try:
        text = readme.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise ReportError(
            f"{readme}: not UTF-8 text (byte {err.start}); save it as UTF-8; nothing was written"
        ) from None
    _check_markers(text, readme=readme)  # before anything is written
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


def gather(config: Config, *, results: dict[str, Any], report_dir: Path) -> RunFacts:
    """The run behind eval.json: its folder, resolved config, loss history and gate decision."""
    run = results["run"]
    run_id = run.get("mlflow_run_id")
    run_dir = find_run_dir(run, output_dir=Path(config.train.output_dir))
    train_log = _read_json(run_dir / "train_log.json") if run_dir else {}
    run_config, config_source = _run_config(config, run_dir=run_dir, run_id=run_id)
    history, history_source = loss_history(
        run_id=run_id if config.tracking.enabled else None, train_log=train_log, run_dir=run_dir
    )
    promotion = _read_json(report_dir / "promotion.json")
    if promotion.get("candidate_version") != run.get("model_version"):
        promotion = {}  # the gate judged another version since: not this run's decision
    return RunFacts(
        results=results,
        run_config=run_config,
        config_source=config_source,
        config_name=train_log.get("config_name") or _mlflow_tag(run_id, "config", enabled=config.tracking.enabled),
        history=history,
        history_source=history_source,
        train_log=train_log,
        promotion=promotion or None,
    )


def find_run_dir(run: dict[str, Any], *, output_dir: Path) -> Path | None:
    """outputs/<run>/ of the evaluated adapter: its parent folder, or the folder whose tracking.json
    names the same MLflow run (when a registry URI was evaluated)."""
    adapter = run.get("adapter") or ""
    if not adapter.startswith(("models:/", "runs:/")) and (Path(adapter).parent / "config.yaml").is_file():
        return Path(adapter).parent
    run_id = run.get("mlflow_run_id")
    if run_id:
        for tracking_file in sorted(output_dir.glob("*/tracking.json")):
            if _read_json(tracking_file).get("run_id") == run_id:
                return tracking_file.parent
    return None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except json.JSONDecodeError:
        log.warning("%s is not valid JSON; ignored", path)
        return {}


def _run_config(config: Config, *, run_dir: Path | None, run_id: str | None) -> tuple[Config, str]:
    """The run's own resolved config.yaml (run folder, else its MLflow artifact); else the given config."""
    candidates = [run_dir / "config.yaml"] if run_dir else []
    if not candidates and run_id and config.tracking.enabled:
        from .tracking import run_config_file

        logged = run_config_file(run_id)
        candidates = [logged] if logged else []
    for path in candidates:
        try:
            return load_config(path), _display_path(path)
        except ConfigError as err:
            log.warning("%s does not load (%s); showing the given config instead", path, err)
    return config, "the config given to `report` (the run's config.yaml was not found)"


def loss_history(
    *, run_id: str | None, train_log: dict[str, Any], run_dir: Path | None
) -> tuple[dict[str, list[tuple[int, float]]], str]:
    """Training and validation loss by step: the MLflow run's metric history, else train_log.json."""
    if run_id:
        history = _mlflow_history(run_id)
        if history["loss"]:
            return history, "the MLflow run's metric history (loss, eval_loss)"
    history = {"loss": [], "eval_loss": []}
    for entry in train_log.get("log_history", []):
        for key in history:
            if key in entry and "step" in entry:
                history[key].append((int(entry["step"]), float(entry[key])))
    if history["loss"] and run_dir is not None:
        return _last_per_step(history), _display_path(run_dir / "train_log.json")
    return history, ""


def _mlflow_history(run_id: str) -> dict[str, list[tuple[int, float]]]:
    from mlflow.exceptions import MlflowException

    from .tracking import client

    try:
        mlflow_client = client()
        raw = {key: mlflow_client.get_metric_history(run_id, key) for key in ("loss", "eval_loss")}
    except (MlflowException, OSError) as err:
        log.warning("MLflow history of run %s unavailable (%s); using the local train_log.json", run_id, err)
        return {"loss": [], "eval_loss": []}
    return _last_per_step(
        {key: [(m.step, m.value) for m in sorted(ms, key=lambda m: m.timestamp)] for key, ms in raw.items()}
    )


def _last_per_step(history: dict[str, list[tuple[int, float]]]) -> dict[str, list[tuple[int, float]]]:
    """One point per step, the newest (a resumed run logs the steps after its checkpoint again)."""
    return {key: sorted(dict(points).items()) for key, points in history.items()}


def _mlflow_tag(run_id: str | None, key: str, *, enabled: bool) -> str | None:
    if not (run_id and enabled):
        return None
    from mlflow.exceptions import MlflowException

    from .tracking import client

    try:
        return client().get_run(run_id).data.tags.get(key)
    except (MlflowException, OSError):
        return None


def project_metadata(root: Path) -> dict[str, str]:
    """Name, licence and repository of the project, from its pyproject.toml (defaults without one)."""
    import tomllib

    path = root / "pyproject.toml"
    project = tomllib.loads(path.read_text(encoding="utf-8")).get("project", {}) if path.is_file() else {}
    license_name = project.get("license") if isinstance(project.get("license"), str) else None
    return {
        "name": project.get("name", root.name),
        "description": project.get("description", ""),
        "license": license_name or "Proprietary",
        "repository": project.get("urls", {}).get("Repository", ""),
    }


def _display_path(path: Path) -> str:
    """Relative to the current (project) folder when inside it, else the bare name: no home folders in a
    published README."""
    try:
        relative = os.path.relpath(path)
    except ValueError:  # another drive (Windows)
        return path.name
    return path.name if relative.startswith("..") else Path(relative).as_posix()


# ---- plots ----------------------------------------------------------------------------------------------


def write_plots(facts: RunFacts, *, out: Path) -> dict[str, Path]:
    """The PNGs this run has data for: loss curves, base vs fine-tuned metrics, per-field accuracy."""
    import matplotlib.style

    out.mkdir(parents=True, exist_ok=True)
    base, tuned = facts.results["base"], facts.results["finetuned"]
    fields = [key.removeprefix("field_accuracy_") for key in tuned if key.startswith("field_accuracy_")]
    plots: dict[str, Path] = {}
    with matplotlib.style.context("default"):  # the user's matplotlibrc must not change the bytes
        if facts.history["loss"]:
            plots["loss"] = _save(_loss_figure(facts), out / PLOTS["loss"])
        plots["metrics"] = _save(_metrics_figure(base, tuned), out / PLOTS["metrics"])
        if fields:
            plots["fields"] = _save(_fields_figure(base, tuned, fields), out / PLOTS["fields"])
    return plots


def _figure(width_ratios: tuple[int, ...] = (1,)):
    """A figure outside pyplot (no global state, no GUI backend): Agg renders it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure, figure.subplots(1, len(width_ratios), squeeze=False, width_ratios=width_ratios)[0]


def _save(figure, path: Path) -> Path:
    # Software=None drops the "Matplotlib version ..." text chunk; PNGs carry no date, so bytes repeat.
    figure.savefig(path, format="png", dpi=DPI, metadata={"Software": None})
    return path


def _loss_figure(facts: RunFacts):
    figure, (ax,) = _figure()
    for key, label, color, marker in (
        ("loss", "training loss", TUNED_COLOR, "."),
        ("eval_loss", "validation loss", "#ff7f0e", "o"),
    ):
        points = facts.history[key]
        if points:
            ax.plot([s for s, _ in points], [v for _, v in points], marker=marker, color=color, label=label)
    split = facts.results["run"].get("split", "test")
    base_loss, tuned_loss = facts.results["base"]["eval_loss"], facts.results["finetuned"]["eval_loss"]
    ax.axhline(base_loss, color=BASE_COLOR, linestyle="--", label=f"base model, {split} split ({base_loss:.2f})")
    ax.axhline(tuned_loss, color=TUNED_COLOR, linestyle=":", label=f"fine-tuned, {split} split ({tuned_loss:.2f})")
    ax.set(xlabel="optimizer step", ylabel="cross-entropy per answer token", title="Loss during fine-tuning")
    ax.grid(alpha=0.3)
    ax.legend()
    return figure


def _metrics_figure(base: dict[str, float], tuned: dict[str, float]):
    import numpy as np
    from matplotlib.ticker import PercentFormatter

    figure, (left, right) = _figure(width_ratios=(2, 1))
    rates = [name for name in RATES if name in tuned]
    x = np.arange(len(rates))
    for offset, values, label, color in ((-0.2, base, "base", BASE_COLOR), (0.2, tuned, "fine-tuned", TUNED_COLOR)):
        bars = left.bar(x + offset, [values[name] for name in rates], width=0.4, label=label, color=color)
        left.bar_label(bars, labels=[f"{values[name]:.0%}" for name in rates], fontsize=8)
    left.set(xticks=x, yticks=np.linspace(0, 1, 6), ylim=(0, 1.25), title="Held-out metrics (higher is better)")
    left.set_xticklabels([SHORT.get(name, LABELS[name]) for name in rates])
    left.yaxis.set_major_formatter(PercentFormatter(1.0))
    left.legend(loc="upper center", ncols=2)
    losses = [base["eval_loss"], tuned["eval_loss"]]
    bars = right.bar(["base", "fine-tuned"], losses, color=[BASE_COLOR, TUNED_COLOR], width=0.6)
    right.bar_label(bars, labels=[f"{value:.2f}" for value in losses], fontsize=8)
    right.set(title="Loss per answer token\n(lower is better)", ylim=(0, max(losses) * 1.15 or 1))
    return figure


def _fields_figure(base: dict[str, float], tuned: dict[str, float], fields: list[str]):
    import numpy as np
    from matplotlib.ticker import PercentFormatter

    figure, (ax,) = _figure()
    y = np.arange(len(fields))[::-1]  # first field on top
    for offset, values, label, color in ((0.2, base, "base", BASE_COLOR), (-0.2, tuned, "fine-tuned", TUNED_COLOR)):
        shares = [values.get(f"field_accuracy_{name}", 0.0) for name in fields]
        bars = ax.barh(y + offset, shares, height=0.4, label=label, color=color)
        ax.bar_label(bars, labels=[f"{share:.0%}" for share in shares], fontsize=8, padding=2)
    ax.set(yticks=y, xlim=(0, 1.12), xlabel="share of held-out answers with this field right")
    ax.set_yticklabels(fields)
    ax.xaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_title("Accuracy per extracted field")
    ax.legend(loc="lower right")
    return figure


# ---- README results section -----------------------------------------------------------------------------


def results_section(facts: RunFacts, *, plots: dict[str, Path], readme_dir: Path, config: Config) -> str:
    """Markdown between the README markers: table, plots, samples, run facts. No dates: reruns are identical."""
    run, cfg = facts.results["run"], facts.run_config
    lines = [
        f"<!-- Written by `report` from {_display_path(Path(config.eval.report_dir) / 'eval.json')} and the "
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
    titles = {"loss": "Training and validation loss", "metrics": "Base vs fine-tuned", "fields": "Per-field accuracy"}
    for key, path in plots.items():
        lines += [f"![{titles[key]}]({Path(os.path.relpath(path, readme_dir)).as_posix()})", ""]
    lines += [
        *samples_markdown(facts.results.get("examples", [])[: config.report.num_samples]),
        *run_table(facts, config=config),
    ]
    return "\n".join(lines)


def metrics_table(results: dict[str, Any]) -> list[str]:
    base, tuned = results["base"], results["finetuned"]
    lines = ["| Metric | Base | Fine-tuned | Change |", "|---|---:|---:|---:|"]
    for name in [*(n for n in RATES if n in tuned), "eval_loss", "perplexity"]:
        if name in tuned and name in base:
            cells = [_fmt(name, base[name]), _fmt(name, tuned[name]), _delta(name, base[name], tuned[name])]
            lines.append(f"| {LABELS[name]} | {' | '.join(cells)} |")
    return lines


def _fmt(name: str, value: float) -> str:
    if name in RATES:
        return f"{value:.1%}"
    return f"{value:.3f}" if name == "eval_loss" else f"{value:.4g}"


def _delta(name: str, base: float, tuned: float) -> str:
    if name in RATES:
        return f"{(tuned - base) * 100:+.1f} pp"
    return f"{tuned - base:+.3f}" if name == "eval_loss" else f"{tuned - base:+.4g}"


def samples_markdown(examples: list[dict[str, str]]) -> list[str]:
    if not examples:
        return []
    lines = [f"**{len(examples)} sample generations** from the held-out split:", ""]
    for i, example in enumerate(examples, start=1):
        lines += [
            f"| Sample {i} | |",
            "|---|---|",
            *(
                f"| {label} | {_cell(example.get(key, ''))} |"
                for key, label in (
                    ("input", "input"),
                    ("expected", "expected"),
                    ("base", "base"),
                    ("finetuned", "fine-tuned"),
                )
            ),
            "",
        ]
    return lines


def _cell(text: str, limit: int = 200) -> str:
    """A markdown table cell: pipes escaped, one line, long text cut, empty answers visible."""
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text.replace("|", "\\|") if text else "*(empty)*"


def run_table(facts: RunFacts, *, config: Config) -> list[str]:
    run, cfg = facts.results["run"], facts.run_config
    rows = [
        (
            "MLflow run",
            f"`{run['mlflow_run_id']}`" if run.get("mlflow_run_id") else "not tracked (tracking.enabled=false)",
        ),
        ("Model", _model_text(run, facts.promotion, project=cfg.project)),
        ("Config", _config_text(facts)),
        ("Key settings", key_settings(cfg, facts.train_log)),
        ("Loss curves from", facts.history_source or "no training history found (train_log.json or MLflow)"),
        ("Hardware", facts.train_log.get("hardware") or run.get("device") or "unknown"),
        ("Wall time", _wall_time_text(facts)),
        ("Estimated cost", cost_text(_total_seconds(facts), hourly=config.report.hourly_cost_usd)),
    ]
    return ["| Run | |", "|---|---|", *(f"| {name} | {value} |" for name, value in rows)]


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


def key_settings(cfg: Config, train_log: dict[str, Any]) -> str:
    lora, train = cfg.lora, cfg.train
    targets = lora.target_modules if isinstance(lora.target_modules, str) else ", ".join(lora.target_modules)
    steps = [entry["step"] for entry in train_log.get("log_history", []) if "step" in entry]
    length = (
        f"{max(steps)} steps"
        if steps
        else (f"{train.max_steps} steps" if train.max_steps > 0 else f"{train.num_epochs:g} epochs")
    )
    rows = train_log.get("rows", {}).get("train")
    parts = [
        f"LoRA r={lora.r}, alpha={lora.alpha}, dropout={lora.dropout:g}, targets {targets}"
        + (" on a 4-bit base (QLoRA)" if cfg.model.load_in_4bit else ""),
        f"{length}" + (f" over {rows} training rows" if rows else ""),
        f"batch {train.batch_size} x {train.gradient_accumulation_steps} accumulation",
        f"learning rate {train.learning_rate:g} ({train.lr_scheduler}, warm-up {train.warmup_ratio:g})",
        f"max {cfg.data.max_seq_length} tokens, precision {train.precision}, seed {train.seed}",
    ]
    return "; ".join(parts)


def _total_seconds(facts: RunFacts) -> float:
    return float(facts.train_log.get("train_runtime_s") or 0) + float(facts.results["run"].get("wall_time_s") or 0)


def _wall_time_text(facts: RunFacts) -> str:
    train_s, eval_s = facts.train_log.get("train_runtime_s"), facts.results["run"].get("wall_time_s")
    parts = [f"training {duration(train_s)}" if train_s is not None else "training: not recorded"]
    parts.append(f"evaluation {duration(eval_s)}" if eval_s is not None else "evaluation: not recorded")
    return ", ".join(parts)


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


# ---- model card -----------------------------------------------------------------------------------------


def model_card_text(facts: RunFacts, *, project: dict[str, str], hourly_cost: float) -> str:
    """MODEL_CARD.md in the Hugging Face format: YAML metadata (with model-index) then the card."""
    from huggingface_hub import ModelCard

    data = card_data(facts, project=project)
    body = _card_body(facts, project=project, hourly_cost=hourly_cost)
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}")
    return str(card)


def card_data(facts: RunFacts, *, project: dict[str, str]):  # -> huggingface_hub.ModelCardData
    from huggingface_hub import EvalResult, ModelCardData

    run, cfg, tuned = facts.results["run"], facts.run_config, facts.results["finetuned"]
    dataset = _dataset_id(cfg.data.path)
    license_id = LICENSES.get(project["license"], "other")
    extra = {"license_name": "proprietary", "license_link": "LICENSE"} if license_id == "other" else {}
    metrics = [name for name in (*RATES, "eval_loss") if name in tuned]
    return ModelCardData(
        base_model=cfg.model.base_model,
        library_name="peft",
        license=license_id,
        datasets=[dataset],
        tags=["lora", "peft", "sft", "trl", "transformers", cfg.data.task],
        pipeline_tag="text-generation",
        model_name=project["name"],
        eval_results=[
            EvalResult(
                task_type="text-generation",
                dataset_type=dataset,
                dataset_name=dataset,
                dataset_split=run.get("split", "test"),
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


def _card_body(facts: RunFacts, *, project: dict[str, str], hourly_cost: float) -> str:
    run, cfg = facts.results["run"], facts.run_config
    repository = project["repository"]
    tiny = cfg.model.build_tiny
    adapter = str(run.get("adapter") or "")
    usage_target = (
        "outputs/<run>/adapter" if adapter.startswith(("models:/", "runs:/")) else _display_path(Path(adapter))
    )
    sections = [
        f"# {project['name']}",
        "",
        project["description"] or "A LoRA adapter fine-tuned with TRL's SFTTrainer.",
        "",
        f"A LoRA adapter for `{cfg.model.base_model}`, trained and evaluated by the pipeline in "
        + (f"[{repository}]({repository})" if repository else "this project")
        + ". This card is written by `report` from the run's own files; do not edit it by hand.",
        "",
        "## Intended use",
        "",
        "Reading a short customer message to a shop and answering with one JSON object (intent, order id, "
        "product, quantity, sentiment, urgency), for routing and analytics behind a human agent."
        if cfg.data.task == "extraction"
        else "Answering prompts in the style of its training data.",
        "It is a portfolio project: an example of the fine-tuning and MLOps workflow, not a production system.",
        "",
        "## Limitations",
        "",
    ]
    if tiny:
        sections.append(
            f"- **This is the smoke model**: `{cfg.model.base_model}` is a tiny, randomly initialised model "
            "built offline for tests. It has no language knowledge; its scores show that the pipeline learns, "
            "nothing more. Do not use it."
        )
    sections += [
        f"- Scored on {run.get('num_examples', '?')} held-out examples of one dataset; real messages are longer, "
        "noisier and in more languages.",
        "- Greedy decoding; answers can still be invalid JSON or wrong fields: validate them before acting.",
        f"- The base model's own licence, limitations and biases apply (`{cfg.model.base_model}`).",
        "",
        "## Training data",
        "",
        f"`{cfg.data.path}` (task `{cfg.data.task}`)"
        + (
            f": {', '.join(f'{n} {split}' for split, n in facts.train_log['rows'].items())} rows."
            if facts.train_log.get("rows")
            else "."
        )
        + " The example dataset is synthetic, written by the project's deterministic generator (`data synth`); "
        "it holds no real customer data.",
        "",
        "## Training procedure",
        "",
        "LoRA supervised fine-tuning with TRL's `SFTTrainer`; the loss counts the assistant's answer tokens only.",
        "",
        "| Hyperparameter | Value |",
        "|---|---|",
        *(f"| {name} | {value} |" for name, value in _hyperparameters(cfg)),
        "",
        f"Hardware: {facts.train_log.get('hardware') or run.get('device') or 'unknown'}. "
        f"Wall time: {_wall_time_text(facts)}. Estimated cost: {cost_text(_total_seconds(facts), hourly=hourly_cost)}.",
        "",
        "## Evaluation",
        "",
        f"Base model vs this adapter on the same {run.get('num_examples', '?')} examples of the "
        f"`{run.get('split', 'test')}` split, greedy decoding.",
        "",
        *metrics_table(facts.results),
        "",
        "## How to use",
        "",
        "```python",
        "from peft import AutoPeftModelForCausalLM",
        "from transformers import AutoTokenizer",
        "",
        f'adapter = "{usage_target}"  # or this repository\'s id on the Hugging Face Hub',
        "model = AutoPeftModelForCausalLM.from_pretrained(adapter)",
        "tokenizer = AutoTokenizer.from_pretrained(adapter)  # with the chat template used in training",
        "```",
    ]
    if run.get("mlflow_run_id"):
        sections += [
            "",
            f"MLflow run: `{run['mlflow_run_id']}`"
            + (f", model version {run['model_version']}." if run.get("model_version") else "."),
        ]
    return "\n".join(sections) + "\n"


def _hyperparameters(cfg: Config) -> list[tuple[str, Any]]:
    lora, train = cfg.lora, cfg.train
    return [
        ("base model", f"`{cfg.model.base_model}`"),
        ("LoRA r / alpha / dropout", f"{lora.r} / {lora.alpha} / {lora.dropout:g}"),
        (
            "target modules",
            lora.target_modules if isinstance(lora.target_modules, str) else ", ".join(lora.target_modules),
        ),
        ("4-bit base (QLoRA)", cfg.model.load_in_4bit),
        ("epochs / max steps", f"{train.num_epochs:g} / {train.max_steps}"),
        ("batch size x accumulation", f"{train.batch_size} x {train.gradient_accumulation_steps}"),
        ("learning rate, schedule, warm-up", f"{train.learning_rate:g}, {train.lr_scheduler}, {train.warmup_ratio:g}"),
        ("weight decay", f"{train.weight_decay:g}"),
        ("max sequence length", cfg.data.max_seq_length),
        ("precision", train.precision),
        ("packing", train.packing),
        ("seed", train.seed),
    ]


# ---- MLflow ---------------------------------------------------------------------------------------------


def _log_to_mlflow(run_id: str, *, files: list[Path]) -> None:
    """The plots and model card as artifacts of the training run (report/), next to evaluation/."""
    from mlflow.exceptions import MlflowException

    from .tracking import client

    try:
        mlflow_client = client()
        for path in files:
            mlflow_client.log_artifact(run_id, str(path), artifact_path="report")
    except (MlflowException, OSError) as err:  # the files are written; a tracking hiccup must not hide them
        log.warning("could not log the report to MLflow run %s: %s", run_id, err)
