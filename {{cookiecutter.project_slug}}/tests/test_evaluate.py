"""Evaluation: metrics, the loss mask, reports/eval.json + eval.md of base vs fine-tuned, and the run's own
config: a disagreeing config refused, `--other-data` logged apart, the scored rows' digest recorded."""

import hashlib
import json
import math
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from {{ cookiecutter.package_name }}.cli import app
from {{ cookiecutter.package_name }}.config import dump_config, load_config
from {{ cookiecutter.package_name }}.evaluate.baselines import BaselineError, row_digest
from {{ cookiecutter.package_name }}.evaluate.evaluate import (
    COMMAND,
    EvaluationError,
    _loss_batch,
    check_run_config,
    config_differences,
    evaluate,
)
from {{ cookiecutter.package_name }}.model.generate import JsonAnswerEnd, generate_answers
from {{ cookiecutter.package_name }}.model.load import ModelError, load_finetuned, load_tokenizer
from {{ cookiecutter.package_name }}.registry import ModelSource
from {{ cookiecutter.package_name }}.tasks.answers import parse_prediction
from {{ cookiecutter.package_name }}.tasks.metrics import extraction_row_scores, generic_row_scores, means
from {{ cookiecutter.package_name }}.tracking import client as tracking_client


def tracked(run_dir: Path) -> dict:
    return json.loads((run_dir / "tracking.json").read_text())


EXPECTED = [
    '{"intent":"track","order_id":"A1","quantity":null}',
    '{"intent":"return","order_id":null,"quantity":2}',
]


def _extraction(answers, expected):
    return means(extraction_row_scores(answers, expected))


def _generic(answers, expected):
    return means(generic_row_scores(answers, expected))


def test_extraction_metrics_score_json_fields_and_exact_match():
    answers = [
        'Sure! {"intent":"track","order_id":"A1","quantity":null} Anything else?',  # all right, chatty
        '{"intent":"return","order_id":"B7","quantity":2',  # truncated: not JSON at all
    ]
    metrics = _extraction(answers, EXPECTED)
    assert metrics["json_valid_rate"] == 0.5
    assert metrics["field_accuracy_intent"] == metrics["field_accuracy_order_id"] == 0.5
    assert metrics["field_accuracy"] == 0.5  # mean over intent, order_id, quantity
    assert metrics["exact_match"] == 0.5


def test_extraction_metrics_count_a_missing_key_as_wrong_even_when_null_expected():
    metrics = _extraction(['{"intent":"track","order_id":"A1"}'], EXPECTED[:1])
    assert metrics["field_accuracy_quantity"] == 0.0
    assert metrics["exact_match"] == 0.0


def test_generic_metrics_exact_match_and_rouge_l():
    metrics = _generic(["the cat sat", "a dog"], ["the cat sat", "the dog ran away"])
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
def test_cli_evaluate_on_other_data_on_purpose_prints_both_models_and_logs_a_separate_run(
    smoke_config, smoke_run, smoke_report, tmp_path
):
    """One evaluation, several checks. The extraction-trained smoke adapter scored as a `generic` task is
    refused without --other-data, nothing written or logged. With it: the command prints both models' metrics,
    `task.kind=generic` scores exact match and ROUGE-L instead of JSON fields (the extraction task's keys: the
    shared smoke_report), and the metrics go to a new MLflow run tagged evaluation_of=<training run>, never
    over the training run's own, with no promotion gate."""
    client = tracking_client()
    run_id = tracked(smoke_run)["run_id"]
    before = client.get_run(run_id)
    runs_before = {run.info.run_id for run in client.search_runs([before.info.experiment_id])}
    config_file = tmp_path / "smoke.yaml"
    overrides = ("task.kind=generic", "eval.max_samples=4", "tracking.enabled=true")
    dump_config(smoke_config(*overrides, root=tmp_path), config_file)
    arguments = ["evaluate", "--config", str(config_file), "--adapter", str(smoke_run / "adapter")]

    refused = CliRunner().invoke(app, arguments)
    assert refused.exit_code == 1
    assert [line for line in refused.output.splitlines() if ": the run's " in line] == [
        '  task.kind: the run\'s "extraction", given "generic"'
    ]
    assert "add --other-data" in refused.output and "Traceback" not in refused.output
    assert not (tmp_path / "reports").exists()
    assert {run.info.run_id for run in client.search_runs([before.info.experiment_id])} == runs_before

    result = CliRunner().invoke(app, [*arguments, "--other-data"])
    assert result.exit_code == 0, result.output
    assert "     base: eval_loss " in result.output and "finetuned: eval_loss " in result.output
    assert " majority: exact_match " in result.output and " few_shot: eval_loss " in result.output  # generic task
    assert "classical: n/a, a free-text task (task.kind generic) has no fields to classify" in result.output
    assert (tmp_path / "reports" / "eval.json").is_file()
    report = json.loads((tmp_path / "reports" / "eval.json").read_text())
    for model in ("base", "finetuned"):
        assert {"eval_loss", "perplexity", "exact_match", "rouge_l"} <= report[model].keys()
        assert "json_valid_rate" not in report[model]
        assert f"{model:>9}: eval_loss {report[model]['eval_loss']:.3f}, " in result.output
    assert report["run"]["task"] == "generic" and report["run"]["num_examples"] == 4
    assert report["baselines"]["classical"] == {"n/a": "a free-text task (task.kind generic) has no fields to classify"}
    assert "finetuned_minus_classical" not in report["intervals"]["differences"]
    assert report["run"]["other_data"] is True
    assert "| rouge_l |" in (tmp_path / "reports" / "eval.md").read_text()
    assert "another config than the model's run (`--other-data`)" in (tmp_path / "reports" / "eval.md").read_text()
    assert not (tmp_path / "reports" / "promotion.json").exists()  # the gate did not run

    after = client.get_run(run_id)
    assert (after.data.metrics, after.data.tags) == (before.data.metrics, before.data.tags)
    (logged,) = [run for run in client.search_runs([before.info.experiment_id]) if run.info.run_id not in runs_before]
    assert logged.data.tags["evaluation_of"] == run_id and logged.data.tags["other_data"] == "true"
    assert logged.data.metrics["finetuned.rouge_l"] == pytest.approx(report["finetuned"]["rouge_l"])
    assert logged.data.tags["evaluation.test_digest"] == report["run"]["test_digest"]
    assert logged.data.tags["evaluation.test_rows"] == "4"
    assert logged.info.status == "FINISHED"


@pytest.mark.e2e
def test_a_config_that_disagrees_with_the_run_is_refused_before_anything_is_written(
    smoke_config, smoke_run, smoke_report
):
    client = tracking_client()
    run_id, version = tracked(smoke_run)["run_id"], tracked(smoke_run)["model_version"]
    metrics_before = client.get_run(run_id).data.metrics
    eval_json = Path(smoke_config().eval.report_dir) / "eval.json"
    written = eval_json.read_bytes()
    own = load_config(smoke_run / "config.yaml")
    # Training-only and eval-only settings may differ; the task and the data may not.
    ignored = ("data.max_train_samples=8", "train.max_steps=1", "eval.max_samples=2", "lora.r=4")
    config = smoke_config("tracking.enabled=true", "task.kind=generic", "data.max_seq_length=100", *ignored)

    with pytest.raises(EvaluationError) as refused:
        evaluate(config, adapter_dir=smoke_run / "adapter")
    message = str(refused.value)
    assert message.startswith(f"{smoke_run / 'adapter'} was trained with another config than the one given")
    assert [line for line in message.splitlines() if ": the run's " in line] == [
        '  task.kind: the run\'s "extraction", given "generic"',
        f"  data.max_seq_length: the run's {own.data.max_seq_length}, given 100",
    ]
    assert f"\n  {COMMAND} evaluate --config {smoke_run / 'config.yaml'} --adapter {smoke_run / 'adapter'}\n" in message
    assert "add --other-data (the metrics go to a new MLflow run tagged evaluation_of=<its run>" in message
    assert f"`make evaluate RUN={smoke_run / 'adapter'}` without CONFIG=" in message

    uri = f"models:/{config.project}/{version}"  # compared with the config logged to its run
    with pytest.raises(EvaluationError) as by_uri:
        evaluate(config, adapter_dir=uri)
    assert "  task.kind: the run's" in str(by_uri.value)
    assert f"\n  {COMMAND} evaluate --adapter {uri}\n" in str(by_uri.value)  # its logged config is the default

    assert eval_json.read_bytes() == written
    assert client.get_run(run_id).data.metrics == metrics_before


def _copy_of_run(run_dir: Path, dest: Path) -> Path:
    """The run folder (adapter, config.yaml, tracking.json: the same MLflow run) copied, checkpoints left out."""
    import shutil

    return Path(shutil.copytree(run_dir, dest, ignore=shutil.ignore_patterns("checkpoint-*")))


@pytest.mark.e2e
def test_a_checkpoint_never_rewrites_its_runs_scores_nor_drives_the_gate(smoke_config, smoke_run, tmp_path):
    """outputs/<run>/checkpoint-<step>/ is not the run's model: refused as the run (nothing written or logged);
    with --other-data it is its own record (a new MLflow run tagged evaluation_of), no version named, no gate."""
    import shutil

    client = tracking_client()
    run_id = tracked(smoke_run)["run_id"]
    before = client.get_run(run_id)
    runs_before = {run.info.run_id for run in client.search_runs([before.info.experiment_id])}
    run_dir = _copy_of_run(smoke_run, tmp_path / "run")
    checkpoint = Path(shutil.copytree(run_dir / "adapter", run_dir / "checkpoint-2"))
    config = smoke_config("tracking.enabled=true", "eval.max_samples=2", "eval.few_shot=0", root=tmp_path)

    with pytest.raises(EvaluationError) as refused:
        evaluate(config, adapter_dir=checkpoint)
    assert str(refused.value).startswith(f"{checkpoint} is a training checkpoint, not the run's final model")
    assert f"\n  {COMMAND} evaluate --adapter {run_dir / 'adapter'}\n" in str(refused.value)
    assert "add --other-data" in str(refused.value)
    assert not (tmp_path / "reports").exists()
    assert {run.info.run_id for run in client.search_runs([before.info.experiment_id])} == runs_before

    report = evaluate(config, adapter_dir=checkpoint, other_data=True)
    assert report["run"]["adapter"] == str(checkpoint) and report["run"]["model_version"] is None
    assert not (tmp_path / "reports" / "promotion.json").exists()  # the gate did not run
    after = client.get_run(run_id)
    assert (after.data.metrics, after.data.tags) == (before.data.metrics, before.data.tags)
    (logged,) = [run for run in client.search_runs([before.info.experiment_id]) if run.info.run_id not in runs_before]
    assert logged.data.tags["evaluation_of"] == run_id


@pytest.mark.e2e
def test_a_run_tracked_elsewhere_is_refused_before_anything_is_written(smoke_config, smoke_run, tmp_path, monkeypatch):
    """tracking.json names the store the run was trained against; evaluated without MLFLOW_TRACKING_URI (the
    ./mlflow.db default), its run is not there: refused, naming the store, before reports/eval.* is touched."""
    from {{ cookiecutter.package_name }}.tracking import TrackingError

    run_dir = _copy_of_run(smoke_run, tmp_path / "run")
    record = tracked(run_dir) | {"tracking_uri": "http://127.0.0.1:9"}
    (run_dir / "tracking.json").write_text(json.dumps(record))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    config = smoke_config("tracking.enabled=true", "eval.max_samples=2", root=tmp_path)

    with pytest.raises(TrackingError) as refused:
        evaluate(config, adapter_dir=run_dir / "adapter")
    assert "was trained with MLflow tracking at http://127.0.0.1:9" in str(refused.value)
    assert f"MLFLOW_TRACKING_URI=http://127.0.0.1:9 {COMMAND} evaluate --adapter {run_dir / 'adapter'}" in str(
        refused.value
    )
    assert not (tmp_path / "reports").exists() and not (tmp_path / "mlflow.db").exists()


@pytest.mark.e2e
def test_the_scored_rows_digest_is_in_eval_json_and_on_the_training_run(smoke_config, smoke_run, smoke_report):
    from {{ cookiecutter.package_name }}.data.dataset import load_splits

    config = smoke_config()
    rows = list(load_splits(config.data, system_prompt=config.task.system_prompt)["test"]["messages"])[:32]
    canonical = json.dumps(rows, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    digest = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    assert (smoke_report["run"]["test_digest"], smoke_report["run"]["test_rows"]) == (digest, 32)
    assert smoke_report["run"]["other_data"] is False
    logged = tracking_client().get_run(tracked(smoke_run)["run_id"]).data
    tags = logged.tags
    assert (tags["evaluation.test_digest"], tags["evaluation.test_rows"]) == (digest, "32")
    # The baselines, the headline intervals and the error-kind shares are metrics of the run too.
    majority = smoke_report["baselines"]["majority"]["field_accuracy"]
    assert logged.metrics["majority.field_accuracy"] == pytest.approx(majority)
    classical = smoke_report["baselines"]["classical"]["field_accuracy"]
    assert logged.metrics["classical.field_accuracy"] == pytest.approx(classical)
    gain = smoke_report["intervals"]["differences"]["finetuned_minus_classical"]["field_accuracy"]
    assert logged.metrics["finetuned_minus_classical.field_accuracy.ci_high"] == pytest.approx(gain["high"])
    gain = smoke_report["intervals"]["differences"]["finetuned_minus_few_shot"]["field_accuracy"]
    assert logged.metrics["finetuned_minus_few_shot.field_accuracy.ci_low"] == pytest.approx(gain["low"])
    shares = smoke_report["error_analysis"]["error_kinds"]["shares"]
    assert logged.metrics["errors.missing_key_share"] == pytest.approx(shares["missing_key"])
    assert "finetuned.field_accuracy_intent.ci_low" not in logged.metrics  # per-field intervals: eval.json only


@pytest.mark.e2e
def test_cli_evaluate_without_config_takes_the_runs_own(smoke_config, smoke_run, smoke_report, monkeypatch):
    import {{ cookiecutter.package_name }}.evaluate.evaluate as evaluate_module

    seen = []
    monkeypatch.setattr(evaluate_module, "evaluate", lambda config, **kwargs: seen.append(config) or smoke_report)
    uri = f"models:/{smoke_config().project}/{tracked(smoke_run)['model_version']}"
    outputs = []
    for adapter in (str(smoke_run / "adapter"), uri):  # the run folder's config.yaml; the one logged to MLflow
        result = CliRunner().invoke(app, ["evaluate", "--adapter", adapter, "eval.max_samples=3"])
        assert result.exit_code == 0, result.output
        outputs.append(result.output)
    assert f"config: {smoke_run / 'config.yaml'}\n" in outputs[0]
    assert seen == [load_config(smoke_run / "config.yaml", ["eval.max_samples=3"])] * 2


def test_cli_evaluate_without_config_uses_smoke_yaml_for_an_adapter_without_a_run_config(tmp_path, monkeypatch):
    import {{ cookiecutter.package_name }}.evaluate.evaluate as evaluate_module

    seen = []
    report = {"base": {"eval_loss": 1.0}, "finetuned": {"eval_loss": 0.5}}
    monkeypatch.setattr(evaluate_module, "evaluate", lambda config, **kwargs: seen.append(config) or report)
    monkeypatch.chdir(Path(__file__).parents[1])  # the project root, where configs/smoke.yaml is
    adapter = tmp_path / "old" / "adapter"  # untracked, no config.yaml beside it
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text('{"base_model_name_or_path": "org/base"}')
    (adapter / "adapter_model.safetensors").write_bytes(b"")  # not read: `evaluate` is replaced
    result = CliRunner().invoke(app, ["evaluate", "--adapter", str(tmp_path / "old" / "adapter")])
    assert result.exit_code == 0, result.output
    assert "config: configs/smoke.yaml\n" in result.output
    assert seen == [load_config("configs/smoke.yaml")]


def test_an_adapter_without_a_run_config_is_not_compared(smoke_config, tmp_path):
    adapter = tmp_path / "old" / "adapter"
    source = ModelSource(adapter, tokenizer_dir=adapter, base_model="x", name="old", version=None, run_id=None)
    # Whatever the config says, there is nothing to compare it with: evaluated as before.
    check_run_config(smoke_config("task.kind=generic"), source=source, requested=str(adapter), rows=[])


def test_only_settings_that_change_what_is_scored_are_compared(smoke_config, workdir, monkeypatch):
    own = smoke_config()
    monkeypatch.chdir(workdir)
    same = smoke_config(
        "data.path=data/shop_extraction",  # the same folder, named relative to the project
        "data.max_train_samples=8",
        "train.max_steps=1",
        "lora.r=4",
        "eval.max_samples=2",
        "eval.split=validation",
        "tracking.enabled=true",
    )
    assert config_differences(same, own, compare_base_model=True) == {}
    other = smoke_config("model.base_model=elsewhere", "task.fields=[intent]", "data.format=messages")
    fields, base = own.task.fields, own.model.base_model
    assert config_differences(other, own, compare_base_model=True) == {
        "task.fields": (fields, ["intent"]),
        "data.format": ("auto", "messages"),
        "model.base_model": (base, "elsewhere"),
    }
    # A registry model names its own base model: only the task and the data count.
    assert config_differences(other, own, compare_base_model=False).keys() == {"task.fields", "data.format"}


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
    assert "--other-data" not in markdown
    assert "`/" not in markdown  # no absolute local path (the run folder lies in a temporary folder)
    assert markdown.count("### Example") == 5
    for row in ("| input |", "| expected |", "| base |", "| fine-tuned |"):
        assert sum(line.startswith(row) for line in markdown.splitlines()) == 5
    assert "| metric | majority | classical | base | few-shot | fine-tuned | fine-tuned - base |" in markdown
    order_id = next(line for line in markdown.splitlines() if line.startswith("| field_accuracy_order_id |"))
    assert order_id.split(" | ")[2] == "n/a"  # the classical column: an identifier is no class
    assert (
        "classical: TF-IDF + logistic regression per field, trained on the training split's user messages; n/a, "
        "answered with the most common training value: `order_id` (4" in markdown
    )
    assert "## Error analysis (fine-tuned)" in markdown and "## The 5 worst rows (fine-tuned)" in markdown


@pytest.mark.e2e
def test_baselines_intervals_and_error_analysis_on_the_smoke_run(smoke_report, synth_dir):
    """The four columns on the same rows: majority (most common training values; 50% field accuracy on these
    rows), few-shot (3 training examples, none a scored row), intervals for every metric and difference."""
    majority, few_shot = smoke_report["baselines"]["majority"], smoke_report["baselines"]["few_shot"]
    assert json.loads(majority["answer"]) == {
        "intent": "change", "order_id": None, "product": None, "quantity": None, "sentiment": "neutral",
        "urgency": "low",
    }  # fmt: skip
    assert majority["field_accuracy"] == pytest.approx(0.5) and majority["json_valid_rate"] == 1.0
    test_rows = [json.loads(line)["messages"] for line in (synth_dir / "test.jsonl").read_text().splitlines()]
    assert few_shot["k"] == 3 and len(few_shot["example_digests"]) == 3
    assert not set(few_shot["example_digests"]) & {row_digest(row) for row in test_rows}
    assert few_shot["prompt_tokens"]["mean"] > 200 and few_shot["prompt_tokens"]["max"] < 2048 - 64
    intervals = smoke_report["intervals"]
    assert (intervals["resamples"], intervals["rows"]) == (1000, 32)
    for column, values in [("majority", majority), ("base", smoke_report["base"]), ("few_shot", few_shot)]:
        assert set(intervals["columns"][column]) == {name for name in smoke_report["finetuned"] if "loss" not in name
                                                      and name != "perplexity"}  # fmt: skip
        for name, entry in intervals["columns"][column].items():
            assert values[name] == pytest.approx(entry["estimate"])
            assert entry["low"] <= entry["estimate"] <= entry["high"]
        gain = intervals["differences"][f"finetuned_minus_{column}"]["field_accuracy"]
        assert gain["estimate"] == pytest.approx(smoke_report["finetuned"]["field_accuracy"] - values["field_accuracy"])
    classical = smoke_report["baselines"]["classical"]  # trained on the 960 training rows, scored per row
    assert classical["model"] == "TF-IDF + logistic regression per field"
    assert classical["fields"] == {
        "intent": "fitted: 9 classes", "order_id": classical["fields"]["order_id"], "product": "fitted: 43 classes",
        "quantity": "fitted: 11 classes", "sentiment": "fitted: 3 classes", "urgency": "fitted: 3 classes",
    }  # fmt: skip
    order_ids = classical["fields"]["order_id"]  # hundreds of distinct ids: no class to learn
    assert re.fullmatch(r"n/a: \d{3} distinct values in 960 training rows, too many to learn as classes", order_ids)
    assert "field_accuracy_order_id" not in {*classical, *intervals["columns"]["classical"]}
    assert classical["json_valid_rate"] == 1.0 and classical["field_accuracy_intent"] > 0.9  # words give the intent
    gain = intervals["differences"]["finetuned_minus_classical"]["field_accuracy"]
    assert gain["estimate"] == pytest.approx(smoke_report["finetuned"]["field_accuracy"] - classical["field_accuracy"])
    kinds = smoke_report["error_analysis"]["error_kinds"]
    assert set(kinds["counts"]) == {"invalid_json", "missing_key", "extra_key", "wrong_type", "wrong_value"}
    assert sum(kinds["shares"].values()) == pytest.approx(1.0)
    assert set(smoke_report["error_analysis"]["confusion"]) == {"intent", "sentiment", "urgency"}
    assert len(smoke_report["error_analysis"]["worst_rows"]) == 5
    assert len(smoke_report["row_scores"]["finetuned"]["field_accuracy"]) == 32


@pytest.mark.e2e
def test_few_shot_settings_that_cannot_work_are_refused_before_generating(smoke_config, smoke_run, tmp_path):
    too_many = smoke_config("eval.few_shot=5000", root=tmp_path)
    with pytest.raises(BaselineError, match=r"eval.few_shot=5000 asks for 5000 training examples .* only 960 rows"):
        evaluate(too_many, adapter_dir=smoke_run / "adapter")
    too_long = smoke_config("eval.max_new_tokens=1900", root=tmp_path)  # 3 examples + 1,900 tokens > 2,048
    with pytest.raises(BaselineError, match=r"eval.few_shot=3: the longest few-shot prompt has \d+ tokens"):
        evaluate(too_long, adapter_dir=smoke_run / "adapter")
    assert not (tmp_path / "reports").exists()


@pytest.mark.parametrize(
    ("answer", "complete"),
    [
        ('{"intent": "refund", "order_id": null', False),
        ('{"intent": {"kind": "refund"}', False),  # an inner object closed, the answer's own still open
        ('{"note": "}"', False),  # a brace inside a string closes nothing
        ('Sure! {"intent": "refund"}', True),
        ('{"intent": "refund"} and then more words', True),
        ("no object here }", False),
    ],
)
def test_generation_stops_once_the_answer_holds_a_whole_json_object(tiny_model, answer, complete):
    import torch

    tokenizer = load_tokenizer(tiny_model)
    prompt = tokenizer("where is my order", add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(answer_ids) == answer  # the tiny tokenizer is byte-level: the text comes back whole
    stop = JsonAnswerEnd(tokenizer, prompt_length=len(prompt))
    assert stop(torch.tensor([prompt + answer_ids]), scores=None).tolist() == [complete]


@pytest.mark.e2e
def test_the_fine_tuned_column_scores_the_merged_model_that_serve_runs(smoke_config, smoke_run, tmp_path, monkeypatch):
    """Base and few-shot score the adapter switched off; the fine-tuned column scores the adapter merged into the
    weights (a plain model, no LoRA layers left), as `serve` loads it."""
    import importlib

    from peft import PeftModel

    evaluation = importlib.import_module("{{ cookiecutter.package_name }}.evaluate.evaluate")
    scored = []
    real_score = evaluation.score

    def recording_score(model, **kwargs):
        lora = any("lora_" in name for name, _ in model.named_parameters())
        scored.append((isinstance(model, PeftModel), lora))
        return real_score(model, **kwargs)

    monkeypatch.setattr(evaluation, "score", recording_score)
    config = smoke_config("eval.max_samples=2", "eval.few_shot=1", root=tmp_path)
    report = evaluate(config, adapter_dir=smoke_run / "adapter", other_data=True)
    assert scored == [(True, True), (True, True), (False, False)]  # base, few_shot, finetuned
    assert report["run"]["num_examples"] == 2


def test_stopping_at_the_json_end_keeps_every_score_of_the_fine_tuned_model(smoke_config, smoke_run):
    config = smoke_config("eval.max_new_tokens=64")
    tokenizer = load_tokenizer(smoke_run / "adapter")
    model = load_finetuned(config.model, adapter_dir=smoke_run / "adapter", device="cpu")
    rows = [json.loads(line)["messages"] for line in (Path(config.data.path) / "test.jsonl").open()][:16]
    common = {"tokenizer": tokenizer, "rows": rows, "eval_cfg": config.eval, "device": "cpu"}
    stopped = generate_answers(model, json_answers=True, **common)
    full = generate_answers(model, json_answers=False, **common)
    assert [parse_prediction(a) for a in stopped] == [parse_prediction(a) for a in full]
    assert all(b.startswith(a) for a, b in zip(stopped, full, strict=True))
    assert sum(map(len, stopped)) <= sum(map(len, full))
