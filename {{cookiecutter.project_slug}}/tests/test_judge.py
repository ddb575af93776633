"""The LLM judge (judge.py) against a fake OpenAI-compatible server started here on 127.0.0.1, with canned
answers: scores read, failures counted (never scored), an unreachable endpoint refused before scoring, and
the API key sent as a bearer token but never written."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from {{ cookiecutter.package_name }}.config import JudgeConfig
from {{ cookiecutter.package_name }}.evaluate.judge import (
    JudgeError,
    check_reachable,
    judge_answers,
    parse_score,
    rubric_digest,
)

KEY = "sk-test-0123456789-secret"
# The judge's canned reply per answer text: a score, chatter without a score, an out-of-range score, or a 500.
CANNED = {
    "good": '{"score": 5, "reason": "same meaning"}',
    "chatty": "I think this answer is quite good overall.",
    "too high": '{"score": 9}',
    "so-so": 'Sure. {"score": 3, "reason": "partly right"}',
}


SEEN: list[dict] = []  # what the fake judge received: authorization header and body


class FakeJudge(BaseHTTPRequestHandler):
    def do_GET(self):
        self._reply(200, {"object": "list", "data": [{"id": "fake-judge", "object": "model"}]})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        SEEN.append({"authorization": self.headers.get("Authorization"), "body": body})
        answer = body["messages"][-1]["content"].rpartition("ANSWER TO SCORE:\n")[2]
        if answer not in CANNED:
            self._reply(500, {"error": {"message": "judge overloaded"}})
            return
        message = {"role": "assistant", "content": CANNED[answer]}
        self._reply(200, {"id": "x", "object": "chat.completion", "choices": [{"index": 0, "message": message}]})

    def _reply(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):  # keep the test output quiet
        pass


@pytest.fixture(scope="module")
def judge_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeJudge)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def rows(*questions: str) -> list[list[dict[str, str]]]:
    return [[{"role": "user", "content": q}, {"role": "assistant", "content": f"reference {q}"}] for q in questions]


def test_each_answer_is_scored_and_failures_are_counted_never_scored(judge_url, monkeypatch):
    monkeypatch.setenv("JUDGE_API_KEY", KEY)
    SEEN.clear()
    judge = JudgeConfig(base_url=judge_url, model="fake-judge")
    answers = ["good", "chatty", "too high", "so-so", "crash"]
    result = judge_answers(judge, rows=rows("a", "b", "c", "d", "e"), answers=answers)
    assert result["scores"] == [5.0, None, None, 3.0, None]
    assert (result["mean_score"], result["judge_failures"]) == (4.0, 3)
    assert (result["model"], result["base_url"]) == ("fake-judge", judge_url)
    assert result["rubric_sha256"] == rubric_digest(judge.rubric) and len(result["rubric_sha256"]) == 64
    assert [row["raw"] for row in result["rows"][:4]] == [CANNED[a] for a in answers[:4]]
    assert result["rows"][4]["raw"] is None and result["rows"][4]["error"].startswith("HTTPStatusError: ")
    assert result["rows"][1]["error"] == "no score between 1 and 5 in the answer"
    sent = SEEN[0]
    assert sent["authorization"] == f"Bearer {KEY}"
    assert sent["body"]["model"] == "fake-judge" and sent["body"]["temperature"] == 0
    assert sent["body"]["messages"][0] == {"role": "system", "content": judge.rubric}
    expected_prompt = "QUESTION:\na\n\nREFERENCE ANSWER:\nreference a\n\nANSWER TO SCORE:\ngood"
    assert sent["body"]["messages"][1]["content"] == expected_prompt
    assert KEY not in json.dumps(result)


def test_scores_are_read_only_from_a_json_score_in_range():
    assert parse_score('{"score": 4}') == 4.0
    assert parse_score('Here: {"score": 2.5, "reason": "x"}') == 2.5
    for raw in ('{"score": 0}', '{"score": "5"}', '{"score": true}', "5/5", '{"grade": 5}', ""):
        assert parse_score(raw) is None, raw


def test_an_unreachable_judge_is_refused_naming_the_url(free_port):
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(JudgeError, match=rf"eval.judge.base_url={url}: the judge endpoint does not answer"):
        check_reachable(JudgeConfig(base_url=url, model="m", timeout_s=2))


@pytest.mark.e2e
def test_evaluate_with_a_judge_keeps_raw_answers_and_never_writes_the_key(
    judge_url, smoke_config, smoke_run, smoke_report, tmp_path, monkeypatch, free_port
):
    """A generic-task evaluation of the smoke adapter (on purpose, --other-data) judged by the fake server:
    eval.json holds the judge's record, and neither the reports nor the MLflow run hold the key."""
    from {{ cookiecutter.package_name }}.evaluate.evaluate import evaluate
    from {{ cookiecutter.package_name }}.tracking import client

    monkeypatch.setenv("JUDGE_API_KEY", KEY)
    overrides = ("task.kind=generic", "eval.max_samples=2", "eval.few_shot=0", "tracking.enabled=true")
    dead = smoke_config(*overrides, f"eval.judge.base_url=http://127.0.0.1:{free_port()}/v1", root=tmp_path)
    with pytest.raises(JudgeError, match="the judge endpoint does not answer"):
        evaluate(dead, adapter_dir=smoke_run / "adapter", other_data=True)
    assert not (tmp_path / "reports").exists()  # refused before anything was scored or written

    config = smoke_config(*overrides, f"eval.judge.base_url={judge_url}", "eval.judge.model=fake-judge", root=tmp_path)
    report = evaluate(config, adapter_dir=smoke_run / "adapter", other_data=True)
    for column in ("base", "finetuned"):
        judged = report["judge"][column]
        # The smoke model's answers are none of the canned texts: the fake judge fails every row (HTTP 500).
        assert judged["judge_failures"] == 2 and judged["scores"] == [None, None] and judged["mean_score"] is None
    written = "".join(path.read_text() for path in (tmp_path / "reports").iterdir())
    assert '"rubric_sha256"' in written and KEY not in written
    run = client().search_runs(
        [client().get_run(report["run"]["mlflow_run_id"]).info.experiment_id],
        filter_string=f"tags.evaluation_of = '{report['run']['mlflow_run_id']}'",
        order_by=["attributes.start_time DESC"],
    )[0]
    assert run.data.metrics["judge.finetuned.failures"] == 2
    logged = client().download_artifacts(run.info.run_id, "evaluation/eval.json", str(tmp_path))
    text = Path(logged).read_text()
    assert '"judge_failures": 2' in text and KEY not in text
    assert KEY not in json.dumps([run.data.params, run.data.tags, run.data.metrics])
