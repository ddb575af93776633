"""Data stage: every supported form loads into `messages`; every bad input names its file and line."""

import csv
import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from {{ cookiecutter.package_name }}.cli import app
from {{ cookiecutter.package_name }}.config import DataConfig, TaskConfig
from {{ cookiecutter.package_name }}.data.dataset import (
    DataError,
    Problem,
    load_splits,
    shared_system_prompt,
    validate_data,
    with_recorded_system_prompt,
)
from {{ cookiecutter.package_name }}.tasks.answers import parse_prediction


def chat(user, answer="ok", system=None):
    messages = [{"role": "system", "content": system}] if system else []
    return {"messages": [*messages, {"role": "user", "content": user}, {"role": "assistant", "content": answer}]}


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def chat_folder(root, train=8, validation=2, test=2):
    """A valid messages dataset with distinct prompts in each split."""
    for split, count in {"train": train, "validation": validation, "test": test}.items():
        write_jsonl(root / f"{split}.jsonl", [chat(f"{split} question {i}", f"answer {i}") for i in range(count)])
    return root


class WordTokenizer:
    """Stands in for a chat tokenizer: one token per word, returned like transformers 5 (a mapping)."""

    def apply_chat_template(self, messages, tokenize=True, return_dict=True):
        assert tokenize and return_dict  # counted as TRL tokenizes for training
        return {"input_ids": [0] * sum(len(message["content"].split()) for message in messages)}


def problems_at(problems, path, line):
    return [problem for problem in problems if (problem.file, problem.line) == (str(path), line)]


# --- supported forms ---------------------------------------------------------------------------


def test_shipped_example_loads_and_validates_clean(synth_dir):
    splits = load_splits(DataConfig(path=str(synth_dir)))
    assert {name: len(rows) for name, rows in splits.items()} == {"train": 960, "validation": 120, "test": 120}
    assert all(rows.column_names == ["messages"] for rows in splits.values())
    assert [m["role"] for m in splits["train"][0]["messages"]] == ["system", "user", "assistant"]
    assert validate_data(DataConfig(path=str(synth_dir)), tokenizer=WordTokenizer()) == []


def test_messages_jsonl_folder_with_valid_alias(tmp_path):
    chat_folder(tmp_path, validation=0)
    write_jsonl(tmp_path / "valid.jsonl", [chat("from the valid file")])
    (tmp_path / "validation.jsonl").unlink()
    splits = load_splits(DataConfig(path=str(tmp_path), max_train_samples=5))
    assert len(splits["train"]) == 5  # max_train_samples keeps the first rows
    assert splits["train"][0]["messages"][0] == {"role": "user", "content": "train question 0"}
    assert splits["validation"]["messages"] == [chat("from the valid file")["messages"]]


def test_prompt_completion_csv_gets_the_system_prompt(tmp_path):
    for split in ("train", "validation", "test"):
        pd.DataFrame({"prompt": [f"{split} p{i}" for i in range(3)], "completion": ["c"] * 3}).to_csv(
            tmp_path / f"{split}.csv", index=False
        )
    splits = load_splits(DataConfig(path=str(tmp_path)), system_prompt="Be brief.")
    assert splits["test"][1]["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "test p1"},
        {"role": "assistant", "content": "c"},
    ]


def test_instruction_parquet_with_optional_input(tmp_path):
    frame = pd.DataFrame(
        {"instruction": [f"Translate {i}" for i in range(10)], "input": ["bonjour", *[None] * 9], "output": ["hi"] * 10}
    )
    frame.to_parquet(tmp_path / "data.parquet")
    splits = load_splits(DataConfig(path=str(tmp_path / "data.parquet")))
    users = [row["messages"][0]["content"] for name in splits for row in splits[name]]
    assert "Translate 0\n\nbonjour" in users and "Translate 5" in users
    assert all(len(row["messages"]) == 2 for name in splits for row in splits[name])


def test_single_file_is_split_reproducibly_without_overlap(tmp_path):
    path = write_jsonl(tmp_path / "all.jsonl", [chat(f"question {i}") for i in range(50)])
    cfg = DataConfig(path=str(path), validation_fraction=0.1, test_fraction=0.2)
    splits = load_splits(cfg)
    assert {name: len(rows) for name, rows in splits.items()} == {"train": 35, "validation": 5, "test": 10}
    users = [row["messages"][0]["content"] for name in splits for row in splits[name]]
    assert sorted(users) == sorted(f"question {i}" for i in range(50))
    assert load_splits(cfg)["test"]["messages"] == splits["test"]["messages"]


def test_hub_dataset_id_goes_through_load_dataset(tmp_path, monkeypatch):
    import datasets

    local = chat_folder(tmp_path / "hub_copy", validation=0)
    (local / "validation.jsonl").unlink()
    calls = []

    def offline_load_dataset(dataset_id, *args, **kwargs):
        calls.append(dataset_id)  # the real loader, pointed at a local folder instead of the hub
        return real_load_dataset(str(local), *args, **kwargs)

    real_load_dataset = datasets.load_dataset
    monkeypatch.setattr(datasets, "load_dataset", offline_load_dataset)
    splits = load_splits(DataConfig(path="acme/shop-messages"))
    assert calls == ["acme/shop-messages"]
    assert len(splits["test"]) == 2 and len(splits["validation"]) >= 1  # validation split off train
    assert splits["test"][0]["messages"] == chat("test question 0", "answer 0")["messages"]


# --- bad input: one message naming file and line ---------------------------------------------


def load_error(path, **settings):
    with pytest.raises(DataError) as caught:
        load_splits(DataConfig(path=str(path), **settings))
    return str(caught.value)


def test_missing_path_says_it_is_not_a_hub_id(tmp_path):
    message = load_error(tmp_path / "nowhere" / "train.jsonl")
    assert f"{tmp_path / 'nowhere' / 'train.jsonl'}: no such file or folder" in message
    assert "not a hub dataset id" in message


def test_unreachable_hub_id_is_one_clear_error(monkeypatch):
    import datasets

    def no_network(dataset_id, *args, **kwargs):
        raise ConnectionError("offline mode is enabled")

    monkeypatch.setattr(datasets, "load_dataset", no_network)
    message = load_error("nobody/missing-dataset")
    assert message.startswith("nobody/missing-dataset: not a local file or folder, and loading it as a hub dataset")
    assert "offline mode is enabled" in message


def test_unknown_extension(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text("hello\n")
    assert load_error(path) == f"{path}: unknown file type '.txt'; use one of .jsonl, .csv, .parquet"


def test_unreadable_files_name_the_file(tmp_path):
    latin1 = tmp_path / "latin1" / "train.jsonl"
    latin1.parent.mkdir()
    latin1.write_bytes('{"prompt": "café", "completion": "ok"}\n'.encode("latin-1"))
    assert load_error(latin1).startswith(f"{latin1}: not UTF-8 text")
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet at all")
    assert load_error(broken).startswith(f"{broken}: cannot read as Parquet")


def test_invalid_json_line_3(tmp_path):
    path = chat_folder(tmp_path) / "train.jsonl"
    lines = path.read_text().splitlines()
    lines[2] = '{"messages": [}'
    path.write_text("\n".join(lines) + "\n")
    assert load_error(tmp_path).startswith(f"{path}:3: invalid JSON: ")


def test_missing_columns_list_found_and_accepted(tmp_path):
    path = chat_folder(tmp_path) / "test.jsonl"
    write_jsonl(path, [chat("fine"), {"question": "q", "answer": "a"}])
    message = load_error(tmp_path)
    assert message.startswith(f"{path}:2: missing columns: found question, answer; expected `messages`")
    assert "`prompt` + `completion`" in message


def test_empty_field_in_csv_counts_header_and_multiline_cells(tmp_path):
    path = tmp_path / "train.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerows([["prompt", "completion"], ["two\nlines", "a"], ["q", "  "], ["r", "b"]])
    # line 1 header, lines 2-3 the first row, line 4 the empty completion
    assert load_error(path).startswith(f"{path}:4: empty `completion`")


def test_empty_field_in_parquet_names_the_row(tmp_path):
    path = tmp_path / "train.parquet"
    pd.DataFrame({"prompt": ["a", "", "c", "d"], "completion": ["1", "2", "3", "4"]}).to_parquet(path)
    assert load_error(path).startswith(f"{path}:2: empty `prompt`")


ANSWER = {"role": "assistant", "content": "a"}


@pytest.mark.parametrize(
    ("messages", "expected"),
    [
        ([{"role": "bot", "content": "hi"}, ANSWER], "message 1 has unknown role 'bot'"),
        ([{"role": "user", "content": "hi"}], "the last message must be the assistant's answer"),
        ([{"role": "user", "content": ""}, ANSWER], "message 1 (user) has empty content"),
    ],
)
def test_bad_messages(tmp_path, messages, expected):
    path = chat_folder(tmp_path) / "validation.jsonl"
    write_jsonl(path, [chat("fine"), {"messages": messages}])
    assert load_error(tmp_path).startswith(f"{path}:2: {expected}")


def test_empty_split(tmp_path):
    chat_folder(tmp_path)
    (tmp_path / "test.jsonl").write_text("")
    assert load_error(tmp_path).startswith(f"{tmp_path}: the test split has no usable rows")


# --- validate: all problems at once --------------------------------------------------------------


def test_validate_reports_duplicates_leakage_and_length_with_lines(tmp_path):
    train = write_jsonl(
        tmp_path / "train.jsonl",
        [chat("a"), chat("b"), chat("a", "other answer"), chat("c"), chat("word " * 30)],
    )
    test = write_jsonl(tmp_path / "test.jsonl", [chat("t"), chat("c")])
    write_jsonl(tmp_path / "validation.jsonl", [chat("v"), {"prompt": "p", "completion": ""}])
    problems = validate_data(DataConfig(path=str(tmp_path), max_seq_length=20), tokenizer=WordTokenizer())

    duplicates = [str(problem) for problem in problems_at(problems, train, 3)]
    assert duplicates == [f"{train}:3: duplicate prompt (same as line 1); remove one"]
    assert "leakage" in problems_at(problems, test, 2)[0].message
    assert f"{train}:4" in problems_at(problems, test, 2)[0].message
    assert problems_at(problems, train, 5)[0].message.startswith("31 tokens, longer than data.max_seq_length=20")
    assert problems_at(problems, tmp_path / "validation.jsonl", 2)[0].message.startswith("empty `completion`")
    assert len(problems) == 4


def test_length_problems_name_only_the_long_rows(tmp_path):
    chat_folder(tmp_path)
    path = write_jsonl(tmp_path / "train.jsonl", [chat("short"), chat("short too"), chat("long " * 40)])
    problems = validate_data(DataConfig(path=str(path.parent), max_seq_length=32), tokenizer=WordTokenizer())
    too_long = [problem for problem in problems if "longer than data.max_seq_length" in problem.message]
    assert [(problem.file, problem.line) for problem in too_long] == [(str(path), 3)]


def test_validate_without_tokenizer_skips_lengths(tmp_path):
    chat_folder(tmp_path)
    write_jsonl(tmp_path / "train.jsonl", [chat("word " * 900)])
    assert validate_data(DataConfig(path=str(tmp_path), max_seq_length=16)) == []


# --- the task: system prompt and answer schema ------------------------------------------------------


def test_system_prompt_goes_first_only_in_rows_without_one(tmp_path):
    chat_folder(tmp_path)
    write_jsonl(tmp_path / "train.jsonl", [chat("own", system="Row's own."), chat("none")])
    train = load_splits(DataConfig(path=str(tmp_path)), system_prompt="Task prompt.")["train"]["messages"]
    assert [row[0] for row in train] == [
        {"role": "system", "content": "Row's own."},
        {"role": "system", "content": "Task prompt."},
    ]
    assert [len(row) for row in train] == [3, 3]


def test_train_records_the_system_prompt_all_rows_share(smoke_config):
    shared = [chat("a", system="S")["messages"], chat("b", system="S")["messages"]]
    assert shared_system_prompt(shared) == "S"
    assert shared_system_prompt([*shared, chat("c", system="T")["messages"]]) is None
    assert shared_system_prompt([*shared, chat("c")["messages"]]) is None  # one row has none
    config = smoke_config()
    assert config.task.system_prompt is None
    assert with_recorded_system_prompt(config, shared).task.system_prompt == "S"
    assert with_recorded_system_prompt(config, [chat("c")["messages"]]).task.system_prompt is None
    chosen = smoke_config("task.system_prompt=Mine")
    assert with_recorded_system_prompt(chosen, shared).task.system_prompt == "Mine"  # a set prompt stays


def ticket(text, answer, **extra):
    return {"instruction": "Triage this ticket.", "input": text, "output": answer, **extra}


TRIAGE = TaskConfig(kind="extraction", fields=["category", "priority"])


def test_answer_object_is_strict():
    assert parse_prediction('{"category": "billing"}', strict=True) == {"category": "billing"}
    assert (
        parse_prediction('```json\n{"category": "billing"}\n```', strict=True) is None
    )  # the model would learn the fences
    assert parse_prediction('["billing"]', strict=True) is None
    assert parse_prediction("billing", strict=True) is None


def test_validate_reports_non_json_answers_and_missing_fields_with_lines(tmp_path):
    good = json.dumps({"category": "billing", "priority": "high"})
    train = write_jsonl(
        tmp_path / "train.jsonl",
        [
            ticket("t1", good),
            ticket("t2", json.dumps({"category": "billing"})),
            ticket("t3", "billing, high"),
            ticket("t4", '["billing", "high"]'),
            ticket("t5", json.dumps({"priority": "low", "note": "x"})),
        ],
    )
    write_jsonl(tmp_path / "validation.jsonl", [ticket("v1", good)])
    write_jsonl(tmp_path / "test.jsonl", [ticket("s1", good)])
    not_json = 'the answer is not a JSON object; write it as one JSON object such as {"key": "value"}, or set '
    not_json += "task.kind=generic for free text"
    lacks = "add them (null when a value is absent) or fix task.fields"
    assert [str(problem) for problem in validate_data(DataConfig(path=str(tmp_path)), task=TRIAGE)] == [
        f"{train}:2: the answer lacks priority; {lacks}",
        f"{train}:3: {not_json}",
        f"{train}:4: {not_json}",
        f"{train}:5: the answer lacks category; {lacks}",
    ]
    assert validate_data(DataConfig(path=str(tmp_path))) == []  # no task given: answers are not checked
    generic = validate_data(DataConfig(path=str(tmp_path)), task=TaskConfig(kind="generic", fields=["category"]))
    assert generic == []


def test_validate_says_when_the_schema_does_not_match_the_data(tmp_path):
    rows = [ticket(f"t{i}", json.dumps({"category": "billing", "priority": "low"})) for i in range(10)]
    rows[3]["output"] = json.dumps({"category": "billing", "priority": "low", "urgency": "high"})
    path = write_jsonl(tmp_path / "tickets.jsonl", rows)
    task = TaskConfig(kind="extraction", fields=["category", "urgency"])
    problems = validate_data(DataConfig(path=str(path)), task=task)
    assert len([p for p in problems if p.line and p.message.startswith("the answer lacks urgency")]) == 9
    assert str(problems[-1]) == (
        f"{path}: task.fields: `urgency` is missing from 9 of 10 answers: the schema does not match the data; "
        "fix task.fields (`task init` infers it from the data) or the answers"
    )
    assert len(problems) == 10


def test_cli_validate_checks_the_config_task(tmp_path, config_file):
    rows = [ticket(f"t{i}", json.dumps({"category": "billing", "priority": "low"})) for i in range(10)]
    rows[4]["output"] = "billing"
    path = write_jsonl(tmp_path / "tickets.jsonl", rows)
    overrides = [f"data.path={path}", "task.fields=[category, priority]"]
    result = CliRunner().invoke(app, ["data", "validate", "--config", str(config_file), *overrides])
    assert result.exit_code == 1
    assert f"{path}:5: the answer is not a JSON object" in result.output
    generic = CliRunner().invoke(
        app, ["data", "validate", "--config", str(config_file), *overrides, "task.kind=generic"]
    )
    assert generic.exit_code == 0 and "no problems found" in generic.output


def test_problem_str_is_path_line_message():
    assert str(Problem("data/train.jsonl", 7, "empty `prompt`")) == "data/train.jsonl:7: empty `prompt`"
    assert str(Problem("data", None, "the test split has no usable rows")) == "data: the test split has no usable rows"


# --- CLI ---------------------------------------------------------------------------------------


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(f"project: demo\nmodel:\n  base_model: {tmp_path / 'no-model'}\n")
    return path


def test_cli_validate_exit_codes(synth_dir, tmp_path, config_file):
    runner = CliRunner()
    clean = runner.invoke(app, ["data", "validate", "--config", str(config_file), f"data.path={synth_dir}"])
    assert clean.exit_code == 0, clean.output
    assert "token lengths not checked" in clean.output and "no problems found" in clean.output

    tiny = ["model.build_tiny=true", f"model.base_model={tmp_path / 'tiny'}"]  # not built yet: not an offline hub model
    unbuilt = runner.invoke(app, ["data", "validate", "--config", str(config_file), f"data.path={synth_dir}", *tiny])
    assert unbuilt.exit_code == 0, unbuilt.output
    assert f"note: {tmp_path / 'tiny'} is not built yet (`train` builds it from the training rows)" in unbuilt.output
    assert "offline" not in unbuilt.output

    bad = chat_folder(tmp_path / "bad")
    write_jsonl(bad / "test.jsonl", [chat("train question 1", "answer 1")])
    result = runner.invoke(app, ["data", "validate", "--config", str(config_file), f"data.path={bad}"])
    assert result.exit_code == 1
    assert f"{bad / 'test.jsonl'}:1: leakage" in result.output

    missing = runner.invoke(app, ["data", "validate", "--config", str(config_file), f"data.path={tmp_path}/none.csv"])
    assert missing.exit_code == 2 and "error: " in missing.output and "Traceback" not in missing.output


def test_cli_synth_refuses_to_overwrite_without_force(tmp_path):
    runner = CliRunner()
    out = tmp_path / "shop"
    first = runner.invoke(app, ["data", "synth", "--out", str(out), "--n", "100"])
    assert first.exit_code == 0 and "train 80, validation 10, test 10" in first.output
    before = (out / "train.jsonl").read_bytes()

    refused = runner.invoke(app, ["data", "synth", "--out", str(out), "--n", "50"])
    assert refused.exit_code == 2 and "--force" in refused.output
    assert (out / "train.jsonl").read_bytes() == before

    forced = runner.invoke(app, ["data", "synth", "--out", str(out), "--n", "50", "--force"])
    assert forced.exit_code == 0 and len((out / "train.jsonl").read_text().splitlines()) == 40


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_a_row_over_the_size_cap_is_refused_without_tokenizing_it(tmp_path, monkeypatch, suffix):
    """One 50 MB row took 98 s and 15 GB to validate: a row beyond the cap is a problem with its line, and
    is never tokenized (monkeypatched to a small cap here, so the test stays fast)."""
    from {{ cookiecutter.package_name }}.data import dataset

    monkeypatch.setattr(dataset, "MAX_ROW_CHARS", 1000)
    rows = [{"prompt": f"question {i}", "completion": "answer"} for i in range(6)]
    rows[2]["prompt"] = "word " * 400  # 2,000 characters
    path = tmp_path / f"train{suffix}"
    if suffix == ".jsonl":
        write_jsonl(path, rows)
    else:
        frame = pd.DataFrame(rows)
        frame.to_csv(path, index=False) if suffix == ".csv" else frame.to_parquet(path)
    line = 4 if suffix == ".csv" else 3  # CSV: line 1 is the header

    class CountingTokenizer(WordTokenizer):
        longest = 0

        def apply_chat_template(self, messages, **kwargs):
            self.longest = max(self.longest, sum(len(m["content"]) for m in messages))
            return super().apply_chat_template(messages, **kwargs)

    tokenizer = CountingTokenizer()
    problems = validate_data(DataConfig(path=str(path)), tokenizer=tokenizer)
    [problem] = problems_at(problems, path, line)
    assert "over the 1,000 characters a row may hold" in problem.message and len(str(problem)) < 300
    assert tokenizer.longest < 1000  # the long row never reached the tokenizer
    assert load_error(path).startswith(f"{path}:{line}: ")


def test_a_csv_cell_over_the_size_cap_is_refused_by_line(tmp_path, monkeypatch):
    from {{ cookiecutter.package_name }}.data import dataset

    monkeypatch.setattr(dataset, "MAX_ROW_CHARS", 150_000)  # above the csv module's own 131,072 limit
    path = tmp_path / "train.csv"
    rows = [{"prompt": f"question {i}", "completion": "answer"} for i in range(6)]
    rows[1]["prompt"] = "x" * 200_000
    pd.DataFrame(rows).to_csv(path, index=False)
    assert load_error(path).startswith(f"{path}:3: a cell over the 150,000 characters a row may hold")


def test_jsonl_with_a_byte_order_mark_loads_like_csv_with_one(tmp_path):
    path = tmp_path / "train.jsonl"
    rows = [{"prompt": f"question {i}", "completion": "answer"} for i in range(6)]
    path.write_bytes(b"\xef\xbb\xbf" + "".join(json.dumps(row) + "\n" for row in rows).encode())
    splits = load_splits(DataConfig(path=str(path)))
    assert sum(len(split) for split in splits.values()) == 6
    csv_path = tmp_path / "csv" / "train.csv"
    csv_path.parent.mkdir()
    csv_path.write_bytes(b"\xef\xbb\xbf" + pd.DataFrame(rows).to_csv(index=False).encode())
    assert sum(len(split) for split in load_splits(DataConfig(path=str(csv_path))).values()) == 6
