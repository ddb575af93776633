"""The request log: redaction of private data, and whole records when many threads write at once."""

import json
import threading

import pytest

from {{ cookiecutter.package_name }}.monitor.request_log import (
    RECORD_KEYS,
    RequestLog,
    RequestLogError,
    check_request_log,
    redact,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("write to jane.doe+shop@mail.example.co.uk please", "write to [EMAIL] please"),
        ("card 4111 1111 1111 1111, or 4111-1111-1111-1111", "card [CARD], or [CARD]"),
        ("card 4111111111111111 expires", "card [CARD] expires"),
        ("call +44 20 7946 0958 or (555) 123-4567", "call [PHONE] or [PHONE]"),
        ("my mobile is 07700900123.", "my mobile is [PHONE]."),
    ],
)
def test_redact_masks_emails_cards_and_phone_numbers(text, expected):
    assert redact(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "Order B11688: 3 mugs to zip 26818",  # what the task extracts must stay readable
        "ticket #123456 from 12-05-2024 at 10:30",
        "call 555-0100",  # 7 digits: too short to tell from an id, so kept
    ],
)
def test_redact_keeps_ids_quantities_and_dates(text):
    assert redact(text) == text


def test_records_stay_whole_when_threads_write_at_once(tmp_path):
    log = RequestLog(tmp_path / "logs" / "requests.jsonl", log_texts=True)

    def write_many(thread: int) -> None:
        for i in range(50):
            log.write({"request_id": f"{thread}-{i}", "status": 200}, prompt="x" * 1000, response="mail a@b.io")

    threads = [threading.Thread(target=write_many, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    log.close()
    records = [json.loads(line) for line in (tmp_path / "logs" / "requests.jsonl").read_text().splitlines()]
    assert len(records) == 400 and len({r["request_id"] for r in records}) == 400
    assert all(tuple(r) == (*RECORD_KEYS, "prompt", "response") and r["response"] == "mail [EMAIL]" for r in records)
    assert all(r["time"].endswith("+00:00") for r in records)


def test_texts_are_left_out_unless_enabled(tmp_path):
    log = RequestLog(tmp_path / "requests.jsonl")
    log.write({"status": 200}, prompt="secret", response="secret")
    log.close()
    assert tuple(json.loads((tmp_path / "requests.jsonl").read_text())) == RECORD_KEYS


def test_a_lone_surrogate_is_written_escaped_and_other_lines_stay_byte_identical(tmp_path):
    log = RequestLog(tmp_path / "requests.jsonl", log_texts=True)
    plain = {"request_id": "a", "status": 200, "time": "2026-01-01T00:00:00.000+00:00"}
    log.write(plain, prompt="héllo ✓", response="ok")
    log.write({"request_id": "b", "status": 400}, prompt="bad \ud800 half", response=None)  # must not raise
    log.write({"request_id": "c", "status": 200}, prompt="after", response="ok")
    log.close()
    lines = (tmp_path / "requests.jsonl").read_bytes().splitlines()
    expected = {**{key: plain.get(key) for key in RECORD_KEYS}, "prompt": "héllo ✓", "response": "ok"}
    assert lines[0] == json.dumps(expected, ensure_ascii=False).encode()  # non-ASCII text stays readable
    records = [json.loads(line) for line in lines]
    assert [r["request_id"] for r in records] == ["a", "b", "c"]
    assert records[1]["prompt"] == "bad \ud800 half" and b'"bad \\ud800 half"' in lines[1]


def test_an_unwritable_log_path_is_refused_naming_the_variable_and_creating_nothing(tmp_path):
    """Issue 27 item 11: checked before the server starts; a folder still to be made is fine."""
    check_request_log(tmp_path / "logs" / "deeper" / "requests.jsonl")
    assert not (tmp_path / "logs").exists()
    (tmp_path / "afile").write_text("")
    under_a_file = tmp_path / "afile" / "requests.jsonl"
    for path, problem in ((under_a_file, "is a file, not a folder"), (tmp_path, "it is a folder")):
        with pytest.raises(RequestLogError, match=f"LLM_REQUEST_LOG={path}: cannot write the request log .*{problem}"):
            check_request_log(path)
    with pytest.raises(RequestLogError, match=f"LLM_REQUEST_LOG={under_a_file}: cannot write the request log"):
        RequestLog(under_a_file)
