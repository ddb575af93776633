"""The report's PNGs: loss curves, every column's metrics with 95% error bars, per-field accuracy and the
confusion of the categorical fields (extraction task).

Same inputs, same bytes: fixed figure size and dpi, matplotlib's default style whatever the user's
matplotlibrc says, and no software version or date in the files.
"""

from __future__ import annotations

from pathlib import Path

from .facts import RunFacts
from .journey import Journey
from .summary import COLUMNS, LABELS, RATES, columns, interval

PLOTS = {
    "loss": "loss_curves.png",
    "metrics": "metrics.png",
    "fields": "field_accuracy.png",
    "confusion": "confusion.png",
}
DPI = 100  # with FIGSIZE: 900 x 450 pixels, sharp on GitHub without a heavy file
FIGSIZE = (9.0, 4.5)  # inches
BASE_COLOR, TUNED_COLOR = "#9e9e9e", "#1f77b4"
COLORS = {"majority": "#d9d9d9", "classical": "#2ca02c", "base": BASE_COLOR, "few_shot": "#ff7f0e",
          "finetuned": TUNED_COLOR}  # fmt: skip
SHORT = {"json_valid_rate": "Valid\nJSON", "field_accuracy": "Field accuracy\n(mean)", "exact_match": "Exact\nmatch"}


def write_plots(facts: RunFacts, *, out: Path) -> dict[str, Path]:
    """The PNGs this run has data for: loss curves, base vs fine-tuned metrics, per-field accuracy. A plot it
    has no data for is removed: one left by an earlier run (another task's fields) would describe that run."""
    import matplotlib.style

    out.mkdir(parents=True, exist_ok=True)
    base, tuned = facts.results["base"], facts.results["finetuned"]
    fields = [key.removeprefix("field_accuracy_") for key in tuned if key.startswith("field_accuracy_")]
    plots: dict[str, Path] = {}
    with matplotlib.style.context("default"):  # the user's matplotlibrc must not change the bytes
        if facts.history["loss"]:
            plots["loss"] = _save(_loss_figure(facts), out / PLOTS["loss"])
        plots["metrics"] = _save(_metrics_figure(facts.results), out / PLOTS["metrics"])
        if fields:
            plots["fields"] = _save(_fields_figure(base, tuned, fields), out / PLOTS["fields"])
        confusion = (facts.results.get("error_analysis") or {}).get("confusion")
        if confusion:
            plots["confusion"] = _save(_confusion_figure(confusion), out / PLOTS["confusion"])
    for key, name in PLOTS.items():
        if key not in plots:
            (out / name).unlink(missing_ok=True)
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
    split = facts.run.get("split", "test")
    base_loss, tuned_loss = facts.results["base"]["eval_loss"], facts.results["finetuned"]["eval_loss"]
    ax.axhline(base_loss, color=BASE_COLOR, linestyle="--", label=f"base model, {split} split ({base_loss:.2f})")
    ax.axhline(tuned_loss, color=TUNED_COLOR, linestyle=":", label=f"fine-tuned, {split} split ({tuned_loss:.2f})")
    ax.set(xlabel="optimizer step", ylabel="cross-entropy per answer token", title="Loss during fine-tuning")
    ax.grid(alpha=0.3)
    ax.legend()
    return figure


def _metrics_figure(results: dict):
    """Rates of every column, with the 95% interval as error bars; the loss of the model columns beside."""
    import numpy as np
    from matplotlib.ticker import PercentFormatter

    figure, (left, right) = _figure(width_ratios=(2, 1))
    shown = columns(results)
    rates = [name for name in RATES if name in results["finetuned"]]
    x, width = np.arange(len(rates)), 0.8 / len(shown)
    for i, (key, values) in enumerate(shown.items()):
        heights = [values.get(name, 0.0) for name in rates]
        bounds = [interval(results, "columns", key, name) for name in rates]
        errors = [
            [h - b["low"] if b else 0.0 for h, b in zip(heights, bounds, strict=True)],
            [b["high"] - h if b else 0.0 for h, b in zip(heights, bounds, strict=True)],
        ]
        offset = (i - (len(shown) - 1) / 2) * width
        bars = left.bar(x + offset, heights, width=width, label=COLUMNS[key], color=COLORS[key], yerr=errors, capsize=3)
        left.bar_label(bars, labels=[f"{h:.0%}" for h in heights], fontsize=7, padding=2)
    left.set(xticks=x, yticks=np.linspace(0, 1, 6), ylim=(0, 1.3), title="Held-out metrics, 95% intervals")
    left.set_xticklabels([SHORT.get(name, LABELS[name]) for name in rates])
    left.yaxis.set_major_formatter(PercentFormatter(1.0))
    left.legend(loc="upper center", ncols=len(shown), fontsize=8)
    with_loss = [key for key, values in shown.items() if "eval_loss" in values]
    losses = [shown[key]["eval_loss"] for key in with_loss]
    bars = right.bar([COLUMNS[key].replace(" ", "\n") for key in with_loss], losses,
                     color=[COLORS[key] for key in with_loss], width=0.6)  # fmt: skip
    right.bar_label(bars, labels=[f"{value:.2f}" for value in losses], fontsize=8)
    right.set(title="Loss per answer token\n(lower is better)", ylim=(0, max(losses) * 1.15 or 1))
    return figure


def _confusion_figure(confusion: dict):
    """One heat-map panel per categorical field: expected label (rows) against answered label (columns)."""
    figure, axes = _figure(width_ratios=tuple(max(len(c["answered"]), 3) for c in confusion.values()))
    for ax, (field, counts) in zip(axes, confusion.items(), strict=True):
        matrix = counts["counts"]
        ax.imshow(matrix, cmap="Blues", aspect="auto")
        peak = max((max(row) for row in matrix), default=0)
        for r, row in enumerate(matrix):
            for c, count in enumerate(row):
                if count:
                    color = "white" if count > peak / 2 else "black"
                    ax.text(c, r, str(count), ha="center", va="center", fontsize=7, color=color)
        ax.set_xticks(range(len(counts["answered"])), counts["answered"], rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(len(counts["expected"])), counts["expected"], fontsize=7)
        ax.set(title=field, xlabel="answered", ylabel="expected")
    figure.suptitle("Fine-tuned answers per categorical field (diagonal = right)")
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


JOURNEY = "journey.png"  # docs/experiments.md links it


def write_journey_plot(journey: Journey, *, out: Path) -> Path | None:
    """The headline metric of each evaluated run, oldest first, with its 95% interval; the champion starred.
    None (and no file) when no run was evaluated."""
    import matplotlib.style

    metric = journey.metric
    scored = [(f"{i}. {run.name}", run) for i, run in enumerate(journey.runs, 1) if metric in run.metrics]
    (out / JOURNEY).unlink(missing_ok=True)  # an older picture would show runs the log no longer has
    if not scored:
        return None
    values = [run.metrics[metric] for _, run in scored]
    bounds = [(run.metrics.get(f"{metric}.ci_low", v), run.metrics.get(f"{metric}.ci_high", v)) for v, (_, run) in
              zip(values, scored, strict=True)]  # fmt: skip
    errors = [[v - low for v, (low, _) in zip(values, bounds, strict=True)],
              [high - v for v, (_, high) in zip(values, bounds, strict=True)]]  # fmt: skip
    with matplotlib.style.context("default"):
        figure, (ax,) = _figure()
        x = list(range(len(values)))
        ax.errorbar(x, values, yerr=errors, fmt="o-", color=TUNED_COLOR, capsize=4, label=f"{metric}, 95% interval")
        best = [i for i, (_, run) in enumerate(scored) if run.run_id == journey.champion_run]
        if best:
            ax.plot(best, [values[i] for i in best], "*", color="#d62728", markersize=16, label="champion")
        ax.set_xticks(x, [label for label, _ in scored], rotation=20, ha="right", fontsize=8)
        ax.set(ylabel=metric, title="Headline metric over the runs")
        ax.grid(alpha=0.3)
        ax.legend()
        out.mkdir(parents=True, exist_ok=True)
        return _save(figure, out / JOURNEY)
