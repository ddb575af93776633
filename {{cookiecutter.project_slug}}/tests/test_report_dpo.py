"""The report of a DPO run compares it with its SFT parent: both evaluations read back from real MLflow runs
(an experiment of this module's own), the change with its paired interval, and one sentence instead when
the parent's evaluation is missing or not comparable. No training: the runs hold what `evaluate` logs."""

import json
from pathlib import Path

import pytest

from {{ cookiecutter.package_name }}.config import load_config
from {{ cookiecutter.package_name }}.registry import COMMAND
from {{ cookiecutter.package_name }}.report.card import model_card_text
from {{ cookiecutter.package_name }}.report.facts import gather
from {{ cookiecutter.package_name }}.report.lineage import sft_parent
from {{ cookiecutter.package_name }}.report.readme import results_section
from {{ cookiecutter.package_name }}.tracking import client as tracking_client

CONFIGS = Path(__file__).parents[1] / "configs"
PROJECT = {"name": "demo-model", "description": "", "license": "MIT", "repository": ""}
DIGEST = "d" * 64
ROWS = 40


def rows(right: int) -> list[float]:
    """Per-row 0/1 scores of 40 test rows: the first `right` rows right."""
    return [1.0] * right + [0.0] * (ROWS - right)


def scores(urgency: int, intent: int) -> dict[str, list[float]]:
    """Per-row scores of an extraction evaluation with two fields, as eval.json's `row_scores.finetuned`."""
    fields = {"field_accuracy_urgency": rows(urgency), "field_accuracy_intent": rows(intent)}
    pairs = list(zip(*fields.values(), strict=True))
    return {
        "json_valid_rate": rows(ROWS),
        **fields,
        "field_accuracy": [sum(pair) / 2 for pair in pairs],
        "exact_match": [float(all(pair)) for pair in pairs],
    }


def means(per_row: dict[str, list[float]], *, loss: float) -> dict[str, float]:
    return {name: sum(values) / len(values) for name, values in per_row.items()} | {"eval_loss": loss}


SFT = scores(urgency=20, intent=20)
# DPO fixes 16 urgency rows (a gain well clear of noise) and two intent rows (within the noise).
DPO = scores(urgency=36, intent=22)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """An experiment of this module's own in the session's scratch tracking store (conftest points
    MLFLOW_TRACKING_URI at a temporary SQLite file; a second new store would cost seconds of migrations)."""
    root = tmp_path_factory.mktemp("dpo-report")
    client = tracking_client()
    experiment = client.create_experiment("dpo-report", artifact_location=(root / "artifacts").as_uri())
    return client, experiment, root


def evaluated_run(store, *, tags: dict[str, str], per_row: dict | None, loss: float, digest: str | None = DIGEST):
    """A training run as `evaluate` leaves it: `finetuned.*` metrics (and an interval end, which is no metric
    of its own), the test digest, and evaluation/eval.json with the per-row scores (None: no eval.json)."""
    client, experiment, root = store
    run_id = client.create_run(experiment, tags=tags).info.run_id
    if per_row is not None:
        for name, value in means(per_row, loss=loss).items():
            client.log_metric(run_id, f"finetuned.{name}", value)
        client.log_metric(run_id, "finetuned.field_accuracy.ci_low", 0.1)
        folder = root / run_id
        folder.mkdir()
        (folder / "eval.json").write_text(json.dumps({"row_scores": {"finetuned": per_row}}))
        client.log_artifact(run_id, str(folder / "eval.json"), artifact_path="evaluation")
    if digest:
        client.set_tag(run_id, "evaluation.test_digest", digest)
        client.set_tag(run_id, "evaluation.test_rows", str(ROWS))
    return run_id


def dpo_run(store, *, parent_run_id: str) -> str:
    tags = {"stage": "dpo", "parent.run_id": parent_run_id, "parent.model_version": "3"}
    return evaluated_run(store, tags={**tags, "parent.source": "models:/shop@champion"}, per_row=DPO, loss=0.75)


def report(run_id: str | None, tmp_path: Path, *overrides: str, row_scores: bool = True) -> tuple[str, str]:
    """The README results section and the model card of the DPO model's evaluation (version 4)."""
    config = load_config(CONFIGS / "smoke.yaml", ["model.build_tiny=false", *overrides])
    run = {"adapter": "models:/shop/4", "split": "test", "num_examples": ROWS, "test_digest": DIGEST}
    results = {
        "base": means(SFT, loss=2.0),
        "finetuned": means(DPO, loss=0.75),
        "intervals": {"rows": ROWS, "resamples": 1000, "seed": 0, "columns": {}, "differences": {}},
        "run": run | {"mlflow_run_id": run_id, "model_version": "4"},
    }
    if row_scores:
        results["row_scores"] = {"finetuned": DPO}
    facts = gather(config, results=results, report_dir=tmp_path)
    section = results_section(facts, plots={}, readme_dir=tmp_path, config=facts.run_config)
    return section, model_card_text(facts, project=PROJECT, hourly_cost=0.0)


def test_a_dpo_run_shows_its_sft_parent_beside_it_with_paired_intervals(store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    parent = evaluated_run(store, tags={"stage": "sft"}, per_row=SFT, loss=0.8)
    section, card = report(dpo_run(store, parent_run_id=parent), tmp_path)
    table = [
        "| Metric | SFT (version 3) | SFT+DPO (version 4) | Change [95% interval] |",
        "|---|---:|---:|---:|",
        "| Field accuracy (mean) | 50.0% | 72.5% | +22.5 pp [+13.8, +32.5], better with DPO |",
        "| Valid JSON | 100.0% | 100.0% | +0.0 pp [+0.0, +0.0], no significant change |",
        "| Exact match | 50.0% | 55.0% | +5.0 pp [+0.0, +12.5], no significant change |",
        "| Loss per answer token | 0.800 | 0.750 | -0.050 |",
        "| Field accuracy: urgency | 50.0% | 90.0% | +40.0 pp [+25.0, +55.0], better with DPO |",
        "| Field accuracy: intent | 50.0% | 55.0% | +5.0 pp [+0.0, +12.5], no significant change |",
    ]
    for text in (section, card):
        assert "\n".join(table) in text
        assert (
            "**SFT vs SFT+DPO**: this model is the SFT model (version 3) after preference tuning with DPO; both "
            "evaluated on the `test` split (40 rows)."
        ) in text
        assert 'one that holds 0 reads "no significant change"' in text
        assert "its change has no interval." in text
    procedure = card.split("## Training procedure")[1].split("\n\n")[1]
    assert procedure.startswith(
        "Preference tuning with TRL's `DPOTrainer` (loss sigmoid + sft; beta 0.1) on chosen/rejected answer pairs, "
        "starting from the SFT model (version 3): a LoRA adapter trained with TRL's `SFTTrainer`"
    )
    # The comparison sits in the card's evaluation section, before the usage example.
    assert card.index("| Field accuracy: intent |") < card.index("## How to use")


def test_without_a_comparable_parent_evaluation_one_sentence_says_why_and_how(store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    how = (
        f"; to compare them, evaluate the SFT model (`{COMMAND} evaluate --adapter models:/smoke-test/3 "
        f"eval.report_dir=reports/sft`), then run `{COMMAND} report` again."
    )
    never = evaluated_run(store, tags={"stage": "sft"}, per_row=None, loss=0.8, digest=None)
    section, card = report(dpo_run(store, parent_run_id=never), tmp_path, "project=smoke-test")
    sentence = (
        "**SFT vs SFT+DPO**: this DPO model is not compared with its SFT model (version 3): the parent was never "
        "evaluated (its MLflow run has no `finetuned.*` metrics)" + how
    )
    assert sentence in section and sentence in card and "| SFT (version 3)" not in section

    other_rows = evaluated_run(store, tags={"stage": "sft"}, per_row=SFT, loss=0.8, digest="e" * 64)
    section, _ = report(dpo_run(store, parent_run_id=other_rows), tmp_path, "project=smoke-test")
    assert (
        f"the parent was evaluated on other test rows (40 rows, digest {'e' * 12}; this evaluation: digest "
        f"{'d' * 12}), so the two sets of figures do not compare" + how
    ) in section

    # Evaluated before per-row scores were logged: the changes alone, and why there is no interval.
    same_rows = evaluated_run(store, tags={"stage": "sft"}, per_row=SFT, loss=0.8)
    section, _ = report(dpo_run(store, parent_run_id=same_rows), tmp_path, "project=smoke-test", row_scores=False)
    assert "| Field accuracy: urgency | 50.0% | 90.0% | +40.0 pp |" in section
    assert "No intervals: this evaluation has no per-row scores (evaluated by an older version); evaluate" in section

    # The report never fails for the parent: an unreadable parent run and tracking off are one sentence each.
    section, _ = report(dpo_run(store, parent_run_id="0" * 32), tmp_path, "project=smoke-test")
    assert "not compared with its SFT model (version 3): MLflow could not be read (" in section
    dpo_config = load_config(
        CONFIGS / "smoke.yaml", ["train.stage=dpo", "model.adapter=outputs/sft-1", "tracking.enabled=false"]
    )
    parent = sft_parent(dpo_config, run_id=None, test_digest=DIGEST, tracking=False)
    assert (parent.source, parent.missing) == (
        "outputs/sft-1",
        "tracking is off (`tracking.enabled=false`), so the parent's evaluation cannot be looked up in MLflow",
    )


def test_an_sft_run_has_no_comparison(store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    section, card = report(evaluated_run(store, tags={"stage": "sft"}, per_row=SFT, loss=0.8), tmp_path)
    assert "SFT+DPO" not in section and "SFT+DPO" not in card
    assert "LoRA supervised fine-tuning with TRL's `SFTTrainer`" in card and "DPOTrainer" not in card
    assert "| Field accuracy (mean) |" in section  # the ordinary results are there


def test_a_grpo_run_is_compared_the_same_way_and_its_card_names_grpo(store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    parent = evaluated_run(store, tags={"stage": "sft"}, per_row=SFT, loss=0.8)
    tags = {"stage": "grpo", "parent.run_id": parent, "parent.model_version": "3"}
    grpo = evaluated_run(store, tags=tags, per_row=DPO, loss=0.75)
    section, card = report(grpo, tmp_path, "train.stage=grpo", "model.adapter=models:/shop@champion")
    for text in (section, card):
        assert "| Metric | SFT (version 3) | SFT+GRPO (version 4) | Change [95% interval] |" in text
        assert "| Field accuracy: urgency | 50.0% | 90.0% | +40.0 pp [+25.0, +55.0], better with GRPO |" in text
        assert "after reinforcement learning with GRPO (a verifiable reward)" in text and "DPO" not in text
    procedure = card.split("## Training procedure")[1].split("\n\n")[1]
    assert procedure.startswith(
        "Reinforcement learning with TRL's `GRPOTrainer` (4 sampled answers per training prompt, up to 64 tokens, "
        "beta 0), rewarded by the task's own scorer (fields), starting from the SFT model (version 3)"
    )
