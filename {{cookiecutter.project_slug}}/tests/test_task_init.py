"""`task init`: a user's own data file becomes a config whose task section describes that data."""

import csv
import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from {{ cookiecutter.package_name }}.cli import app
from {{ cookiecutter.package_name }}.config import load_config
from {{ cookiecutter.package_name }}.data.dataset import validate_data
from {{ cookiecutter.package_name }}.data.task_init import init_task

CONFIGS = Path(__file__).parents[1] / "configs"
CATEGORIES = ("billing", "technical", "account", "shipping")
PRIORITIES = ("low", "medium", "high")
PROPOSED_PROMPT = "Reply with JSON only. Keys: category, priority."
runner = CliRunner()


def tickets(n=120):
    """A user's ticket-triage rows in instruction form; every tenth answer also carries a rare `note`."""
    rows = []
    for i in range(n):
        answer = {"category": CATEGORIES[i % 4], "priority": PRIORITIES[i % 3]}
        if i % 10 == 0:
            answer["note"] = "repeat customer"
        text = f"Ticket {i}: my {CATEGORIES[i % 4]} problem number {i} needs help"
        rows.append({"instruction": "Triage this support ticket.", "input": text, "output": json.dumps(answer)})
    return rows


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def write_csv(path, rows):
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project folder (the working directory) holding configs/default.yaml and a data/ folder."""
    (tmp_path / "configs").mkdir()
    for name in ("default.yaml", "smoke.yaml"):
        shutil.copy(CONFIGS / name, tmp_path / "configs" / name)
    (tmp_path / "data").mkdir()
    monkeypatch.chdir(tmp_path)
    return tmp_path


class WordTokenizer:
    """One token per word (plus one per message for the template), like a chat tokenizer's mapping."""

    def apply_chat_template(self, messages, tokenize=True, return_dict=True):
        return {"input_ids": [0] * sum(len(message["content"].split()) + 1 for message in messages)}

    def __call__(self, text):
        return {"input_ids": [0] * len(text.split())}


@pytest.mark.parametrize("write", [write_jsonl, write_csv], ids=["jsonl", "csv"])
def test_instruction_file_with_json_answers_becomes_an_extraction_task(project, write):
    data = write(project / "data" / f"tickets.{'jsonl' if write is write_jsonl else 'csv'}", tickets())
    result = runner.invoke(app, ["task", "init", f"data/{data.name}", "--name", "Ticket triage"])
    assert result.exit_code == 0, result.output

    written = project / "configs" / "ticket-triage.yaml"
    config = load_config(written)
    task = config.task
    assert (task.name, task.description, task.kind) == ("Ticket triage", "", "extraction")
    assert task.fields == ["category", "priority"]  # `note` is in 10% of the answers: not a field
    assert task.system_prompt == PROPOSED_PROMPT
    assert (config.data.path, config.data.format) == (f"data/{data.name}", "instruction")
    # 120 rows split 96 / 12 / 12; 96 rows / batch 8 = 12 steps: validation loss every 4 steps.
    assert (config.train.eval_steps, config.train.save_steps, config.eval.max_samples) == (4, 4, None)
    default = load_config(project / "configs" / "default.yaml")
    for section in ("model", "lora", "tracking", "report"):
        assert getattr(config, section) == getattr(default, section), section
    assert validate_data(config.data, task=config.task) == []  # the written config fits its data

    assert "# write one sentence for people here" in written.read_text(encoding="utf-8")
    lines = result.output.splitlines()
    assert lines[:4] == [
        f"read data/{data.name}: 120 rows (`instruction` / `input` / `output`); split 96 train, 12 validation, 12 test",
        "kind: extraction (100% of the answers are JSON objects; extraction needs 90%)",
        "fields: category, priority (answers holding each key: category 100%, priority 100%, note 10%)",
        f'system prompt: "{PROPOSED_PROMPT}" (proposed: the rows have no shared one)',
    ]
    assert "wrote configs/ticket-triage.yaml. Check its task section:" in lines
    assert "  - task.description is empty: write one sentence (what goes in, what comes out)" in lines
    assert "then: make data train evaluate CONFIG=configs/ticket-triage.yaml" in lines
    assert "  (the test split has 12 rows: small differences in scores are noise)" in lines


def test_lengths_are_measured_with_the_base_models_tokenizer(project):
    write_jsonl(project / "data" / "tickets.jsonl", tickets())
    asked = []

    def load_tokenizer(base_model, revision):
        asked.append(base_model)
        return WordTokenizer()

    out, lines = init_task("data/tickets.jsonl", out="configs/t.yaml", load_tokenizer=load_tokenizer)
    config = load_config(out)
    assert asked == [load_config(project / "configs" / "default.yaml").model.base_model]
    # Longest: the proposed prompt (7 words), instruction + input (13), an answer with a note (7), each message
    # +1: 30 tokens; x1.1 rounded up to a multiple of 64.
    assert config.data.max_seq_length == 64
    assert "data.max_seq_length: 64 (the longest example is 30 tokens)" in lines
    assert config.eval.max_new_tokens == 16  # longest answer 7 words x 1.25, rounded up to a multiple of 16
    assert config.task.name == "Tickets"  # from the file name when no --name is given


def test_text_answers_make_a_generic_task(project):
    rows = [{"prompt": f"Summarise ticket {i}: the app crashes", "completion": f"App crash {i}."} for i in range(80)]
    write_jsonl(project / "data" / "summaries.jsonl", rows)
    result = runner.invoke(app, ["task", "init", "data/summaries.jsonl"])
    assert result.exit_code == 0, result.output
    config = load_config(project / "configs" / "summaries.yaml")
    assert (config.task.kind, config.task.fields, config.task.system_prompt) == ("generic", [], None)
    assert config.data.format == "prompt_completion"
    assert config.tracking.promotion_metric == "finetuned.rouge_l"  # field accuracy exists only for extraction
    assert "kind: generic (0% of the answers are JSON objects; extraction needs 90%)" in result.output
    assert "system prompt: null (none: the rows have no shared system message)" in result.output


def test_messages_rows_keep_their_shared_system_message(project):
    system = "Classify the ticket. Answer in JSON."
    rows = [
        {
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": f"ticket {i}"},
                {"role": "assistant", "content": json.dumps({"category": CATEGORIES[i % 4]})},
            ]
        }
        for i in range(60)
    ]
    write_jsonl(project / "data" / "chat.jsonl", rows)
    out, lines = init_task("data/chat.jsonl", name="Chat triage")
    config = load_config(out)
    assert out == Path("configs/chat-triage.yaml")
    assert (config.task.kind, config.task.fields, config.task.system_prompt) == ("extraction", ["category"], system)
    assert config.data.format == "messages"
    assert f'system prompt: "{system}" (the system message every row starts with)' in lines
    # No tokenizer: ~3 characters a token + 5 a message; the longest row (`technical`) is 17 + 8 + 13 tokens.
    assert (config.data.max_seq_length, config.eval.max_new_tokens) == (64, 16)
    assert "data.max_seq_length: 64 (the longest example is about 38 tokens, estimated from its characters)" in lines


@pytest.mark.parametrize(
    ("name", "content", "fragment"),
    [
        ("missing.jsonl", None, "data/missing.jsonl: no such file or folder"),
        ("empty.jsonl", b"", "data/empty.jsonl: no usable rows (the file is empty)"),
        ("latin1.jsonl", '{"prompt": "café"}\n'.encode("latin-1"), "data/latin1.jsonl: not UTF-8 text"),
        (
            "columns.csv",
            b"text,label\nhello,x\n",
            "data/columns.csv: no usable rows: data/columns.csv:2: missing columns: found text, label",
        ),
        ("notes.txt", b"hi", "data/notes.txt: unknown file type '.txt'"),
    ],
)
def test_unreadable_data_names_the_file_and_writes_nothing(project, name, content, fragment):
    path = Path("data") / name
    if content is not None:
        path.write_bytes(content)
    result = runner.invoke(app, ["task", "init", str(path)])
    assert result.exit_code == 2
    assert fragment in result.output and "error: " in result.output and "Traceback" not in result.output
    assert sorted(path.name for path in (project / "configs").iterdir()) == ["default.yaml", "smoke.yaml"]


def test_an_existing_config_is_kept_unless_forced(project):
    write_jsonl(project / "data" / "tickets.jsonl", tickets(60))
    target = project / "configs" / "mine.yaml"
    target.write_text("project: mine\n", encoding="utf-8")
    refused = runner.invoke(app, ["task", "init", "data/tickets.jsonl", "--out", "configs/mine.yaml"])
    assert refused.exit_code == 2 and "configs/mine.yaml exists; pass --force" in refused.output
    assert target.read_text(encoding="utf-8") == "project: mine\n"

    forced = runner.invoke(app, ["task", "init", "data/tickets.jsonl", "--out", "configs/mine.yaml", "--force"])
    assert forced.exit_code == 0, forced.output
    assert load_config(target).task.fields == ["category", "priority"]


def test_the_task_gets_its_own_registered_model_and_an_offline_smoke_config(project):
    write_jsonl(project / "data" / "tickets.jsonl", tickets())
    result = runner.invoke(app, ["task", "init", "data/tickets.jsonl", "--name", "Ticket triage"])
    assert result.exit_code == 0, result.output
    default, smoke = load_config(project / "configs" / "default.yaml"), load_config(project / "configs" / "smoke.yaml")
    config = load_config(project / "configs" / "ticket-triage.yaml")
    # Its own registered model: the example's champion never blocks the first run of this task.
    assert config.project == "ticket-triage" != default.project
    assert (
        "registered model: ticket-triage (this task's own; its first evaluated run becomes its champion)"
        in result.output.splitlines()
    )

    tiny = load_config(project / "configs" / "ticket-triage-smoke.yaml")
    assert tiny.project == "ticket-triage-smoke"  # the tiny model's runs never compete with the real model's
    assert (tiny.task, tiny.data.path) == (config.task, config.data.path)
    assert (tiny.model.base_model, tiny.model.build_tiny) == ("models/tiny-ticket-triage", True)
    # 96 training rows / batch 16 = 6 steps an epoch; 10 epochs at the smoke's high learning rate.
    assert (tiny.train.max_steps, tiny.train.learning_rate) == (60, smoke.train.learning_rate)
    assert (tiny.train.eval_steps, tiny.train.save_steps, tiny.eval.max_samples) == (20, 20, None)
    assert tiny.tracking.promotion_metric == smoke.tracking.promotion_metric
    assert validate_data(tiny.data, task=tiny.task) == []
    assert "then: make data train evaluate CONFIG=configs/ticket-triage.yaml" in result.output
    assert "offline first: make data train evaluate CONFIG=configs/ticket-triage-smoke.yaml" in result.output

    for path in ("configs/ticket-triage.yaml", "configs/ticket-triage-smoke.yaml"):
        text = (project / path).read_text(encoding="utf-8")
        assert text.startswith(f"# make data train evaluate CONFIG={path}\n")
        # The example's measurements stay in the example's configs, never in the user's.
        for figure in ("0.925", "0.978", "18 s", "tokens/s", "1.7x", "3.5 s", "960"):
            assert figure not in text, (path, figure)


def test_a_task_named_like_the_project_gets_a_registered_model_of_its_own(project):
    write_jsonl(project / "data" / "tickets.jsonl", tickets(60))
    default = load_config(project / "configs" / "default.yaml")
    out, _ = init_task("data/tickets.jsonl", name=default.project)
    assert load_config(out).project == f"{default.project}-task"
