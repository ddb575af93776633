"""Paired bootstrap over the scored rows: a percentile interval for every metric of every column, and for
every difference between the fine-tuned model and each other column.

Paired: each resample draws one set of row indices and every column is scored on those same rows, so a
difference's interval reflects how the two models disagree row by row, not the noise of each alone
(identical answers give a zero-width interval). Vectorised with numpy: 1,000 resamples of 120 rows take a
few milliseconds per metric. Same seed, same intervals.
"""

from __future__ import annotations

from typing import Any

from ..tasks.metrics import RowScores

CONFIDENCE = 0.95
REFERENCE = "finetuned"  # differences are this column minus each other one


def resample_indices(n_rows: int, *, resamples: int, seed: int):
    """A (resamples, n_rows) array of row indices drawn with replacement; shared by every column (paired)."""
    import numpy as np

    return np.random.default_rng(seed).integers(0, n_rows, size=(resamples, n_rows))


def percentile_interval(values, indices, *, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The `confidence` percentile interval of the mean of `values` over the resampled `indices`."""
    import numpy as np

    means = np.asarray(values, dtype=float)[indices].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def _entry(values, indices) -> dict[str, float]:
    import numpy as np

    low, high = percentile_interval(values, indices)
    return {"estimate": float(np.mean(values)), "low": low, "high": high}


def paired_intervals(
    columns: dict[str, RowScores], *, resamples: int = 1000, seed: int = 0, reference: str = REFERENCE
) -> dict[str, Any]:
    """{"columns": {column: {metric: {estimate, low, high}}}, "differences": {"<reference>_minus_<other>": ...}}
    for every metric that both columns have, plus the settings that made them (resamples, seed, confidence)."""
    import numpy as np

    n_rows = len(next(iter(next(iter(columns.values())).values()), []))
    result: dict[str, Any] = {"confidence": CONFIDENCE, "resamples": resamples, "seed": seed, "rows": n_rows}
    if n_rows == 0:
        return result | {"columns": {}, "differences": {}}
    indices = resample_indices(n_rows, resamples=resamples, seed=seed)
    result["columns"] = {
        column: {metric: _entry(values, indices) for metric, values in scores.items()}
        for column, scores in columns.items()
    }
    differences = {}
    for other, scores in columns.items():
        if other == reference or reference not in columns:
            continue
        shared = [metric for metric in columns[reference] if metric in scores]
        differences[f"{reference}_minus_{other}"] = {
            metric: _entry(np.asarray(columns[reference][metric]) - np.asarray(scores[metric]), indices)
            for metric in shared
        }
    result["differences"] = differences
    return result


def excludes_zero(interval: dict[str, float], *, direction: str = "maximize") -> bool:
    """Whether a difference's interval lies wholly on the better side of zero (above for `maximize`)."""
    return interval["low"] > 0 if direction == "maximize" else interval["high"] < 0
