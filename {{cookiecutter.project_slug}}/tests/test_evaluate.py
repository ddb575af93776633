"""Evaluation: metrics, the loss mask, and reports/eval.json + eval.md of base vs fine-tuned."""

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from {{ cookiecutter.package_name }}.cli import app
from {{ cookiecutter.package_name }}.config import dump_config
from {{ cookiecutter.package_name }}.evaluate import _loss_batch, evaluate, extraction_metrics, generic_metrics
from {{ cookiecutter.package_name }}.model import ModelError, load_tokenizer

EXPECTED = [
    '{"intent":"track","order_id":"A1","quantity":null}',
    '{"intent":"return","order_id":null,"quantity":2}',
]


def test_extraction_metrics_score_json_fields_and_exact_match():
    answers = [
        'Sure! {"intent":"track","order_id":"A1","quantity":null} Anything else?',  # all right, chatty
        '{"intent":"return","order_id":"B7","quantity":2',  # truncated: not JSON at all
    ]
    metrics = extraction_metrics(answers, EXPECTED)
    assert metrics["json_valid_rate"] == 0.5
    assert metrics["field_accuracy_intent"] == metrics["field_accuracy_order_id"] == 0.5
    assert metrics["field_accuracy"] == 0.5  # mean over intent, order_id, quantity
    assert metrics["exact_match"] == 0.5


def test_extraction_metrics_count_a_missing_key_as_wrong_even_when_null_expected():
    metrics = extraction_metrics(['{"intent":"track","order_id":"A1"}'], EXPECTED[:1])
    assert metrics["field_accuracy_quantity"] == 0.0
    assert metrics["exact_match"] == 0.0


def test_generic_metrics_exact_match_and_rouge_l():
    metrics = generic_metrics(["the cat sat", "a dog"], ["the cat sat", "the dog ran away"])
    assert metrics["exact_match"] == 0.5
    assert 0.5 < metrics["rouge_l"] < 1.0


def test_loss_ignores_prompt_tokens_and_padding(tiny_model):
    tokenizer = load_tokenizer(tiny_model)
    rows = [
        [{"role": "user", "content": "short"}, {"role": "assistant", "content": "{}"}],
        [{"role": "user", "content": "a much longer question here"}, {"role": "assistant", "content": '{"a":1}'}],
    ]
    _, attention_mask, labels = _loss_batch(tokenizer, rows)
    for row, mask, target in zip(rows, attention_mask.tolist(), labels.tolist(), strict=True):
        prompt = tokenizer.apply_chat_template(row[:-1], add_generation_prompt=True, return_dict=True)["input_ids"]
        scored = [token for token in target if token != -100]
        assert set(target[: len(prompt)]) == {-100}
        assert tokenizer.decode(scored).startswith(row[-1]["content"] + "<|im_end|>")
        assert len(scored) == sum(mask) - len(prompt)  # padding is never scored


def test_no_adapter_yet_is_a_clear_error(smoke_config, tmp_path):
    with pytest.raises(ModelError, match="no trained adapter under"):
        evaluate(smoke_config(root=tmp_path))


def test_cli_evaluate_with_a_missing_adapter_fails_cleanly(smoke_config, tmp_path):
    config_file = tmp_path / "smoke.yaml"
    dump_config(smoke_config(root=tmp_path), config_file)
    result = CliRunner().invoke(app, ["evaluate", "--config", str(config_file), "--adapter", str(tmp_path / "nope")])
    assert result.exit_code == 1
    assert "error: " in result.output and "nope: no such folder" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "reports").exists()


@pytest.mark.e2e
def test_cli_evaluate_prints_both_models_and_generic_task_reports_rouge_l(smoke_config, smoke_run, tmp_path):
    """One evaluation, two checks: the command prints both models' metrics, and `data.task=generic` scores
    exact match and ROUGE-L instead of JSON fields (the extraction task's keys: the shared smoke_report)."""
    config_file = tmp_path / "smoke.yaml"
    dump_config(smoke_config("data.task=generic", "eval.max_samples=4", root=tmp_path), config_file)
    arguments = ["evaluate", "--config", str(config_file), "--adapter", str(smoke_run / "adapter")]
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 0, result.output
    assert "     base: eval_loss " in result.output and "finetuned: eval_loss " in result.output
    assert (tmp_path / "reports" / "eval.json").is_file()
    report = json.loads((tmp_path / "reports" / "eval.json").read_text())
    for model in ("base", "finetuned"):
        assert {"eval_loss", "perplexity", "exact_match", "rouge_l"} <= report[model].keys()
        assert "json_valid_rate" not in report[model]
        assert f"{model:>9}: eval_loss {report[model]['eval_loss']:.3f}, " in result.output
    assert report["run"]["task"] == "generic" and report["run"]["num_examples"] == 4
    assert "| rouge_l |" in (tmp_path / "reports" / "eval.md").read_text()


@pytest.mark.e2e
def test_report_compares_base_and_finetuned(smoke_report, smoke_config, smoke_run):
    for model in ("base", "finetuned"):
        metrics = smoke_report[model]
        assert {"eval_loss", "perplexity", "json_valid_rate", "field_accuracy", "exact_match"} <= metrics.keys()
        assert {f"field_accuracy_{field}" for field in ("intent", "order_id", "urgency")} <= metrics.keys()
        assert metrics["perplexity"] == pytest.approx(math.exp(metrics["eval_loss"]))
    assert smoke_report["finetuned"]["eval_loss"] < smoke_report["base"]["eval_loss"]
    assert smoke_report["run"]["adapter"] == str(smoke_run / "adapter")
    assert smoke_report["run"]["num_examples"] == 32

    report_dir = Path(smoke_config().eval.report_dir)
    assert json.loads((report_dir / "eval.json").read_text()) == smoke_report
    markdown = (report_dir / "eval.md").read_text()
    assert "| eval_loss |" in markdown and "| field_accuracy |" in markdown
    assert markdown.count("### Example") == 5
    for row in ("| input |", "| expected |", "| base |", "| fine-tuned |"):
        assert sum(line.startswith(row) for line in markdown.splitlines()) == 5
