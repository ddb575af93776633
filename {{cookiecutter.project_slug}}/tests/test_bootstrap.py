"""Paired bootstrap intervals (bootstrap.py) and the per-row scores behind them (metrics.py), on hand-made rows
with known answers."""

import time

import pytest

from {{ cookiecutter.package_name }}.evaluate.bootstrap import (
    excludes_zero,
    paired_intervals,
    percentile_interval,
)
from {{ cookiecutter.package_name }}.tasks.metrics import (
    extraction_row_scores,
    means,
)


def test_identical_predictions_give_a_zero_width_difference_interval():
    scores = {"field_accuracy": [1.0, 0.5, 0.0, 1.0, 0.25] * 8}
    intervals = paired_intervals({"base": scores, "finetuned": dict(scores)}, resamples=1000, seed=0)
    assert intervals["differences"]["finetuned_minus_base"]["field_accuracy"] == {
        "estimate": 0.0,
        "low": 0.0,
        "high": 0.0,
    }
    column = intervals["columns"]["finetuned"]["field_accuracy"]
    assert column["estimate"] == pytest.approx(0.55)
    assert column["low"] < column["estimate"] < column["high"]


def test_all_correct_gives_one_one_and_intervals_hold_the_estimate():
    right = {"exact_match": [1.0] * 50}
    mixed = {"exact_match": [1.0, 0.0] * 25}
    intervals = paired_intervals({"majority": mixed, "finetuned": right}, resamples=1000, seed=7)
    assert intervals["columns"]["finetuned"]["exact_match"] == {"estimate": 1.0, "low": 1.0, "high": 1.0}
    mixed_entry = intervals["columns"]["majority"]["exact_match"]
    assert mixed_entry["low"] < 0.5 < mixed_entry["high"]
    gain = intervals["differences"]["finetuned_minus_majority"]["exact_match"]
    assert gain["low"] <= gain["estimate"] == 0.5 <= gain["high"] and gain["low"] > 0
    assert excludes_zero(gain) and not excludes_zero(gain, direction="minimize")
    settings = (intervals["resamples"], intervals["seed"], intervals["rows"], intervals["confidence"])
    assert settings == (1000, 7, 50, 0.95)


def test_pairing_makes_a_consistent_gain_significant_where_unpaired_noise_would_hide_it():
    # Rows differ wildly in difficulty, but the fine-tuned model is right on one more field in every row.
    base = [0.0, 0.5, 0.2, 0.8, 0.1, 0.6] * 10
    tuned = [value + 0.1 for value in base]
    intervals = paired_intervals({"base": {"m": base}, "finetuned": {"m": tuned}}, resamples=1000, seed=0)
    assert intervals["differences"]["finetuned_minus_base"]["m"]["low"] == pytest.approx(0.1)
    assert intervals["differences"]["finetuned_minus_base"]["m"]["high"] == pytest.approx(0.1)


def test_same_seed_same_interval_and_1000_resamples_of_120_rows_are_fast():
    import numpy as np

    values = np.random.default_rng(1).random(120)
    start = time.perf_counter()
    intervals = paired_intervals({n: {f"m{i}": list(values) for i in range(10)} for n in ("a", "b", "c", "finetuned")})
    elapsed = time.perf_counter() - start
    assert elapsed < 2.0, f"bootstrap of 4 columns x 10 metrics took {elapsed:.2f} s"
    rng_indices = np.random.default_rng(0).integers(0, 120, size=(1000, 120))
    assert (intervals["columns"]["a"]["m0"]["low"], intervals["columns"]["a"]["m0"]["high"]) == percentile_interval(
        values, rng_indices
    )


def test_aggregates_are_the_means_of_the_per_row_scores():
    expected = ['{"intent": "track", "qty": 2}', '{"intent": "cancel", "qty": null}']
    answers = ['{"intent": "track", "qty": "2"}', "no JSON here"]
    rows = extraction_row_scores(answers, expected)
    assert rows == {
        "json_valid_rate": [1.0, 0.0],
        "field_accuracy_intent": [1.0, 0.0],
        "field_accuracy_qty": [0.0, 0.0],
        "field_accuracy": [0.5, 0.0],
        "exact_match": [0.0, 0.0],
    }
    assert means(rows)["field_accuracy"] == 0.25
