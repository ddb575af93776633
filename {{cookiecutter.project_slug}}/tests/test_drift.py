"""`monitor drift`: request logs as the server writes them, against the training prompts."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from {{ cookiecutter.package_name }}.cli import app
from {{ cookiecutter.package_name }}.data.dataset import load_splits
from {{ cookiecutter.package_name }}.monitor.drift import (
    DriftError,
    check_drift,
    read_request_log,
    vocabulary_features,
)
from {{ cookiecutter.package_name }}.monitor.request_log import RequestLog

CONFIGS = Path(__file__).parents[1] / "configs"
REPORT_KEYS = {
    "verdict",
    "drift_share",
    "drift_threshold",
    "features",
    "vocabulary",
    "n_reference",
    "n_current",
    "reference",
    "current",
    "tokenizer",
    "notes",
    "created",
}
FEATURE_KEYS = {
    "method",
    "score",
    "score_kind",
    "threshold",
    "drifted",
    "reference_mean",
    "current_mean",
    "n_reference",
    "n_current",
}
# Long requests about anything but the shop: traffic a model fine-tuned on shop messages never saw.
TOPICS = ("the Roman empire", "quantum entanglement", "sourdough baking", "Norwegian tax law", "volcanoes", "opera")
ASKS = ("Explain its origins", "Discuss the key figures", "Describe modern debates", "List the open questions")

runner = CliRunner()


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    # Reports go to tmp_path, and no test logs to the developer's own mlflow.db or tracking server.
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


@pytest.fixture(scope="module")
def prompts(smoke_config) -> dict[str, list[list[dict[str, str]]]]:
    """Requests as clients send them (system + user): held-out test prompts, and long off-topic ones."""
    held_out = [messages[:-1] for messages in load_splits(smoke_config().data)["test"]["messages"]]
    system = held_out[0][:-1]
    shifted = []
    for number in range(60):
        asks = " ".join(f"{ASKS[(number + k) % len(ASKS)]} in detail." for k in range(6 + number % 10))
        text = f"Forget the shop. Write a long essay about {TOPICS[number % len(TOPICS)]}. {asks}"
        shifted.append([*system, {"role": "user", "content": text}])
    return {"held_out": held_out, "shifted": shifted}


def write_log(path: Path, prompts: list, tokenizer, *, log_texts: bool = True) -> Path:
    """A request log written through the server's own RequestLog: one answered request per prompt."""
    log = RequestLog(path, log_texts=log_texts)
    for number, messages in enumerate(prompts):
        encoded = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_dict=True)
        record = {
            "request_id": f"req-{number}",
            "model": "shop",
            "model_version": "test",
            "status": 200,
            "stream": False,
            "prompt_tokens": len(encoded["input_ids"]),
            "completion_tokens": 20,
            "prompt_chars": len(messages[-1]["content"]),
            "latency_s": 0.05,
            "finish_reason": "stop",
        }
        log.write(record, prompt=messages[-1]["content"], response="{}")
    log.close()
    return path


def run_drift(log: Path, workdir: Path, tiny_model: Path, *overrides: str):
    paths = [f"data.path={workdir / 'data' / 'shop_extraction'}", f"model.base_model={tiny_model}"]
    arguments = ["monitor", "drift", "--current", str(log), "--config", str(CONFIGS / "smoke.yaml"), "--out", "reports"]
    return runner.invoke(app, [*arguments, *paths, "train.output_dir=outputs", *overrides])


def test_held_out_traffic_is_no_drift_and_reports_hold_the_documented_keys(
    tmp_path, prompts, tokenizer, workdir, tiny_model
):
    log = write_log(tmp_path / "requests.jsonl", prompts["held_out"], tokenizer)
    result = run_drift(log, workdir, tiny_model)
    assert result.exit_code == 0, result.output
    report = json.loads(Path("reports/drift.json").read_text(encoding="utf-8"))
    assert set(report) == REPORT_KEYS
    assert report["verdict"] == "no_drift"
    assert report["n_current"] == len(prompts["held_out"]) and report["n_reference"] == 960
    assert set(report["features"]) == {"prompt_chars", "prompt_tokens", "oov_rate"}
    for name, feature in report["features"].items():
        assert set(feature) == FEATURE_KEYS
        assert not feature["drifted"], (name, feature)
        assert feature["score_kind"] == "p_value" and feature["score"] >= feature["threshold"]
    assert report["tokenizer"] == str(tiny_model) and report["notes"] == []
    assert "Prompt drift: no drift" in Path("reports/drift.html").read_text(encoding="utf-8")
    assert "MLflow: no store set up" in result.output


def test_shifted_traffic_is_drift_exits_1_and_is_logged_to_mlflow(
    tmp_path, monkeypatch, prompts, tokenizer, workdir, tiny_model, smoke_config
):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    log = write_log(tmp_path / "requests.jsonl", prompts["shifted"], tokenizer)
    result = run_drift(log, workdir, tiny_model)
    assert result.exit_code == 1, result.output
    report = json.loads(Path("reports/drift.json").read_text(encoding="utf-8"))
    assert report["verdict"] == "drift" and report["drift_share"] == 1.0
    assert all(feature["drifted"] for feature in report["features"].values())
    vocabulary = report["vocabulary"]
    assert vocabulary["current_oov_rate"] > 5 * vocabulary["reference_oov_rate"]
    assert "essay" in dict(vocabulary["top_unseen_words"])
    assert "Prompt drift: drift" in Path("reports/drift.html").read_text(encoding="utf-8")

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(smoke_config().project)
    [run] = client.search_runs([experiment.experiment_id])
    assert run.data.tags["kind"] == "drift"
    assert run.data.metrics["drift_share"] == 1.0 and run.data.metrics["drift_detected"] == 1.0
    assert run.data.metrics["oov_rate_drifted"] == 1.0
    assert {artifact.path for artifact in client.list_artifacts(run.info.run_id, "drift")} == {
        "drift/drift.json",
        "drift/drift.html",
    }


def test_an_unreachable_tracking_server_keeps_the_verdict_and_the_reports(
    tmp_path, monkeypatch, prompts, tokenizer, workdir, tiny_model
):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # the discard port: nothing answers
    log = write_log(tmp_path / "requests.jsonl", prompts["shifted"], tokenizer)
    result = run_drift(log, workdir, tiny_model)
    assert result.exit_code == 1, result.output  # still the drift verdict, not a crash
    assert "warning: MLflow logging failed: MLflow tracking server http://127.0.0.1:9 is unreachable" in result.output
    assert "The drift reports were written; nothing was logged to MLflow." in result.output
    assert "Nothing was trained" not in result.output
    assert json.loads(Path("reports/drift.json").read_text(encoding="utf-8"))["verdict"] == "drift"


@pytest.mark.parametrize(("traffic", "verdict"), [("held_out", "no_drift"), ("shifted", "drift")])
def test_numbers_only_logs_compare_lengths_and_tokens(tmp_path, prompts, tokenizer, smoke_config, traffic, verdict):
    log = write_log(tmp_path / "requests.jsonl", prompts[traffic], tokenizer, log_texts=False)
    assert "prompt" not in read_request_log(log)[0]
    report, _ = check_drift(smoke_config(), current=log, tokenizer=tokenizer)
    assert report["verdict"] == verdict
    assert set(report["features"]) == {"prompt_chars", "prompt_tokens"} and report["vocabulary"] is None
    assert any("no prompt texts" in note for note in report["notes"])


def test_without_the_tokenizer_characters_and_vocabulary_are_compared(tmp_path, prompts, tokenizer, smoke_config):
    log = write_log(tmp_path / "requests.jsonl", prompts["shifted"], tokenizer)
    report, _ = check_drift(smoke_config(), current=log, tokenizer=None)
    assert set(report["features"]) == {"prompt_chars", "oov_rate"} and report["verdict"] == "drift"
    assert any("token counts not compared" in note for note in report["notes"])


def test_a_feature_few_requests_have_is_left_out_with_a_note(tmp_path, prompts, tokenizer, smoke_config):
    log = write_log(tmp_path / "requests.jsonl", prompts["held_out"], tokenizer)
    records = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
    for record in records[10:]:
        record["prompt_tokens"] = None  # what the server logs for a request it could not tokenize
    log.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    report, _ = check_drift(smoke_config(), current=log, tokenizer=tokenizer)
    assert set(report["features"]) == {"prompt_chars", "oov_rate"} and report["verdict"] == "no_drift"
    assert "prompt_tokens: only 10 request(s) have a value (< 50): not compared" in report["notes"]


def test_too_few_requests_exit_2_with_a_message(tmp_path, prompts, tokenizer, workdir, tiny_model):
    log = write_log(tmp_path / "requests.jsonl", prompts["held_out"][:10], tokenizer)
    result = run_drift(log, workdir, tiny_model)
    assert result.exit_code == 2
    assert "10 request(s), fewer than monitor.min_requests=50" in result.output
    assert "Traceback" not in result.output and not Path("reports").exists()


def test_a_missing_log_exits_2(workdir, tiny_model):
    result = run_drift(Path("nowhere.jsonl"), workdir, tiny_model)
    assert result.exit_code == 2 and "nowhere.jsonl: request log not found" in result.output


def test_request_log_reading_names_bad_lines_and_skips_a_cut_off_last_line(tmp_path):
    log = tmp_path / "requests.jsonl"
    log.write_text('{"prompt_chars": 3}\n{"prompt_chars": 4}\n{"prompt_ch', encoding="utf-8")
    assert [record["prompt_chars"] for record in read_request_log(log)] == [3, 4]
    assert read_request_log(log, max_requests=1) == [{"prompt_chars": 4}]
    log.write_text('{"prompt_chars": 3}\nnot json\n{"prompt_chars": 4}\n', encoding="utf-8")
    with pytest.raises(DriftError, match=r"requests.jsonl:2: not valid JSON"):
        read_request_log(log)


def test_out_of_vocabulary_rates_use_leave_one_out_for_the_training_prompts():
    result = vocabulary_features(["red shoe", "red hat", "blue shoe 42"], ["red cat", "RED SHOE", "123"])
    # hat and blue occur in one training prompt only, so that prompt's leave-one-out vocabulary lacks them.
    assert result["rates"] == ([0.0, 0.5, 0.5], [0.5, 0.0])  # "123" has no words, so no rate
    assert result["top_unseen_words"] == [["cat", 1]]
    assert result["vocabulary_size"] == 4 and result["current_oov_rate"] == 0.25
